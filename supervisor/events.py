"""A fan-out of lifecycle, restart and rollout events to WatchEvents streams.

Publishing never blocks the supervisor: each subscriber has a bounded
queue (read by a thread, or awaited by a coroutine that holds no thread), and
a subscriber that falls behind loses its oldest events and is told how many
with an `events-dropped` event, instead of slowing everyone down.

A bus also keeps a bounded history (the newest N events, or N per agent), so
that a watcher can start from a moment in the past: `caxton events --since`
shows a rollback that happened a minute ago. The same bus, per agent,
carries each agent's own log lines for `caxton logs`.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from .handoff import Wakeup


@dataclass(frozen=True)
class AgentEvent:
    at: float  # Unix seconds
    agent: str
    kind: str
    version: int
    message: str


class Subscription:
    """One watcher's bounded queue of events. Read it with `next` from a
    thread, or with `get` from a coroutine, which holds no thread while it
    waits: the publisher's thread wakes it through its event loop."""

    def __init__(self, agent: str, limit: int):
        self.agent = agent  # "" = every agent
        self._limit = limit
        self._queue: deque[AgentEvent] = deque()
        self._dropped = 0
        self._cond = threading.Condition()
        # Wakes the coroutine waiting in `get`, if one is (set under _cond).
        self._wake: Callable[[], None] | None = None
        self.closed = False

    def _offer(self, event: AgentEvent) -> None:
        with self._cond:
            if len(self._queue) >= self._limit:
                self._queue.popleft()
                self._dropped += 1
            self._queue.append(event)
            self._cond.notify()
            self._wake_reader()

    def _wake_reader(self) -> None:
        """(Caller holds _cond.) One wake-up per wait, however many events."""
        wake, self._wake = self._wake, None
        if wake is not None:
            wake()

    def _take(self) -> AgentEvent | None:
        """(Caller holds _cond.)"""
        if self._dropped:
            dropped, self._dropped = self._dropped, 0
            return AgentEvent(time.time(), self.agent, "events-dropped", 0,
                              f"{dropped} events dropped: this watcher fell behind")
        return self._queue.popleft() if self._queue else None

    def next(self, timeout: float) -> AgentEvent | None:
        """The next event, or None after `timeout` seconds without one (so
        the caller can check whether its client is still there)."""
        with self._cond:
            if not self._queue and not self.closed:
                self._cond.wait(timeout)
            return self._take()

    async def get(self) -> AgentEvent | None:
        """The next event, waiting as long as it takes; None once closed.
        The caller's cancellation (its client went away) ends the wait."""
        loop = asyncio.get_running_loop()
        while True:
            with self._cond:
                event = self._take()
                if event is not None or self.closed:
                    return event
                wakeup = self._wake = Wakeup(loop)
            try:
                await wakeup.wait()
            finally:
                with self._cond:
                    self._wake = None

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()
            self._wake_reader()


class EventBus:
    def __init__(self, subscriber_limit: int = 1000, history: int = 1000, per_agent: bool = False,
                 max_keys: int | None = None):
        self._limit = subscriber_limit
        self._subscribers: list[Subscription] = []
        self._lock = threading.Lock()
        # The newest `history` events (per agent with per_agent), oldest first.
        self._history_limit = history
        self._per_agent = per_agent
        # Per-key history keeps at most this many keys, the least recently
        # published to going first (conversation traces: their ids are many).
        self._max_keys = max_keys
        self._history: dict[str, deque[AgentEvent]] = {}

    def publish(self, agent: str, kind: str, version: int, message: str = "") -> None:
        event = AgentEvent(time.time(), agent, kind, version, message)
        key = agent if self._per_agent else ""
        with self._lock:
            kept = self._history.get(key)
            if kept is None:
                if self._max_keys is not None and len(self._history) >= self._max_keys:
                    del self._history[next(iter(self._history))]
                kept = self._history[key] = deque(maxlen=self._history_limit)
            elif self._max_keys is not None:
                self._history[key] = self._history.pop(key)  # now the most recent
            kept.append(event)
            subscribers = list(self._subscribers)
        for subscription in subscribers:
            if not subscription.agent or subscription.agent == agent:
                subscription._offer(event)

    def subscribe(self, agent: str = "", since: float | None = None) -> Subscription:
        """A subscription to `agent`'s events ("" = every agent's), starting
        with the kept ones newer than `since` (Unix seconds) if given. Taken
        in one step with publishing, so no event is missed or seen twice."""
        subscription = Subscription(agent, self._limit)
        with self._lock:
            if since is not None:
                for event in self._replay(agent, since)[-self._limit:]:
                    subscription._queue.append(event)
            self._subscribers.append(subscription)
        return subscription

    def replay(self, agent: str, since: float) -> list[AgentEvent]:
        """The kept events of `agent` ("" = every agent) newer than `since`, oldest first."""
        with self._lock:
            return self._replay(agent, since)

    def _replay(self, agent: str, since: float) -> list[AgentEvent]:
        """(Caller holds _lock.)"""
        if self._per_agent:
            pools = [self._history.get(agent, ())] if agent else list(self._history.values())
        else:
            pools = [self._history.get("", ())]
        events = [e for pool in pools for e in pool if e.at > since and (not agent or e.agent == agent)]
        return sorted(events, key=lambda e: e.at)

    def forget(self, agent: str) -> None:
        """The agent was removed: its kept history goes (per-agent buses)."""
        with self._lock:
            self._history.pop(agent, None)

    def unsubscribe(self, subscription: Subscription) -> None:
        subscription.close()
        with self._lock:
            if subscription in self._subscribers:
                self._subscribers.remove(subscription)

    def close(self) -> None:
        with self._lock:
            subscribers, self._subscribers = self._subscribers, []
        for subscription in subscribers:
            subscription.close()

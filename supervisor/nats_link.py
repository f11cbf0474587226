"""The link to NATS: one event-loop thread owning the nats-py connection.

nats-py is asyncio; the supervisor is threads (gRPC handlers on the API
loop, dispatchers, lifecycle calls). Everything NATS runs on this one loop,
and the rest of the supervisor reaches it two ways:

- `soon(fn, ...)`: run `fn` on the link's loop, without waiting (the message
  path: a publish is queued, never awaited by the caller);
- `call(coroutine_function, timeout)`: run a coroutine there and wait for
  its result at most `timeout` seconds (a lifecycle call claiming a name).
  Every such wait is bounded; past it the caller gets Unavailable and the
  coroutine is cancelled.

The link connects in the background and, once connected, nats-py
reconnects by itself; `connected` is a plain attribute read (no lock, no
round trip), so the message path can fail fast while NATS is unreachable.
Listeners registered with `on_connect` run on the loop after every
(re)connection: what the server forgot (subscriptions survive; a KV watch
is re-made) is set up again there.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import ssl
import threading
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from .cluster_settings import ClusterSettings
from .errors import Unavailable

if TYPE_CHECKING:
    from nats.aio.client import Client

log = logging.getLogger("caxton.cluster")

T = TypeVar("T")

# Each attempt to connect, and the pause between attempts.
CONNECT_TIMEOUT_S = 2.0
RECONNECT_WAIT_S = 0.5
# What nats-py may buffer while reconnecting; the message path never relies
# on it (it refuses to send while disconnected), but a KV renewal may.
PENDING_BYTES = 4 << 20
# Setting up after a (re)connection that failed is tried again this often.
SET_UP_RETRY_S = 1.0
# The same NATS error is logged again only after this long.
ERROR_REPEAT_S = 60.0


def _credentials(settings: ClusterSettings) -> str:
    """Which of this host's settings NATS checks it by (for a refusal)."""
    if settings.user:
        return f"cluster.user {settings.user!r} and cluster.password_file {settings.password_file!r}"
    if settings.nkeys_seed_file:
        return f"the user whose seed is cluster.nkeys_seed_file {settings.nkeys_seed_file!r}"
    if settings.creds_file:
        return f"the user in cluster.creds_file {settings.creds_file!r}"
    return "no credentials (no cluster.user, nkeys_seed_file or creds_file)"


def _tls_context(settings: ClusterSettings) -> ssl.SSLContext | None:
    if not (settings.tls_ca or settings.tls_cert or any(url.startswith("tls://") for url in settings.servers)):
        return None
    context = ssl.create_default_context(cafile=settings.tls_ca or None)
    if settings.tls_cert:
        context.load_cert_chain(settings.tls_cert, settings.tls_key)
    return context


class NatsLink:
    def __init__(self, settings: ClusterSettings) -> None:
        self.settings = settings
        self.connected = False  # read from any thread: a plain attribute
        self.nc: Client | None = None  # (on the loop only)
        self._listeners: list[Callable[[], Awaitable[None]]] = []
        self._disconnect_listeners: list[Callable[[], None]] = []
        self._tasks: set[asyncio.Task] = set()
        self._posted: collections.deque[tuple[Callable[..., object], tuple[Any, ...]]] = collections.deque()
        self._wake_pending = False
        # Set once the first connection is made and set up (subscriptions,
        # name space): a supervisor starting with NATS up waits for it.
        self.ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="nats-link", daemon=True)
        self._closing = False
        self._connecting: concurrent.futures.Future | None = None
        self._last_error = ""
        self._last_error_at = 0.0

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def on_connect(self, listener: Callable[[], Awaitable[None]]) -> None:
        """Run `listener()` on the loop after each (re)connection (register
        before start)."""
        self._listeners.append(listener)

    def on_disconnect(self, listener: Callable[[], None]) -> None:
        """Call `listener()` on the loop when the connection is lost
        (register before start)."""
        self._disconnect_listeners.append(listener)

    def start(self) -> None:
        """Start the loop and connect in the background (never waits for NATS)."""
        self._thread.start()
        self._connecting = asyncio.run_coroutine_threadsafe(self._connect(), self._loop)

    def soon(self, fn: Callable[..., object], *args: Any) -> None:
        """Run fn(*args) on the loop (any thread; never waits)."""
        self._loop.call_soon_threadsafe(fn, *args)

    def post(self, fn: Callable[..., object], *args: Any) -> None:
        """As soon(), for the message path: calls from any thread run on the
        loop in the order posted, as many as have queued per wake-up of the
        loop (one wake-up costs a write to its self-pipe and a thread
        switch; under load hundreds of messages share one)."""
        self._posted.append((fn, args))
        if not self._wake_pending:
            self._wake_pending = True
            self._loop.call_soon_threadsafe(self._run_posted)

    def _run_posted(self) -> None:
        # Cleared first: a post racing with this drain either is drained
        # here or schedules a drain of its own (a spare one is harmless).
        self._wake_pending = False
        posted = self._posted
        while posted:
            fn, args = posted.popleft()
            try:
                fn(*args)
            except Exception:
                log.exception("a call posted to the NATS link failed")

    def call(self, coroutine: Callable[[], Awaitable[T]], timeout: float, what: str) -> T:
        """Run `coroutine()` on the loop, waiting at most `timeout` seconds
        (from any thread but the loop's); Unavailable past it."""
        if not self.connected:
            raise Unavailable(f"cannot {what}: not connected to NATS ({', '.join(self.settings.servers)})")
        future = asyncio.run_coroutine_threadsafe(self._awaited(coroutine), self._loop)
        try:
            return future.result(max(timeout, 0.0))
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise Unavailable(f"cannot {what}: NATS did not answer within {timeout:.1f}s") from None

    @staticmethod
    async def _awaited(coroutine: Callable[[], Awaitable[T]]) -> T:
        return await coroutine()

    async def _connect(self) -> None:
        import nats  # only here: standalone supervisors never import NATS

        settings = self.settings
        options: dict[str, Any] = dict(
            servers=list(settings.servers), name=f"caxton-{settings.host}", connect_timeout=CONNECT_TIMEOUT_S,
            reconnect_time_wait=RECONNECT_WAIT_S, max_reconnect_attempts=-1, allow_reconnect=True,
            ping_interval=settings.ping_interval_s, max_outstanding_pings=2, pending_size=PENDING_BYTES,
            disconnected_cb=self._disconnected, reconnected_cb=self._reconnected, error_cb=self._error,
            closed_cb=self._closed, tls=_tls_context(settings),
        )
        if settings.user:
            options.update(user=settings.user, password=settings.password)
        if settings.nkeys_seed_file:
            options.update(nkeys_seed=settings.nkeys_seed_file)
        if settings.creds_file:
            options.update(user_credentials=settings.creds_file)
        try:
            # With no limit on attempts, nats-py tries until it connects
            # (each failure to error_cb); what it raises is a setting it
            # cannot use (a credentials file, say).
            self.nc = await nats.connect(**options)
        except Exception as exc:
            log.error("cannot use NATS (%s): %s: %s; this host serves its own agents alone",
                      ", ".join(settings.servers), type(exc).__name__, exc)
            return
        log.info("connected to NATS at %s as host %s", self.nc.connected_url.netloc if self.nc.connected_url
                 else "?", settings.host)
        await self._reconnected()

    async def _disconnected(self) -> None:
        self.connected = False
        for listener in self._disconnect_listeners:
            listener()
        if not self._closing:
            log.warning("disconnected from NATS: remote agents are unreachable until it is back")

    async def _reconnected(self) -> None:
        self.connected = True
        # Not awaited here: nats-py awaits this callback in its reconnect
        # path, and setting up again takes round trips of its own.
        task = self._loop.create_task(self._set_up())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _set_up(self) -> None:
        """Each listener in order, each tried again until it succeeds or the
        connection is gone (JetStream may not be ready the moment a
        restarted server accepts connections); every listener is idempotent."""
        for listener in self._listeners:
            while self.connected and not self._closing:
                try:
                    await listener()
                    break
                except Exception as exc:
                    log.warning("setting up after connecting to NATS failed (%s: %s); trying again in %.0fs",
                                type(exc).__name__, exc, SET_UP_RETRY_S)
                    await asyncio.sleep(SET_UP_RETRY_S)
        self.ready.set()

    async def _error(self, exc: Exception) -> None:
        """nats-py's errors (a refused connection, a bad certificate, an
        authorization failure): each logged once, again only after a while
        if it persists, so a link that keeps failing says why."""
        text = f"{type(exc).__name__}: {exc}"
        if "authorization violation" in str(exc).lower():
            # nats-server's one word for every refused sign-in: say whose.
            text += f" (NATS refused {_credentials(self.settings)})"
        now = time.monotonic()
        if text != self._last_error or now - self._last_error_at >= ERROR_REPEAT_S:
            self._last_error, self._last_error_at = text, now
            log.warning("NATS (%s): %s", ", ".join(self.settings.servers), text)

    async def _closed(self) -> None:
        await self._disconnected()

    def stop(self, timeout: float = 2.0) -> None:
        """Close the connection and end the loop's thread (bounded)."""
        self._closing = True
        self.connected = False
        if self._connecting is not None:
            self._connecting.cancel()  # still trying to reach NATS

        async def close() -> None:
            if self.nc is not None:
                await self.nc.close()
            # Everything else on the loop (watches, renewals) ends here, so
            # that nothing is left pending when the loop stops.
            others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            for task in others:
                task.cancel()
            await asyncio.gather(*others, return_exceptions=True)

        if self._thread.is_alive():
            try:
                asyncio.run_coroutine_threadsafe(close(), self._loop).result(timeout)
            except Exception:
                log.debug("closing the NATS connection did not finish", exc_info=True)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout)

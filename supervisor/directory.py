"""The cluster's name space: which host runs which agent.

Agent names are unique across the cluster. The truth is a JetStream
key-value bucket (key: the agent's name, value: the host running it);
NATS keeps it, Caxton runs no consensus of its own:

- a name is claimed with KV `create`, which succeeds for one writer only:
  two hosts deploying the same name cannot both win, and the loser's deploy
  is ALREADY_EXISTS naming the winner;
- each host renews its own keys (a compare-and-set `update` on the revision
  it wrote) every third of the bucket's max age; a host that stops renewing
  (crashed, cut off) has its keys expire, and the server then writes a
  delete marker (subject delete markers, nats-server 2.11+) that every
  watcher sees: its agents leave the name space, and callers are told that
  host dropped out (UNAVAILABLE), not that the agent never existed;
- every host watches the bucket and keeps a local copy (`Listing`), so a
  lookup on the message path is a dict read, never a round trip.

`Listing` is the pure part (no I/O); `BucketWatch` keeps it in step with
the bucket; `Directory` claims, renews and releases this host's names. Both
run on the NATS link's loop (nats_link.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Coroutine, Iterable
from typing import TYPE_CHECKING, Any

from .errors import AlreadyExists, Unavailable
from .nats_link import NatsLink

if TYPE_CHECKING:
    from nats.js.kv import KeyValue

log = logging.getLogger("caxton.cluster")

# A KV watch reports "the current values have all been delivered" with None.
_CAUGHT_UP = None
# How long one KV operation may take before it counts as failed.
KV_TIMEOUT_S = 2.0


def key_of(name: str) -> str:
    """An agent's name as a KV key: names may end with '.', keys may not,
    and '=' (allowed in keys) never occurs in a name."""
    return name.replace(".", "=")


def name_of(key: str) -> str:
    return key.replace("=", ".")


def encode(host: str) -> bytes:
    return json.dumps({"host": host}).encode()


def decode(value: bytes | None) -> str | None:
    """The host a KV value names; None for a delete marker or a value that
    is not ours."""
    if not value:
        return None
    try:
        host = json.loads(value).get("host")
    except (ValueError, AttributeError):
        return None
    return host if isinstance(host, str) and host else None


class Listing:
    """The local copy of the name space: name -> host, and the names whose
    host dropped out (their announcement lapsed) -> that host. Written on
    the link's loop only; read from any thread (each read is one dict
    lookup, and a resync swaps whole dicts)."""

    def __init__(self, me: str) -> None:
        self.me = me
        self._hosts: dict[str, str] = {}
        self._lapsed: dict[str, str] = {}
        self._replay: dict[str, str] | None = None  # a watch replaying the bucket
        # Whether the bucket has been read once: until then, a name that is
        # not here may still run on another host.
        self.synced = False

    def host_of(self, name: str) -> str | None:
        """The other host running `name`; None if no other host does."""
        host = self._hosts.get(name)
        return None if host == self.me else host

    def lapsed_host(self, name: str) -> str | None:
        """The host that ran `name` until its announcement lapsed."""
        host = self._lapsed.get(name)
        return None if host == self.me else host

    def placements(self) -> dict[str, str]:
        """Every agent of the cluster and its host (this one's included)."""
        return dict(self._hosts)

    def hosts(self) -> set[str]:
        return set(self._hosts.values())

    # ------------------------------------------------------------ updates (loop only)

    def replaying(self) -> None:
        """A new watch starts: what it replays replaces everything at once
        when it has caught up."""
        self._replay = {}

    def announced(self, name: str, host: str) -> None:
        if self._replay is not None:
            self._replay[name] = host
            return
        self._hosts = {**self._hosts, name: host}
        if name in self._lapsed:
            self._lapsed = {k: v for k, v in self._lapsed.items() if k != name}

    def removed(self, name: str, *, lapsed: bool) -> None:
        """`name` left the name space: removed by its host, or its
        announcement lapsed (the host dropped out)."""
        if self._replay is not None:
            self._replay.pop(name, None)
            if lapsed:
                self._note_lapsed({name: self._hosts.get(name, "")})
            return
        host = self._hosts.get(name)
        if host is None:
            return
        self._hosts = {k: v for k, v in self._hosts.items() if k != name}
        if lapsed:
            self._note_lapsed({name: host})

    def caught_up(self) -> None:
        """The replay is complete: swap it in. Names that vanished while we
        did not watch are taken as lapsed (we cannot tell a removal then)."""
        replay, self._replay = self._replay, None
        self.synced = True
        if replay is None:
            return
        gone = {name: host for name, host in self._hosts.items() if name not in replay}
        self._hosts = replay
        self._lapsed = {k: v for k, v in self._lapsed.items() if k not in replay}
        self._note_lapsed(gone)

    def _note_lapsed(self, names: dict[str, str]) -> None:
        names = {name: host for name, host in names.items() if host}
        if names:
            self._lapsed = {**self._lapsed, **names}


class BucketWatch:
    """Keeps a Listing in step with the bucket: one KV watch, made anew
    (and replayed) after each reconnection."""

    def __init__(self, listing: Listing, announced: Callable[[str, str], None]) -> None:
        self._listing = listing
        self._announced = announced  # (name, host), after the listing has it
        self._watcher: Any = None

    async def restart(self, kv: KeyValue) -> Coroutine[Any, Any, None]:
        """Stop the old watch, start a new one; returns what follows it,
        for the caller to run as a task."""
        old, self._watcher = self._watcher, None
        if old is not None:
            try:
                await old.stop()
            except Exception:
                log.debug("stopping the previous KV watch failed", exc_info=True)
        self._listing.replaying()
        self._watcher = await kv.watchall()
        return self._follow(self._watcher)

    async def _follow(self, watcher: Any) -> None:
        from nats.js.kv import KV_PURGE

        async for entry in watcher:
            if entry is _CAUGHT_UP:
                self._listing.caught_up()
                continue
            name = name_of(entry.key)
            host = decode(entry.value) if entry.operation is None else None
            if host is not None:
                self._listing.announced(name, host)
                self._announced(name, host)
            else:
                # PURGE is only ever the server's max-age marker: we delete.
                self._listing.removed(name, lapsed=entry.operation == KV_PURGE)


class Directory:
    """The name space over the KV bucket. Lifecycle calls use `claim` and
    `release` (any thread); the message path reads `listing`."""

    def __init__(self, link: NatsLink) -> None:
        self._link = link
        self.settings = link.settings
        self.me = link.settings.host
        self.listing = Listing(self.me)
        self._kv: KeyValue | None = None
        # Names this host runs and the KV revision it last wrote for each
        # (0: not written yet); loop only.
        self._mine: dict[str, int] = {}
        # Names another host holds though this host runs them too (the name
        # was claimed while this host was cut off): loop only, logged.
        self.conflicts: dict[str, str] = {}
        self._watch = BucketWatch(self.listing, self._announced)
        self._tasks: set[asyncio.Task] = set()

    # ------------------------------------------------------------ any thread

    def claim(self, name: str, timeout: float) -> None:
        """Make `name` this host's in the name space (atomically: of two
        hosts claiming it, one wins); AlreadyExists naming the host that
        holds it, Unavailable when NATS does not answer in `timeout`."""
        self._link.call(lambda: self._claim(name), min(timeout, KV_TIMEOUT_S * 2), f"claim the name {name!r}")

    def adopt(self, names: Iterable[str]) -> None:
        """Agents this host runs already (restored at start): announced as
        soon as NATS is reached."""
        names = list(names)
        self._link.soon(self._adopt, names)

    def release(self, name: str) -> None:
        """`name` no longer runs here (removed): its key goes, without waiting."""
        self._link.soon(self._spawn, self._release(name))

    def release_all(self, timeout: float) -> None:
        """Shutting down: every name of this host leaves the name space now
        rather than when its TTL lapses (bounded; NATS away: they lapse)."""
        async def release_all() -> None:
            await asyncio.gather(*(self._release(name) for name in list(self._mine)))

        try:
            self._link.call(release_all, timeout, "leave the cluster's name space")
        except Unavailable as exc:
            log.info("%s; this host's names lapse by themselves", exc.message)

    # ------------------------------------------------------------ loop

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _adopt(self, names: list[str]) -> None:
        for name in names:
            self._mine.setdefault(name, 0)
        if self._kv is not None:
            self._spawn(self._announce_all())

    async def set_up(self) -> None:
        """After each (re)connection: the bucket, a fresh watch, our names
        announced again, and the renewal task."""
        assert self._link.nc is not None
        from nats.js.api import KeyValueConfig
        from nats.js.errors import BadRequestError

        js = self._link.nc.jetstream(timeout=KV_TIMEOUT_S)
        ttl = self.settings.announce_ttl_s
        try:
            self._kv = await js.create_key_value(KeyValueConfig(
                bucket=self.settings.bucket, history=1, ttl=ttl, limit_marker_ttl=ttl,
                description="Caxton: which host runs which agent"))
        except BadRequestError as exc:
            # Made by a host with other settings (another announce_ttl_s):
            # the bucket's own TTL is the one in force for every host.
            self._kv = await js.key_value(self.settings.bucket)
            log.warning("the name space bucket %r exists with other settings than this host's (%s): using it as it "
                        "is; give every host the same [cluster] announce_ttl_s", self.settings.bucket, exc)
        self._spawn(await self._watch.restart(self._kv))
        await self._announce_all()
        if not any(task.get_name() == "caxton-renew" for task in self._tasks):
            task = asyncio.get_running_loop().create_task(self._renew(), name="caxton-renew")
            self._tasks.add(task)

    def _announced(self, name: str, host: str) -> None:
        if host != self.me and name in self._mine:
            self._conflict(name, host)

    def _conflict(self, name: str, host: str) -> None:
        if self.conflicts.get(name) != host:
            self.conflicts[name] = host
            log.error("agent %r runs here but host %s holds its name in the cluster (claimed while this host "
                      "was out of it): messages from other hosts go there; remove one of them", name, host)

    async def _claim(self, name: str) -> None:
        if name in self._mine and self._mine[name]:
            return  # ours already (a repeated deploy or an update)
        if self._kv is None:
            raise Unavailable(f"cannot claim the name {name!r}: the cluster's name space is not set up yet")
        revision = await self._create(name)
        self._mine[name] = revision
        self.listing.announced(name, self.me)

    async def _create(self, name: str) -> int:
        """Create the key for `name`, or take over a lapsed (marker) or our
        own stale one; AlreadyExists when another host holds it."""
        from nats.js.errors import KeyDeletedError, KeyNotFoundError, KeyWrongLastSequenceError

        assert self._kv is not None
        key, value = key_of(name), encode(self.me)
        try:
            return await self._kv.create(key, value)
        except KeyWrongLastSequenceError:
            pass
        try:
            entry = await self._kv.get(key)
        except KeyDeletedError as exc:
            entry = exc.entry
        except KeyNotFoundError:
            return await self._kv.create(key, value)  # its marker expired meanwhile
        holder = decode(entry.value)
        if holder is not None and holder != self.me:
            raise AlreadyExists(f"an agent named {name!r} runs on host {holder!r} of the cluster; "
                                "names are unique across hosts")
        return await self._kv.update(key, value, last=entry.revision)

    async def _release(self, name: str) -> None:
        revision = self._mine.pop(name, None)
        self.conflicts.pop(name, None)
        if not revision or self._kv is None:
            return
        try:
            await self._kv.delete(key_of(name), last=revision)
        except Exception as exc:  # not ours any more, or NATS away: its TTL lapses anyway
            log.info("could not remove %r from the cluster's name space (%s): it lapses in %.0fs",
                     name, exc, self.settings.announce_ttl_s)

    async def _announce_all(self) -> None:
        for name in list(self._mine):
            try:
                await self._refresh(name)
            except AlreadyExists:
                self._conflict(name, self.listing.host_of(name) or "?")
            except Exception as exc:
                log.warning("could not announce %r in the cluster: %s", name, exc)

    async def _refresh(self, name: str) -> None:
        """Renew `name`'s key: a compare-and-set on the revision we wrote;
        if that fails, claim it again (lapsed while we were away)."""
        from nats.js.errors import KeyWrongLastSequenceError

        assert self._kv is not None
        revision = self._mine.get(name)
        if revision is None:
            return  # released meanwhile
        if revision:
            try:
                self._mine[name] = await self._kv.update(key_of(name), encode(self.me), last=revision)
                self.conflicts.pop(name, None)
                return
            except KeyWrongLastSequenceError:
                pass
        new = await self._create(name)
        if name in self._mine:
            self._mine[name] = new
            self.conflicts.pop(name, None)

    async def _renew(self) -> None:
        every = self.settings.announce_ttl_s / 3
        while True:
            await asyncio.sleep(every)
            if self._link.connected and self._kv is not None:
                await self._announce_all()

"""Reads across the cluster: another host's agent status, every host's list.

`GetAgentStatus` of an agent on another host is forwarded to that host
(subject `PREFIX.host.HOST.status`), and `ListAgents` with `cluster` asks
every host at once (`PREFIX.host.HOST.list`), each within the caller's
deadline; a host that does not answer in time is named as unreachable
rather than holding the call. The answers are the hosts' own serialized
protobuf (the API boundary, api.py, makes and reads them); the work of
answering runs on a thread of the caller's choosing, never on the link's
loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

from .directory import Directory
from .errors import CaxtonError, NotFound, Unavailable
from .nats_link import NatsLink
from .remote import HEADER_STATUS, host_subject

log = logging.getLogger("caxton.cluster")


class ClusterQueries:
    def __init__(self, link: NatsLink, directory: Directory, executor: Executor,
                 status: Callable[[str], bytes], listing: Callable[[], bytes]) -> None:
        """`status(name)` and `listing()` answer other hosts (serialized
        AgentStatus and ListAgentsResponse of this host's agents)."""
        self._link = link
        self._directory = directory
        self._executor = executor
        self._status = status
        self._listing = listing
        self._subscribed = False

    # ------------------------------------------------------------ asking (any thread but the loop)

    def status(self, name: str, host: str, timeout: float) -> bytes:
        """`name`'s status from `host` (serialized AgentStatus)."""
        prefix = self._link.settings.prefix
        return self._link.call(lambda: self._ask(host, host_subject(prefix, host, "status"), name.encode(), timeout),
                               timeout, f"ask host {host!r} for {name!r}'s status")

    def lists(self, hosts: set[str], timeout: float) -> dict[str, bytes | str]:
        """Each host's list (serialized ListAgentsResponse), or why it has none."""
        if not hosts:
            return {}
        prefix = self._link.settings.prefix

        async def ask_all() -> dict[str, bytes | str]:
            asks = [self._ask(host, host_subject(prefix, host, "list"), b"", timeout) for host in sorted(hosts)]
            answers = await asyncio.gather(*asks, return_exceptions=True)
            return {host: answer.message if isinstance(answer, CaxtonError) else
                    (answer if isinstance(answer, bytes) else f"{type(answer).__name__}")
                    for host, answer in zip(sorted(hosts), answers, strict=True)}

        try:
            return self._link.call(ask_all, timeout + 0.1, "list the cluster's agents")
        except Unavailable as exc:
            return dict.fromkeys(hosts, exc.message)

    async def _ask(self, host: str, subject: str, payload: bytes, timeout: float) -> bytes:
        from nats.errors import NoRespondersError
        from nats.errors import TimeoutError as NatsTimeout

        assert self._link.nc is not None
        try:
            answer = await self._link.nc.request(subject, payload, timeout=max(timeout, 0.001))
        except NoRespondersError:
            raise Unavailable(f"host {host!r} is not connected to NATS (no responders): it is down or cut off") \
                from None
        except NatsTimeout:
            raise Unavailable(f"no answer from host {host!r} within {timeout:.1f}s: it may be cut off") from None
        status = (answer.headers or {}).get(HEADER_STATUS)
        if status == "NOT_FOUND":
            raise NotFound(answer.data.decode(errors="replace"))
        if status is not None:
            raise Unavailable(f"host {host!r} answered {status}: {answer.data.decode(errors='replace')}")
        return answer.data

    # ------------------------------------------------------------ answering

    async def set_up(self) -> None:
        if self._subscribed:
            return
        nc = self._link.nc
        assert nc is not None
        settings = self._link.settings
        await nc.subscribe(host_subject(settings.prefix, settings.host, "status"), cb=self._on_status)
        await nc.subscribe(host_subject(settings.prefix, settings.host, "list"), cb=self._on_list)
        self._subscribed = True

    async def _on_status(self, msg: Any) -> None:
        await self._answer(msg, lambda: self._status(msg.data.decode(errors="replace")))

    async def _on_list(self, msg: Any) -> None:
        await self._answer(msg, self._listing)

    async def _answer(self, msg: Any, work: Callable[[], bytes]) -> None:
        if not msg.reply:
            return
        assert self._link.nc is not None
        loop = asyncio.get_running_loop()
        try:
            data, headers = await loop.run_in_executor(self._executor, work), None
        except CaxtonError as exc:
            data, headers = exc.message.encode(), {HEADER_STATUS: exc.code.name}
        except Exception:
            log.exception("answering another host's query failed")
            data, headers = b"internal error", {HEADER_STATUS: "INTERNAL"}
        try:
            await self._link.nc.publish(msg.reply, data, headers=headers)
        except Exception as exc:
            log.info("could not answer another host's query: %s", exc)

"""This supervisor as one host of a cluster: the parts, built and wired.

Built by the composition root (server.py) only when [cluster] is
configured: the NATS link (nats_link.py), the name space (directory.py),
remote delivery (remote.py, behind the router) and reads across hosts
(cluster_queries.py). After each (re)connection they set up again in this
order: subscriptions first, so that this host answers before it is
announced; then the name space; then the queries.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

from caxton.v1 import caxton_pb2

from .api import status_to_proto
from .cluster_queries import ClusterQueries
from .cluster_settings import ClusterSettings
from .directory import Directory
from .nats_link import NatsLink
from .remote import Outbox, Remote, RemoteInbox
from .runtime import Runtime

log = logging.getLogger("caxton.cluster")

# How long a starting supervisor waits to join (NATS reached, subscribed,
# its agents announced) before it serves anyway, alone until NATS answers.
JOIN_WITHIN_S = 5.0
# How long a stopping supervisor waits to take its names out of the name space.
LEAVE_WITHIN_S = 2.0
# Threads answering other hosts' reads: apart from the API's query threads,
# so that two hosts listing each other at once never wait on each other.
ANSWER_THREADS = 2


class Cluster:
    def __init__(self, settings: ClusterSettings, runtime: Runtime) -> None:
        self.host = settings.host
        self._answers = ThreadPoolExecutor(ANSWER_THREADS, thread_name_prefix="cluster-answers")
        self.link = NatsLink(settings)
        self.directory = Directory(self.link)
        outbox = Outbox(self.link)
        self.remote = Remote(self.link, self.directory, outbox)
        self.inbox = RemoteInbox(self.link, functools.partial(runtime.router.submit, forward=False), outbox)
        self.queries = ClusterQueries(self.link, self.directory, self._answers,
                                      status=lambda name: self._status(runtime, name),
                                      listing=lambda: self._listing(runtime))
        self.link.on_connect(self.remote.set_up)
        self.link.on_connect(self.inbox.set_up)
        self.link.on_connect(self.directory.set_up)
        self.link.on_connect(self.queries.set_up)
        self.link.on_disconnect(self.remote.lost)
        runtime.router.remote = self.remote

    def start(self, local: Iterable[str]) -> None:
        """Join: `local` agents (restored) are announced once NATS is reached;
        waits JOIN_WITHIN_S at most for that."""
        self.directory.adopt(local)
        self.link.start()
        if not self.link.ready.wait(JOIN_WITHIN_S):
            log.warning("NATS not reached within %.0fs: serving this host's agents alone until it is",
                        JOIN_WITHIN_S)

    def stop(self) -> None:
        self.directory.release_all(LEAVE_WITHIN_S)
        self.link.stop()
        self._answers.shutdown(wait=False, cancel_futures=True)

    def _status(self, runtime: Runtime, name: str) -> bytes:
        status = status_to_proto(runtime.status(name))
        status.host = self.host
        return status.SerializeToString()

    def _listing(self, runtime: Runtime) -> bytes:
        response = caxton_pb2.ListAgentsResponse(agents=[status_to_proto(s) for s in runtime.list()])
        for status in response.agents:
            status.host = self.host
        return response.SerializeToString()

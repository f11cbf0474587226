"""Bringing up a set of new workers and proving them before they take traffic.

Used by start (all replicas at once), hot reload and rollback: new workers
start beside the old ones, and only when every one of them has loaded its
module, passed caxton_init, answered a health check and the warm-up
messages does the agent switch to them. All or nothing: if one fails, the
others are killed and the caller gets the reason.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import grpc

from caxton.v1 import caxton_pb2
from caxton.internal.v1 import worker_pb2

from .instance import InstanceStartError, WorkerEnv, WorkerInstance, launch_instance
from .store import VersionRecord


def launch_many(env: WorkerEnv, version: VersionRecord, count: int) -> list[WorkerInstance]:
    """Start `count` workers for `version` in parallel; all or nothing."""
    if count == 1:
        return [launch_instance(env, version)]
    with ThreadPoolExecutor(max_workers=min(count, 16), thread_name_prefix="launch") as pool:
        futures = [pool.submit(launch_instance, env, version) for _ in range(count)]
    started, errors = [], []
    for future in futures:
        try:
            started.append(future.result())
        except Exception as exc:
            errors.append(exc)
    if errors:
        discard(started)
        raise errors[0]
    return started


def discard(instances: list[WorkerInstance]) -> None:
    """Kill workers that never took traffic and release what they hold."""
    for instance in instances:
        instance.kill()
    for instance in instances:
        instance.process.wait_exit(5.0)
        instance.close()


def prove_ready(instances: list[WorkerInstance], warmup: list[bytes], timeout: float) -> None:
    """Health-check each new worker and run the warm-up messages through it
    (directly, not through the agent's mailbox); raise InstanceStartError
    saying which check failed."""
    for instance in instances:
        try:
            instance.stub.Stats(worker_pb2.StatsRequest(), timeout=timeout)
        except grpc.RpcError as exc:
            raise InstanceStartError(f"worker {instance.pid} failed its health check: {exc.details()}") from exc
        if not warmup:
            continue
        request = worker_pb2.HandleRequest(
            messages=[caxton_pb2.AgentMessage(receiver=instance.agent, sender="caxton-warmup", content=content)
                      for content in warmup]
        )
        try:
            response = instance.stub.Handle(request, timeout=timeout * len(warmup))
        except grpc.RpcError as exc:
            raise InstanceStartError(f"worker {instance.pid} failed during warm-up: {exc.details()}") from exc
        for number, result in enumerate(response.results, 1):
            if result.code != 0:
                raise InstanceStartError(f"warm-up message {number} failed on worker {instance.pid}: {result.error}")

"""The fork server: a pre-warmed process that forks one worker per request.

It imports wasmtime, grpc and the worker code once, creates no gRPC object
and no thread (gRPC is not fork-safe once either exists), and then forks.
Its objects are frozen out of the garbage collector's reach (gc.freeze), so
that the children's collections do not write to, and so un-share, the pages
they inherited: 1.5 MiB less private memory per idle worker. With
`--merge-pages` it also offers its memory to the kernel's same-page merging
before the first fork (page_merging.py), so that the pages idle workers
still copy, identical from worker to worker, can be kept once.
Each worker it makes is still its own process serving one agent instance, and
applies exactly the guards of a worker started by exec.

Workers are forked twice: the intermediate child exits at once, so the worker
is re-parented to the supervisor (a child subreaper). That makes the
supervisor the worker's real parent: it reaps the worker and reads its exit
status directly, the worker's parent-death signal is tied to the supervisor,
and the fork server can die and be replaced without touching running workers.

It holds no secrets: children share its memory image. It starts clean (the
supervisor gives it a reduced environment, `/` as working directory, umask
077), and each worker inherits that; a worker keeps no descriptor of the
server's but its ready pipe and its own stderr.

Protocol, over a SOCK_SEQPACKET socket from the supervisor (one datagram per
message): the server first sends {"ready": true}; then each request is
{"socket": PATH, "cgroup_procs": [PATH, ...]} with two descriptors attached (SCM_RIGHTS): the write
end of the worker's ready pipe, then the write end of the pipe that becomes the worker's stderr (read
and logged by the supervisor). Answered by {"pid": N} or {"error": TEXT}.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import socket
import sys
import time
import traceback

from . import page_merging
from .limits import (
    FORK_SERVER_PROCESS_NAME,
    SPARE_PROCESS_NAME,
    apply_process_guards,
    die_with_parent,
    join_cgroups,
    name_process,
)

# How long a new worker waits to be re-parented to the supervisor. It takes
# microseconds; if it never happens the supervisor is gone.
_REPARENT_TIMEOUT_S = 5.0


def _become_worker(control: socket.socket, socket_path: str, ready_fd: int, output_fd: int, supervisor_pid: int,
                   cgroup_procs: list[str], gid: int) -> None:
    """Runs in the forked worker; never returns."""
    status = 1
    try:
        # First of all: whatever this process writes from now on is the
        # worker's output, not the supervisor's log (the server's stderr).
        os.dup2(output_fd, 2)
        # Until it is named it carries the fork server's name, and joining
        # its cgroup can take milliseconds (cgroup v1 waits for an RCU grace
        # period): tools and tests must not take it for the fork server.
        name_process(SPARE_PROCESS_NAME)
        control.close()
        _close_all_but(ready_fd)
        join_cgroups(cgroup_procs)
        os.setsid()
        deadline = time.monotonic() + _REPARENT_TIMEOUT_S
        while os.getppid() != supervisor_pid:
            if time.monotonic() > deadline:
                os._exit(1)
            time.sleep(0.0001)
        apply_process_guards(supervisor_pid, gid)
        from .server import serve

        # Collections are on again, for what this worker allocates: the
        # objects it inherited are frozen, so they are never scanned.
        gc.enable()
        status = serve(socket_path, ready_fd)
    except BaseException:
        traceback.print_exc()
    finally:
        os._exit(status)


def _close_all_but(ready_fd: int) -> None:
    """Close every descriptor inherited from the server except stdin, stdout,
    stderr and the ready pipe. No Python object of the server's holds one
    of them any more (the control socket is closed first), so none can be
    closed a second time under a descriptor the worker opens later."""
    os.closerange(3, ready_fd)
    # No descriptor is numbered at or above the hard limit of open files.
    os.closerange(ready_fd + 1, resource.getrlimit(resource.RLIMIT_NOFILE)[1])


def _fork_worker(control: socket.socket, socket_path: str, ready_fd: int, output_fd: int, supervisor_pid: int,
                 cgroup_procs: list[str], gid: int) -> int:
    """Double-fork a worker; returns its pid."""
    pid_r, pid_w = os.pipe()
    # Whatever the server allocated since the last fork joins the frozen
    # generation too (see main).
    gc.freeze()
    child = os.fork()
    if child == 0:
        try:
            os.close(pid_r)
            grandchild = os.fork()
            if grandchild == 0:
                os.close(pid_w)
                _become_worker(control, socket_path, ready_fd, output_fd, supervisor_pid, cgroup_procs, gid)
            os.write(pid_w, str(grandchild).encode())
        finally:
            os._exit(0)
    os.close(pid_w)
    try:
        data = b""
        while chunk := os.read(pid_r, 32):
            data += chunk
    finally:
        os.close(pid_r)
        os.waitpid(child, 0)
    if not data:
        raise OSError("the intermediate child exited without forking a worker")
    return int(data)


def serve_forever(control: socket.socket, supervisor_pid: int) -> None:
    control.send(json.dumps({"ready": True}).encode())
    while True:
        message, fds, _, _ = socket.recv_fds(control, 65536, 2)
        if not message:
            return  # the supervisor closed the channel: we are done
        reply: dict[str, int | str]
        try:
            request = json.loads(message)
            if len(fds) != 2:
                raise ValueError(f"expected 2 file descriptors (ready pipe, stderr), got {len(fds)}")
            reply = {"pid": _fork_worker(control, request["socket"], fds[0], fds[1], supervisor_pid,
                                         list(request.get("cgroup_procs", [])), int(request.get("gid", -1)))}
        except (OSError, ValueError, KeyError) as exc:
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        finally:
            for fd in fds:
                os.close(fd)
        control.send(json.dumps(reply).encode())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -I -m caxton.worker.forkserver")
    parser.add_argument("--control-fd", type=int, required=True)
    parser.add_argument("--parent-pid", type=int, required=True)
    parser.add_argument("--merge-pages", action="store_true",
                        help="offer what workers inherit to the kernel's same-page merging")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    name_process(FORK_SERVER_PROCESS_NAME)
    die_with_parent(args.parent_pid)
    # Pages stay shared with the children only as long as nobody writes to
    # them, and a collection writes to the header of every object it scans.
    # So: no collections here (they would also free objects and leave holes
    # that later allocations fill, on pages the children share), and every
    # object made here is moved to the permanent generation before each fork
    # (gc.freeze), which the children's collections never scan. The request
    # loop below makes no reference cycles, so nothing here needs collecting.
    gc.disable()
    # Pre-warm: everything a worker imports, imported once here and shared
    # copy-on-write by every child; grpc._server and the thread pool are
    # imported by grpc.server(), which only the worker calls.
    import concurrent.futures.thread  # noqa: F401

    import grpc  # noqa: F401
    import grpc._server  # noqa: F401
    import wasmtime  # noqa: F401

    from . import fastcall, rehearsal, sandbox, seccomp, server, service  # noqa: F401

    server.configure_logging()
    seccomp.preload()
    fastcall.preload()
    # A first Load's one-off costs, paid here for every worker.
    rehearsal.rehearse()
    sandbox.prepare_engine()

    gc.freeze()
    if args.merge_pages:
        # Last: what is mapped now is what every worker inherits.
        marked = page_merging.offer_inherited_pages()
        if marked.error:
            print(f"caxton-forksrv: workers' pages will not be merged: {marked.error}", file=sys.stderr)

    control = socket.socket(fileno=args.control_fd)
    serve_forever(control, args.parent_pid)


if __name__ == "__main__":
    main()

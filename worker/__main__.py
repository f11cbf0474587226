"""Entry point of a worker process: `python -I -m caxton.worker --socket PATH ...`.

A worker serves exactly one agent instance over a private gRPC service on a
Unix socket. It starts empty, tells the supervisor it is ready by writing one
line to the ready pipe, and then waits for `Load`.
"""

from __future__ import annotations

import argparse
import sys

from .limits import apply_process_guards, join_cgroups


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -I -m caxton.worker")
    parser.add_argument("--socket", required=True, help="Unix socket path to serve on")
    parser.add_argument("--ready-fd", type=int, required=True, help="pipe to write 'ready' to once serving")
    parser.add_argument("--parent-pid", type=int, required=True, help="the supervisor's pid")
    parser.add_argument("--cgroup-procs", action="append", default=[],
                        help="a cgroup.procs file to join before anything else (repeatable)")
    parser.add_argument("--gid", type=int, default=-1,
                        help="the group to take at start, dropping every other (default: keep ours)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = _parse(sys.argv[1:] if argv is None else argv)
    # Into our cgroup before we allocate anything, so all of it is charged
    # there; then the guards, before the heavy imports and any agent code.
    join_cgroups(args.cgroup_procs)
    apply_process_guards(args.parent_pid, args.gid)
    from .server import serve

    sys.exit(serve(args.socket, args.ready_fd))


if __name__ == "__main__":
    main()

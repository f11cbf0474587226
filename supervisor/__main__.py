"""`caxton-supervisor` / `python -m caxton.supervisor`: run the Caxton supervisor."""

from __future__ import annotations

import argparse
import logging
import resource
import sys
from dataclasses import replace
from pathlib import Path

from caxton import __version__

from .config import ConfigError, load_config


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="caxton-supervisor", description="Run the Caxton supervisor.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--config", type=Path, help="TOML config file")
    parser.add_argument("--listen", help="address for the public API (default 127.0.0.1:50051)")
    parser.add_argument("--state-dir", type=Path, help="where agents and modules are kept (default ./.caxton)")
    parser.add_argument("--deploy-examples", action="store_true",
                        help="deploy the example agents (echo, uppercase, counter) if they are not deployed yet")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return parser.parse_args(argv)


def _raise_open_file_limit() -> None:
    """Each agent costs the supervisor a few descriptors (its gRPC channel,
    a pidfd, a ready pipe while starting); the usual soft limit of 1024 would
    cap a host at a few hundred agents. Raise it to the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main(argv: list[str] | None = None) -> None:
    args = _parse(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"caxton-supervisor: {exc}", file=sys.stderr)
        sys.exit(2)
    if args.listen:
        config = replace(config, listen=args.listen)
    if args.state_dir:
        config = replace(config, state_dir=args.state_dir)

    _raise_open_file_limit()
    from .server import Supervisor, run

    try:
        supervisor = Supervisor(config, deploy_examples=args.deploy_examples)
    except (OSError, ValueError) as exc:
        print(f"caxton-supervisor: {exc}", file=sys.stderr)
        sys.exit(1)
    sys.exit(run(supervisor))


if __name__ == "__main__":
    main()

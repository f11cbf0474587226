"""The supervisor's command line: run the Caxton supervisor (`__main__`
chooses gRPC's engine first, then calls `main`).

`caxton-supervisor token create --name NAME --role ROLE` makes a new API
token instead: it prints the token once, and the config lines that let the
supervisor accept it (its SHA-256, never the token itself).
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import resource
import sys
from dataclasses import replace
from pathlib import Path

from caxton import __version__

from .auth import Role, check_token_name, new_token, token_sha256
from .config import Config, ConfigError, load_config
from .grpc_engine import VARIABLE as GRPC_EXPERIMENTS
from .logs import LEVELS, default_format
from .logs import configure as configure_logging

log = logging.getLogger("caxton.supervisor")


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="caxton-supervisor", description="Run the Caxton supervisor.",
        epilog="caxton-supervisor token create --name NAME --role ROLE makes an API token for the config.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--config", type=Path, help="TOML config file")
    parser.add_argument("--listen", help="address for the public API: HOST:PORT (default 127.0.0.1:50051; "
                                         "other than loopback only with TLS) or unix:PATH")
    parser.add_argument("--health-listen", help="plaintext address serving only grpc.health.v1, for probes")
    parser.add_argument("--state-dir", type=Path, help="where agents and modules are kept (default ./.caxton)")
    parser.add_argument("--deploy-examples", action="store_true",
                        help="deploy the example agents (echo, uppercase, counter, ping, pong, fanout) if they are "
                             "not deployed yet")
    parser.add_argument("--metrics-listen", help="HOST:PORT serving Prometheus metrics over HTTP (default: off)")
    parser.add_argument("--log-level", choices=LEVELS,
                        help="log from this level up (default: the config's log_level, else INFO); "
                             "on SIGHUP the config's log_level applies again")
    parser.add_argument("--log-format", choices=["text", "json"], default=default_format(),
                        help="one line per event, as text or one JSON object (default: json under systemd)")
    return parser.parse_args(argv)


def _raise_open_file_limit() -> None:
    """Each agent costs the supervisor a few descriptors (its gRPC channel,
    a pidfd, a ready pipe while starting); the usual soft limit of 1024 would
    cap a host at a few hundred agents. Raise it to the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _token_command(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="caxton-supervisor token",
                                     description="Make API tokens for the supervisor's config.")
    commands = parser.add_subparsers(dest="command", required=True)
    create = commands.add_parser("create", help="print a new token once, and the TOML lines for the config")
    create.add_argument("--name", required=True, type=_token_name,
                        help="who holds the token: named in audit lines, and the sender of its messages")
    create.add_argument("--role", required=True, choices=[role.value for role in Role])
    args = parser.parse_args(argv)
    token = new_token()
    print(f"token: {token}")
    print()
    print("[[auth.tokens]]")
    print(f'name = "{args.name}"')
    print(f'role = "{args.role}"')
    print(f'sha256 = "{token_sha256(token)}"')
    print("caxton-supervisor: the token is shown only this once; add the lines to the config and restart "
          "the supervisor", file=sys.stderr)
    return 0


def _token_name(text: str) -> str:
    try:
        return check_token_name(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["token"]:
        sys.exit(_token_command(argv[1:]))
    args = _parse(argv)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"caxton-supervisor: {exc}", file=sys.stderr)
        sys.exit(2)
    configure_logging(args.log_level or config.log_level or "INFO", args.log_format)
    log.info("gRPC experiments: %s", os.environ.get(GRPC_EXPERIMENTS) or "grpc's defaults")
    if args.listen:
        config = replace(config, listen=args.listen)
    if args.health_listen:
        config = replace(config, health_listen=args.health_listen)
    if args.state_dir:
        config = replace(config, state_dir=args.state_dir)
    if args.metrics_listen:
        config = replace(config, metrics_listen=args.metrics_listen)

    _raise_open_file_limit()
    from .server import Supervisor, run

    try:
        supervisor = Supervisor(config, deploy_examples=args.deploy_examples)
    except (OSError, ValueError) as exc:
        print(f"caxton-supervisor: {exc}", file=sys.stderr)
        sys.exit(1)
    # What the imports and the parts just built made lives as long as the
    # process: out of the cyclic collector's reach, so that each full
    # collection (which holds the GIL: every API call waits for it) scans
    # only what agents and requests made since: ~48,000 objects fewer, of
    # the 130,000-200,000 one scanned at 1,000-1,500 agents (60-120 ms of
    # CPU, measured on a busy 2-core host). Agents come after this (restored
    # or deployed), so a removed one is still collected.
    gc.freeze()
    sys.exit(run(supervisor, reload=(lambda: _reread(args.config, args.log_level)) if args.config else None))


def _reread(path: Path, flag_level: str | None) -> Config:
    """The config read again for SIGHUP, its log level decided: the
    config's log_level, else the --log-level flag's, else INFO. (At start the
    flag wins: it is how a start is debugged; SIGHUP is how the level of a
    running supervisor is changed, by editing the config.)"""
    config = load_config(path)
    return replace(config, log_level=config.log_level or flag_level or "INFO")

"""`caxton`: the command-line client for a running supervisor.

Every command prints its result on stdout; an error is one line on stderr
and a non-zero exit status (2 for usage errors, 1 for everything else).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

import grpc
from google.protobuf import json_format

from caxton import __version__
from caxton.contract import DEFAULT_ADDRESS, REPORT_METADATA_KEY, parse_size, state_name, status_dict
from caxton.v1 import caxton_pb2, caxton_pb2_grpc

from .connection import ConnectionSetupError, connect


class CliError(Exception):
    pass


def _status_line(status: caxton_pb2.AgentStatus) -> str:
    pids = ",".join(str(i.pid) for i in status.instances) or "-"
    return (
        f"{status.name:<20} {state_name(status.state):<9} v{status.version:<4} pid {pids:<8} "
        f"messages {status.messages:<8} errors {status.errors:<6} restarts {status.restarts}"
        + (f"  ({status.last_error})" if status.last_error else "")
    )


def _read_module(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror}") from None


def _limits(args: argparse.Namespace) -> caxton_pb2.ResourceLimits:
    limits = caxton_pb2.ResourceLimits()
    try:
        if getattr(args, "memory", None):
            limits.memory_bytes = parse_size(args.memory)
        if getattr(args, "max_message_bytes", None):
            limits.max_message_bytes = parse_size(args.max_message_bytes)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    if getattr(args, "fuel", None):
        limits.fuel = args.fuel
    if getattr(args, "timeout_ms", None):
        limits.timeout_ms = args.timeout_ms
    return limits


def _print_report(report: caxton_pb2.ValidationReport, out) -> None:
    for finding in report.findings:
        severity = caxton_pb2.Severity.Name(finding.severity).removeprefix("SEVERITY_").lower()
        print(f"{severity}: {finding.rule}: {finding.message}", file=out)


def _report_from_error(exc: grpc.RpcError) -> caxton_pb2.ValidationReport | None:
    # The error a failed call raises is also that call's grpc.Call, which
    # holds the trailing metadata as (key, value) pairs.
    if not isinstance(exc, grpc.Call):
        return None
    for key, value in exc.trailing_metadata() or ():
        if key == REPORT_METADATA_KEY and isinstance(value, bytes):
            return caxton_pb2.ValidationReport.FromString(value)
    return None


def _event_line(event: caxton_pb2.Event) -> str:
    at = time.strftime("%H:%M:%S", time.localtime(event.at)) + f".{int(event.at * 1000) % 1000:03d}"
    version = f" v{event.version}" if event.version else ""
    return f"{at} {event.agent}{version} {event.kind}" + (f": {event.message}" if event.message else "")


_FINAL_KINDS = {"reload-drained", "reload-failed"}
_AUDIT_KIND = "audit"
_FINAL_EVENT_WAIT_S = 2.0


class _Progress:
    """Prints an agent's events while a reload or rollback runs. It waits
    for the stream's `watching` event before the caller starts, so that no
    progress line is missed."""

    def __init__(self, lifecycle, name: str, out):
        self._call = lifecycle.WatchEvents(caxton_pb2.WatchEventsRequest(agent=name))
        self._out = out
        self._subscribed = threading.Event()
        self._finished = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> _Progress:
        self._thread.start()
        self._subscribed.wait(10)
        return self

    def _run(self) -> None:
        try:
            for event in self._call:
                if event.kind == "watching":
                    self._subscribed.set()
                    continue
                if event.kind == _AUDIT_KIND:
                    continue  # the audit trail is not the rollout's progress
                print(_event_line(event), file=self._out, flush=True)
                if event.kind in _FINAL_KINDS:
                    self._finished.set()
        except grpc.RpcError:
            pass  # cancelled when the command is done
        finally:
            self._subscribed.set()

    def __exit__(self, *exc) -> None:
        # The call's answer can overtake the last event on the stream; give
        # that event a moment to arrive so the progress ends with it.
        self._finished.wait(_FINAL_EVENT_WAIT_S)
        self._call.cancel()
        self._thread.join(5)


def run(args: argparse.Namespace) -> int:
    try:
        channel = connect(args.address, token=args.token, token_file=args.token_file,
                          ca=args.ca, cert=args.cert, key=args.key)
    except ConnectionSetupError as exc:
        raise CliError(str(exc)) from None
    lifecycle = caxton_pb2_grpc.AgentLifecycleStub(channel)
    messaging = caxton_pb2_grpc.MessagingStub(channel)
    timeout = args.rpc_timeout
    command = args.command
    if command == "deploy":
        request = caxton_pb2.DeployAgentRequest(
            name=args.name, module=_read_module(args.module), limits=_limits(args), policy=args.policy or "",
            label=args.label or "", replicas=args.replicas or 0,
        )
        response = lifecycle.DeployAgent(request, timeout=timeout)
        if args.json:
            print(json.dumps(status_dict(response.status)))
        else:
            print(f"deployed {response.status.name} v{response.status.version}")
            _print_report(response.report, sys.stdout)
    elif command == "send":
        content = _read_module(args.file) if args.file else args.text.encode()
        message = caxton_pb2.AgentMessage(receiver=args.name, content=content, sender=args.sender)
        response = messaging.Send(caxton_pb2.SendRequest(message=message), timeout=timeout)
        if response.has_reply:
            sys.stdout.buffer.write(response.reply.content)
            if sys.stdout.isatty():
                sys.stdout.buffer.write(b"\n")
            sys.stdout.flush()
    elif command == "status":
        status = lifecycle.GetAgentStatus(caxton_pb2.GetAgentStatusRequest(name=args.name), timeout=timeout)
        print(json.dumps(status_dict(status)) if args.json else _status_line(status))
    elif command == "list":
        agents = lifecycle.ListAgents(caxton_pb2.ListAgentsRequest(), timeout=timeout).agents
        if args.json:
            print(json.dumps([status_dict(a) for a in agents]))
        else:
            for status in agents:
                print(_status_line(status))
    elif command == "stop":
        stop = caxton_pb2.StopAgentRequest(name=args.name, timeout_ms=int(args.timeout * 1000) if args.timeout else 0)
        status = lifecycle.StopAgent(stop, timeout=max(timeout, (args.timeout or 0) + 30)).status
        print(f"stopped {status.name}")
    elif command == "start":
        status = lifecycle.StartAgent(caxton_pb2.StartAgentRequest(name=args.name), timeout=timeout).status
        print(f"started {status.name} v{status.version}")
    elif command == "remove":
        lifecycle.RemoveAgent(caxton_pb2.RemoveAgentRequest(name=args.name), timeout=timeout)
        print(f"removed {args.name}")
    elif command in ("reload", "rollback"):
        drain_ms = int(args.drain_timeout * 1000) if args.drain_timeout else 0
        with _Progress(lifecycle, args.name, sys.stderr):
            if command == "reload":
                reload = caxton_pb2.HotReloadAgentRequest(
                    name=args.name, module=_read_module(args.module), limits=_limits(args), policy=args.policy or "",
                    label=args.label or "", warmup=[w.encode() for w in args.warmup], drain_timeout_ms=drain_ms,
                )
                response = lifecycle.HotReloadAgent(reload, timeout=timeout)
            else:
                rollback = caxton_pb2.RollbackAgentRequest(name=args.name, to_version=args.to or 0,
                                                           drain_timeout_ms=drain_ms)
                response = lifecycle.RollbackAgent(rollback, timeout=timeout)
        print(f"{'reloaded' if command == 'reload' else 'rolled back'} {args.name} "
              f"v{response.from_version} -> v{response.to_version} "
              f"(switched after {response.switched_after_s * 1000:.0f} ms, "
              f"old drained after {response.drained_after_s * 1000:.0f} ms)")
    elif command == "events":
        try:
            for event in lifecycle.WatchEvents(caxton_pb2.WatchEventsRequest(agent=args.name or "")):
                if event.kind != "watching":
                    print(_event_line(event), flush=True)
        except KeyboardInterrupt:
            return 0
    elif command == "validate":
        validate = caxton_pb2.ValidateModuleRequest(module=_read_module(args.module), policy=args.policy or "")
        report = lifecycle.ValidateModule(validate, timeout=timeout)
        if args.json:
            print(json_format.MessageToJson(
                report, preserving_proto_field_name=True, indent=None, always_print_fields_with_no_presence=True
            ))
        else:
            print(f"{'valid' if report.valid else 'invalid'} (policy {report.policy}, sha256 {report.module_sha256})")
            _print_report(report, sys.stdout)
        return 0 if report.valid else 1
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="caxton", description="Command-line client for the Caxton supervisor.",
                                     allow_abbrev=False)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--address", default=DEFAULT_ADDRESS,
                        help=f"supervisor address, HOST:PORT or unix:PATH (default {DEFAULT_ADDRESS})")
    parser.add_argument("--rpc-timeout", type=float, default=60.0, help="seconds to wait for the supervisor")
    auth = parser.add_argument_group(
        "authentication",
        "The token is the first of: --token, --token-file, $CAXTON_TOKEN, $CAXTON_TOKEN_FILE, "
        "./.caxton/admin.token, /var/lib/caxton/admin.token (when readable).")
    auth.add_argument("--token", help="bearer token (prefer --token-file: a command line is visible to others)")
    auth.add_argument("--token-file", help="file holding the bearer token")
    auth.add_argument("--ca", help="TLS: CA certificate (PEM) that signed the supervisor's certificate")
    auth.add_argument("--cert", help="mutual TLS: this client's certificate (PEM)")
    auth.add_argument("--key", help="mutual TLS: this client's private key (PEM)")
    commands = parser.add_subparsers(dest="command", required=True)

    deploy = commands.add_parser("deploy", help="validate a module and run it as a new agent")
    deploy.add_argument("name")
    deploy.add_argument("module", help=".wasm or .wat file")
    deploy.add_argument("--memory", help="linear memory limit, e.g. 10MB or 64MiB")
    deploy.add_argument("--fuel", type=int, help="fuel per message")
    deploy.add_argument("--timeout-ms", type=int, help="wall-clock limit per message")
    deploy.add_argument("--max-message-bytes", help="largest message content in or out")
    deploy.add_argument("--policy", help="validation policy name")
    deploy.add_argument("--label", help="free-form version label")
    deploy.add_argument("--replicas", type=int, help="worker processes behind the name (default 1)")
    deploy.add_argument("--json", action="store_true")

    reload = commands.add_parser("reload", help="replace an agent's module with no downtime")
    reload.add_argument("name")
    reload.add_argument("module", help=".wasm or .wat file")
    reload.add_argument("--memory", help="new linear memory limit (default: keep)")
    reload.add_argument("--fuel", type=int)
    reload.add_argument("--timeout-ms", type=int)
    reload.add_argument("--max-message-bytes")
    reload.add_argument("--policy", help="validation policy (default: the agent's)")
    reload.add_argument("--label", help="free-form version label")
    reload.add_argument("--warmup", action="append", default=[],
                        help="a message each new worker must answer before the switch (repeatable)")
    reload.add_argument("--drain-timeout", type=float, help="seconds the old workers get to finish")

    rollback = commands.add_parser("rollback", help="go back to an earlier version with no downtime")
    rollback.add_argument("name")
    rollback.add_argument("--to", type=int, help="version number (default: the one before the current)")
    rollback.add_argument("--drain-timeout", type=float, help="seconds the old workers get to finish")

    events = commands.add_parser("events", help="follow lifecycle, restart and rollout events")
    events.add_argument("name", nargs="?", help="only this agent's events")

    send = commands.add_parser("send", help="send a message and print the reply")
    send.add_argument("name")
    send.add_argument("text", nargs="?", default="")
    send.add_argument("--file", help="send this file's bytes instead of TEXT")
    send.add_argument("--sender", default="cli", help="sender name in the envelope")

    status = commands.add_parser("status", help="show one agent")
    status.add_argument("name")
    status.add_argument("--json", action="store_true")

    listing = commands.add_parser("list", help="show every agent")
    listing.add_argument("--json", action="store_true")

    stop = commands.add_parser("stop", help="drain and stop an agent")
    stop.add_argument("name")
    stop.add_argument("--timeout", type=float, help="seconds in-flight messages may take to finish")

    start = commands.add_parser("start", help="start a stopped or failed agent")
    start.add_argument("name")

    remove = commands.add_parser("remove", help="stop and forget an agent")
    remove.add_argument("name")

    validate = commands.add_parser("validate", help="check a module without deploying it")
    validate.add_argument("module")
    validate.add_argument("--policy")
    validate.add_argument("--json", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    try:
        sys.exit(run(args))
    except CliError as exc:
        print(f"caxton: {exc}", file=sys.stderr)
        sys.exit(1)
    except grpc.RpcError as exc:
        code = exc.code()
        print(f"caxton: {code.name}: {exc.details()}", file=sys.stderr)
        report = _report_from_error(exc) if code == grpc.StatusCode.INVALID_ARGUMENT else None
        if report is not None:
            _print_report(report, sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()

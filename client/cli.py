"""`caxton`: the command-line client for a running supervisor.

Every command prints its result on stdout; an error is one line on stderr
and a non-zero exit status (2 for usage errors, 1 for everything else).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

import grpc
from google.protobuf import json_format

from caxton import __version__
from caxton.contract import DEFAULT_ADDRESS, REPORT_METADATA_KEY, parse_size, state_name, status_dict
from caxton.v1 import caxton_pb2, caxton_pb2_grpc

from .completion import SHELLS, script
from .connection import ConnectionSetupError, connect
from .duration import parse_duration
from .escape import escape
from .rollout import add_rollout_arguments, add_strategy_options, control, follow, rollout_options, status_line
from .trace import add_trace_arguments, trace


class CliError(Exception):
    pass


# Performative names as the agent sees them in message_info: lower case,
# no prefix, hyphens (accept-proposal); underscores are accepted too.
_PERFORMATIVES = {
    name.removeprefix("PERFORMATIVE_").lower().replace("_", "-"): name
    for name in caxton_pb2.Performative.keys() if name != "PERFORMATIVE_UNSPECIFIED"
}


def _performative(text: str) -> str:
    """The enum name (PERFORMATIVE_INFORM) for a name as the agent sees it (inform)."""
    try:
        return _PERFORMATIVES[text.lower().replace("_", "-")]
    except KeyError:
        raise argparse.ArgumentTypeError(
            f"not a performative: {text!r} (choose from {', '.join(_PERFORMATIVES)})") from None


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _json_line(message) -> str:
    """A protobuf message as one line of JSON, field names as in the proto."""
    return json.dumps(json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True))


def _clock(at: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(at)) + f".{int(at * 1000) % 1000:03d}"


def _log_line(line: caxton_pb2.LogLine) -> str:
    return f"{_clock(line.at)} {line.level:<7} v{line.version} {escape(line.text)}"


def _status_line(status: caxton_pb2.AgentStatus) -> str:
    pids = ",".join(str(i.pid) for i in status.instances) or "-"
    return (
        f"{status.name:<20} {state_name(status.state):<9} v{status.version:<4} pid {pids:<8} "
        f"messages {status.messages:<8} errors {status.errors:<6} restarts {status.restarts}"
        + (f"  ({status.last_error})" if status.last_error else "")
    )


def _status_text(status: caxton_pb2.AgentStatus) -> str:
    """`status NAME`: the status line, then health when it is not healthy, and the rollout in progress."""
    lines = [_status_line(status)]
    if status.health_status and status.health_status != "healthy":
        lines.append(f"health: {status.health_status}" + (f" ({status.health_reason})" if status.health_reason else ""))
    rollout = status_line(status)
    return "\n".join(lines + [rollout] if rollout else lines)


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
    at = _clock(event.at)
    version = f" v{event.version}" if event.version else ""
    return f"{at} {event.agent}{version} {event.kind}" + (f": {event.message}" if event.message else "")


_FINAL_KINDS = {"reload-drained", "reload-failed"}
_AUDIT_KIND = "audit"
_FINAL_EVENT_WAIT_S = 2.0


class _Progress:
    """Prints an agent's events while a reload or rollback runs. It waits
    for the stream's `watching` event before the caller starts, so that no
    progress line is missed."""

    def __init__(self, lifecycle, name: str, out, as_json: bool = False):
        self._call = lifecycle.WatchEvents(caxton_pb2.WatchEventsRequest(agent=name))
        self._out = out
        self._format = _json_line if as_json else _event_line
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
                print(self._format(event), file=self._out, flush=True)
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
    # Closed on every way out, Ctrl-C included: a call still open when the
    # interpreter exits can keep grpc, and so the process, from ending.
    with channel:
        return _command(args, channel)


def _command(args: argparse.Namespace, channel: grpc.Channel) -> int:
    lifecycle = caxton_pb2_grpc.AgentLifecycleStub(channel)
    messaging = caxton_pb2_grpc.MessagingStub(channel)
    timeout = args.rpc_timeout
    command = args.command
    if command == "deploy":
        request = caxton_pb2.DeployAgentRequest(
            name=args.name, module=_read_module(args.module), limits=_limits(args), policy=args.policy or "",
            label=args.label or "", replicas=args.replicas or 0, rollout=args.rollout,
        )
        if args.rollout is not None:
            def deploy() -> caxton_pb2.AgentStatus:
                deployed = lifecycle.DeployAgent(request, timeout=timeout)
                if not args.json:
                    _print_report(deployed.report, sys.stderr)
                return deployed.status
            return follow(lifecycle, args.name, deploy, as_json=args.json,
                          format_event=_json_line if args.json else _event_line, timeout=timeout)
        response = lifecycle.DeployAgent(request, timeout=timeout)
        if args.json:
            print(json.dumps(status_dict(response.status)))
        else:
            print(f"deployed {response.status.name} v{response.status.version}")
            _print_report(response.report, sys.stdout)
    elif command == "send":
        content = _read_module(args.file) if args.file else args.text.encode()
        message = caxton_pb2.AgentMessage(
            receiver=args.name, content=content, sender=args.sender, performative=args.performative,
            conversation_id=args.conversation or "", reply_with=args.reply_with or "",
        )
        response = messaging.Send(caxton_pb2.SendRequest(message=message), timeout=timeout)
        if args.json:
            print(_json_line(response))
        elif response.has_reply:
            sys.stdout.buffer.write(response.reply.content)
            if sys.stdout.isatty():
                sys.stdout.buffer.write(b"\n")
            sys.stdout.flush()
    elif command == "status":
        status = lifecycle.GetAgentStatus(caxton_pb2.GetAgentStatusRequest(name=args.name), timeout=timeout)
        print(json.dumps(status_dict(status)) if args.json else _status_text(status))
    elif command == "list":
        listed = lifecycle.ListAgents(caxton_pb2.ListAgentsRequest(cluster=args.cluster), timeout=timeout)
        for unreachable in listed.unreachable_hosts:
            print(f"caxton: host {escape(unreachable)} (its agents are not listed)", file=sys.stderr)
        if args.json:
            print(json.dumps([{**status_dict(a), "host": a.host} if args.cluster else status_dict(a)
                              for a in listed.agents]))
        elif args.cluster:
            width = max([len("HOST"), *(len(a.host) for a in listed.agents)])
            print(f"{'HOST':<{width}} AGENT")
            for status in listed.agents:
                print(f"{escape(status.host):<{width}} {_status_line(status)}")
        else:
            for status in listed.agents:
                print(_status_line(status))
    elif command == "stop":
        stop = caxton_pb2.StopAgentRequest(name=args.name, timeout_ms=int(args.timeout * 1000) if args.timeout else 0)
        status = lifecycle.StopAgent(stop, timeout=max(timeout, (args.timeout or 0) + 30)).status
        print(json.dumps(status_dict(status)) if args.json else f"stopped {status.name}")
    elif command == "start":
        status = lifecycle.StartAgent(caxton_pb2.StartAgentRequest(name=args.name), timeout=timeout).status
        print(json.dumps(status_dict(status)) if args.json else f"started {status.name} v{status.version}")
    elif command == "remove":
        lifecycle.RemoveAgent(caxton_pb2.RemoveAgentRequest(name=args.name), timeout=timeout)
        print(json.dumps({"name": args.name, "removed": True}) if args.json else f"removed {args.name}")
    elif command in ("reload", "rollback"):
        drain_ms = int(args.drain_timeout * 1000) if args.drain_timeout else 0
        if command == "reload":
            reload = caxton_pb2.HotReloadAgentRequest(
                name=args.name, module=_read_module(args.module), limits=_limits(args), policy=args.policy or "",
                label=args.label or "", warmup=[w.encode() for w in args.warmup], drain_timeout_ms=drain_ms,
                rollout=args.rollout,
            )
            if args.rollout is not None:
                return follow(lifecycle, args.name, lambda: lifecycle.HotReloadAgent(reload, timeout=timeout),
                              as_json=args.json, format_event=_json_line if args.json else _event_line,
                              timeout=timeout)
        with _Progress(lifecycle, args.name, sys.stderr, as_json=args.json):
            if command == "reload":
                response = lifecycle.HotReloadAgent(reload, timeout=timeout)
            else:
                rollback = caxton_pb2.RollbackAgentRequest(name=args.name, to_version=args.to or 0,
                                                           drain_timeout_ms=drain_ms)
                response = lifecycle.RollbackAgent(rollback, timeout=timeout)
        if args.json:
            result = {"name": args.name, "from_version": response.from_version, "to_version": response.to_version,
                      "switched_after_s": response.switched_after_s, "drained_after_s": response.drained_after_s,
                      "status": status_dict(response.status)}
            print(json.dumps(result))
            return 0
        print(f"{'reloaded' if command == 'reload' else 'rolled back'} {args.name} "
              f"v{response.from_version} -> v{response.to_version} "
              f"(switched after {response.switched_after_s * 1000:.0f} ms, "
              f"old drained after {response.drained_after_s * 1000:.0f} ms)")
    elif command == "rollout":
        return control(lifecycle, args.action, args.name, as_json=args.json, timeout=timeout)
    elif command == "events":
        since = time.time() - args.since if args.since else 0.0
        try:
            for event in lifecycle.WatchEvents(caxton_pb2.WatchEventsRequest(agent=args.name or "", since=since)):
                if event.kind != "watching":
                    print(_json_line(event) if args.json else _event_line(event), flush=True)
        except KeyboardInterrupt:
            return 0
    elif command == "logs":
        logs = caxton_pb2.AgentLogsRequest(name=args.name, since=time.time() - args.since if args.since else 0.0,
                                           follow=args.follow)
        try:
            # A followed stream has no end, so no deadline; a plain read does.
            for line in lifecycle.AgentLogs(logs, timeout=None if args.follow else timeout):
                print(_json_line(line) if args.json else _log_line(line), flush=True)
        except KeyboardInterrupt:
            return 0
    elif command == "trace":
        return trace(lifecycle, args, timeout=timeout)
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


ADDRESS_ENV = "CAXTON_ADDRESS"


def _shared_options(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """The connection options, on the top-level parser (with defaults) and
    on every subcommand (with SUPPRESS, so a value given before the command
    is not overwritten by the subcommand's default)."""
    default_address = os.environ.get(ADDRESS_ENV) or DEFAULT_ADDRESS

    def default(value: object) -> object:
        return value if top else argparse.SUPPRESS

    parser.add_argument("--address", default=default(default_address),
                        help=f"supervisor address, HOST:PORT or unix:PATH (default ${ADDRESS_ENV}, "
                             f"else {DEFAULT_ADDRESS})")
    parser.add_argument("--rpc-timeout", type=float, default=default(60.0), help="seconds to wait for the supervisor")
    auth = parser.add_argument_group(
        "authentication",
        "The token is the first of: --token, --token-file, $CAXTON_TOKEN, $CAXTON_TOKEN_FILE, "
        "./.caxton/admin.token, /var/lib/caxton/admin.token (when readable).")
    auth.add_argument("--token", default=default(None),
                      help="bearer token (prefer --token-file: a command line is visible to others)")
    auth.add_argument("--token-file", default=default(None), help="file holding the bearer token")
    auth.add_argument("--ca", default=default(None),
                      help="TLS: CA certificate (PEM) that signed the supervisor's certificate")
    auth.add_argument("--cert", default=default(None), help="mutual TLS: this client's certificate (PEM)")
    auth.add_argument("--key", default=default(None), help="mutual TLS: this client's private key (PEM)")


def _json_flag(parser: argparse.ArgumentParser, what: str = "the result as one JSON object") -> None:
    parser.add_argument("--json", action="store_true", help=f"print {what}")


def _limit_options(parser: argparse.ArgumentParser, *, keep: bool) -> None:
    suffix = " (default: keep)" if keep else ""
    parser.add_argument("--memory", help="linear memory limit, e.g. 10MB or 64MiB" + suffix)
    parser.add_argument("--fuel", type=int, help="fuel per message" + suffix)
    parser.add_argument("--timeout-ms", type=int, help="wall-clock limit per message, in ms" + suffix)
    parser.add_argument("--max-message-bytes", help="largest message content in or out, e.g. 64KiB" + suffix)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="caxton", description="Command-line client for the Caxton supervisor.",
                                     allow_abbrev=False)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _shared_options(parser, top=True)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help, allow_abbrev=False)
        _shared_options(sub, top=False)
        return sub

    deploy = command("deploy", "validate a module and run it as a new agent")
    deploy.add_argument("name", help="agent name")
    deploy.add_argument("module", help=".wasm or .wat file")
    _limit_options(deploy, keep=False)
    deploy.add_argument("--policy", help="validation policy name")
    deploy.add_argument("--label", help="free-form version label")
    deploy.add_argument("--replicas", type=int, help="worker processes behind the name (default 1)")
    _json_flag(deploy, "the agent's status as one JSON object; with --strategy, progress events (stderr) and "
                       "the outcome (stdout), one object per line")
    add_strategy_options(deploy)

    reload = command("reload", "replace an agent's module with no downtime")
    reload.add_argument("name", help="agent name")
    reload.add_argument("module", help=".wasm or .wat file")
    _limit_options(reload, keep=True)
    reload.add_argument("--policy", help="validation policy (default: the agent's)")
    reload.add_argument("--label", help="free-form version label")
    reload.add_argument("--warmup", action="append", default=[],
                        help="a message each new worker must answer before the switch (repeatable)")
    reload.add_argument("--drain-timeout", type=float, help="seconds the old workers get to finish")
    _json_flag(reload, "progress events (stderr) and the result (stdout) as JSON, one object per line")
    add_strategy_options(reload)

    rollback = command("rollback", "go back to an earlier version with no downtime")
    rollback.add_argument("name", help="agent name")
    rollback.add_argument("--to", type=int, help="version number (default: the one before the current)")
    rollback.add_argument("--drain-timeout", type=float, help="seconds the old workers get to finish")
    _json_flag(rollback, "progress events (stderr) and the result (stdout) as JSON, one object per line")

    rollout = command("rollout", "show or steer an agent's rollout: status, promote, abort, pause, resume")
    add_rollout_arguments(rollout)

    events = command("events", "follow lifecycle, restart and rollout events (Ctrl-C to stop)")
    events.add_argument("name", nargs="?", help="only this agent's events")
    events.add_argument("--since", type=_duration, help="first replay the events of this long ago, e.g. 5m, 2h")
    _json_flag(events, "one JSON object per event")

    logs = command("logs", "print an agent's log lines")
    logs.add_argument("name", help="agent name")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing new lines until Ctrl-C")
    logs.add_argument("--since", type=_duration, help="only lines of this long ago, e.g. 30s, 5m, 2h, 1d")
    _json_flag(logs, "one JSON object per line")

    add_trace_arguments(command("trace", "print a conversation between agents, message by message"))

    send = command("send", "send a message and print the reply")
    send.add_argument("name", help="agent name")
    send.add_argument("text", nargs="?", default="", help="message content (default: empty)")
    send.add_argument("--file", help="send this file's bytes instead of TEXT")
    send.add_argument("--sender", default="cli", help="sender name in the envelope (default cli)")
    send.add_argument("--performative", type=_performative, metavar="NAME",
                      help="envelope performative: " + ", ".join(_PERFORMATIVES) + " (default request)")
    send.add_argument("--conversation", help="envelope conversation id")
    send.add_argument("--reply-with", help="envelope reply-with (the reply's in_reply_to echoes it)")
    _json_flag(send, "the whole reply envelope as JSON (content in base64)")

    status = command("status", "show one agent")
    status.add_argument("name", help="agent name")
    _json_flag(status)

    listing = command("list", "show every agent")
    listing.add_argument("--cluster", action="store_true",
                         help="every host's agents, with a HOST column (a supervisor with [cluster])")
    _json_flag(listing, "a JSON array of agents")

    stop = command("stop", "drain and stop an agent")
    stop.add_argument("name", help="agent name")
    stop.add_argument("--timeout", type=float, help="seconds in-flight messages may take to finish")
    _json_flag(stop, "the agent's status as one JSON object")

    start = command("start", "start a stopped or failed agent")
    start.add_argument("name", help="agent name")
    _json_flag(start, "the agent's status as one JSON object")

    remove = command("remove", "stop and forget an agent")
    remove.add_argument("name", help="agent name")
    _json_flag(remove)

    validate = command("validate", "check a module without deploying it")
    validate.add_argument("module", help=".wasm or .wat file")
    validate.add_argument("--policy", help="validation policy name")
    _json_flag(validate, "the validation report as one JSON object")

    completion = command("completion", "print a shell completion script")
    completion.add_argument("shell", choices=SHELLS, help="bash or zsh")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command in ("deploy", "reload"):
        try:
            args.rollout = rollout_options(args)
        except ValueError as exc:
            parser.error(str(exc))
    if args.command == "completion":
        sys.stdout.write(script(parser, args.shell))
        sys.exit(0)
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

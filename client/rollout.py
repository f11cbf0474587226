"""Rollouts on the command line: the `--strategy` options of `deploy` and
`reload`, following a rollout until it ends, and `caxton rollout` to see and
steer one.

The rollout itself is the supervisor's; the CLI asks for one
(RolloutOptions), shows its events, and sends ControlRollout. Following a
rollout subscribes to the agent's events before the call that starts it, so
no step is missed, and ends at the first of: a final state in the call's
answer, a final rollout-* event, or a final state that GetAgentStatus reports.
The event stream is the fast path; GetAgentStatus is asked whenever the
stream dropped events or ended, and every POLL_S seconds, so that one lost
event cannot leave the CLI waiting for ever.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

import grpc
from google.protobuf import json_format

from caxton.v1 import caxton_pb2

from .duration import parse_duration

STRATEGIES = ("immediate", "rolling", "blue-green", "canary", "graceful", "traffic-split", "parallel")
COMPARE_MODES = ("exact", "outcome")
ACTIONS = ("status", "promote", "abort", "pause", "resume")

FINAL_STATES = frozenset({"promoted", "rolled-back", "aborted"})
IN_PROGRESS_STATES = frozenset({"progressing", "paused", "baking"})
# The event that ends a rollout -> the state it ended in.
FINAL_EVENTS = {"rollout-promoted": "promoted", "rollout-rolled-back": "rolled-back", "rollout-aborted": "aborted"}
_WATCHING_KIND = "watching"
_DROPPED_KIND = "events-dropped"
_AUDIT_KIND = "audit"  # the audit trail is not the rollout's progress

SUBSCRIBE_S = 10.0  # for the event stream's `watching` event
POLL_S = 5.0  # between GetAgentStatus cross-checks while waiting for the end
# An answer that says the rollout is over can overtake the event that says
# so; the event gets this long to arrive, so that the progress ends with it.
FINAL_EVENT_WAIT_S = 2.0

# ---------------------------------------------------------------- options


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"not a whole number of at least 1: {text!r}")
    return value


def _seconds(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _fraction(text: str) -> float:
    """0.05 or 5% -> 0.05."""
    number = text.strip()
    try:
        value = float(number.removesuffix("%"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a fraction or a percentage: {text!r} (examples: 0.05, 5%)") from None
    if number.endswith("%"):
        value /= 100
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise argparse.ArgumentTypeError(f"not between 0 and 1 (0% and 100%): {text!r}")
    return value


def _ratio(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 1.0):
        raise argparse.ArgumentTypeError(f"not a ratio of at least 1: {text!r} (example: 2 = twice the stable p99)")
    return value


def _steps(text: str) -> tuple[float, ...]:
    """10,50,100 -> (10.0, 50.0, 100.0): percentages, ascending, ending at 100
    (as RolloutOptions.steps requires)."""
    try:
        shares = tuple(float(part.strip().removesuffix("%")) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not comma-separated percentages: {text!r} (example: 10,50,100)") from None
    if not all(math.isfinite(share) and 0 < share <= 100 for share in shares):
        raise argparse.ArgumentTypeError(f"each step must be above 0 and at most 100: {text!r}")
    if list(shares) != sorted(set(shares)):
        raise argparse.ArgumentTypeError(f"steps must ascend: {text!r}")
    if shares[-1] != 100:
        raise argparse.ArgumentTypeError(f"the last step must be 100 (the new version takes all traffic): {text!r}")
    return shares


@dataclass(frozen=True)
class _Option:
    """A command-line option that sets the RolloutOptions field of its name."""

    flag: str
    field: str
    parse: Callable[[str], Any]
    metavar: str
    help: str
    strategies: tuple[str, ...] = ()  # the strategies it means something to; () = all
    choices: tuple[str, ...] | None = None


_JUDGED = ("canary", "traffic-split")
_OPTIONS = (
    _Option("--batch", "batch", _count, "N", "rolling: replicas replaced at a time (default 1)", ("rolling",)),
    _Option("--keep-old-s", "keep_old_s", _seconds, "S",
            "blue-green: how long the old set stays warm, so that a rollback within it is instant",
            ("blue-green",)),
    _Option("--canary-replicas", "canary_replicas", _count, "N",
            "canary: new workers started beside the stable set (default 1)", ("canary",)),
    _Option("--steps", "steps", _steps, "10,50,100",
            "the new version's share of traffic at each step, in percent, ascending, ending at 100", _JUDGED),
    _Option("--step-s", "step_s", _seconds, "S", "each step is held at least this long, e.g. 10, 30s, 2m", _JUDGED),
    _Option("--min-messages", "min_messages", _count, "N",
            "messages of the new version judged before a step (or a parallel run) can pass"),
    _Option("--max-error-rate", "max_error_rate", _fraction, "R",
            "the new version's error rate that rolls it back: a fraction or a percentage, e.g. 0.05 or 5%%"),
    _Option("--max-latency-ratio", "max_latency_ratio", _ratio, "R",
            "the new version's p99 latency over the stable one's that rolls it back (at least 1)"),
    _Option("--bake-s", "bake_s", _seconds, "S",
            "after promotion, the new version is watched this long and rolled back on a breach or crash loop"),
    _Option("--compare", "compare", str, "{exact,outcome}",
            "parallel: what the two versions' replies must agree on: the exact bytes (default) or the "
            "outcome (reply or error)", ("parallel",), COMPARE_MODES),
    _Option("--max-mismatch-rate", "max_mismatch_rate", _fraction, "R",
            "parallel: the share of disagreeing replies that rolls back, e.g. 0.01 or 1%%", ("parallel",)),
)


def add_strategy_options(parser: argparse.ArgumentParser) -> None:
    """`--strategy` and its options on `deploy` or `reload`. main() turns
    them into `args.rollout` with rollout_options()."""
    group = parser.add_argument_group(
        "rollout", "Roll the new version out with a strategy and wait until it is promoted (exit 0) or rolled "
                   "back (exit 1). Options left out take the supervisor's [rollout] defaults.")
    group.add_argument("--strategy", choices=STRATEGIES,
                       help="how the new version reaches traffic: replicas replaced (immediate, rolling, "
                            "blue-green, canary) or traffic moved (graceful, traffic-split, parallel)")
    for option in _OPTIONS:
        group.add_argument(option.flag, dest=option.field, type=option.parse, choices=option.choices,
                           metavar=option.metavar, help=option.help)
    parser.set_defaults(rollout=None)


def rollout_options(args: argparse.Namespace) -> caxton_pb2.RolloutOptions | None:
    """The RolloutOptions `args` ask for, with only the given fields set;
    None without --strategy. ValueError (a usage error) for an option
    without --strategy or one that means nothing to the strategy."""
    given = [option for option in _OPTIONS if getattr(args, option.field, None) is not None]
    if args.strategy is None:
        if given:
            raise ValueError(f"{given[0].flag} needs --strategy")
        return None
    options = caxton_pb2.RolloutOptions(strategy=args.strategy)
    for option in given:
        if option.strategies and args.strategy not in option.strategies:
            raise ValueError(f"{option.flag} applies to --strategy {' or '.join(option.strategies)} only, "
                             f"not {args.strategy}")
        value = getattr(args, option.field)
        if option.field == "steps":
            options.steps.extend(value)
        else:
            setattr(options, option.field, value)
    return options


# ---------------------------------------------------------------- output


def rollout_dict(rollout: caxton_pb2.RolloutStatus | None) -> dict[str, Any] | None:
    """A rollout as JSON, field names as in the proto; None when there is none."""
    if rollout is None:
        return None
    return json_format.MessageToDict(rollout, preserving_proto_field_name=True,
                                     always_print_fields_with_no_presence=True)


def _percent(fraction: float) -> str:
    return f"{round(fraction * 100, 1):g}%"


def summary(rollout: caxton_pb2.RolloutStatus) -> str:
    """One line: strategy, state, step i/n, share, stable -> candidate."""
    parts = [rollout.strategy or "graceful", rollout.state]
    if rollout.steps:
        shares = ",".join(f"{share:g}" for share in rollout.steps)
        parts.append(f"step {rollout.step}/{len(rollout.steps)} ({shares}%)")
    parts.append(f"share {_percent(rollout.share)}")
    parts.append(f"v{rollout.stable_version} -> v{rollout.candidate_version}")
    return " ".join(parts)


def status_line(status: caxton_pb2.AgentStatus) -> str | None:
    """`status`'s rollout line, while the agent has a rollout in progress."""
    rollout = status.rollout
    if not status.HasField("rollout") or rollout.state not in IN_PROGRESS_STATES:
        return None
    return f"rollout: {summary(rollout)}" + (f": {rollout.reason}" if rollout.reason else "")


def _describe(name: str, rollout: caxton_pb2.RolloutStatus | None) -> str:
    if rollout is None:
        return f"{name}: no rollout"
    lines = [f"{name}: {summary(rollout)}"]
    if rollout.reason:
        lines.append(f"reason: {rollout.reason}")
    if rollout.verdict:
        lines.append(f"verdict: {rollout.verdict}")
    return "\n".join(lines)


def _rollout_of(message: caxton_pb2.AgentStatus | caxton_pb2.HotReloadAgentResponse) -> (
        caxton_pb2.RolloutStatus | None):
    return message.rollout if message.HasField("rollout") else None


def _current(lifecycle: Any, name: str, timeout: float) -> caxton_pb2.RolloutStatus | None:
    return _rollout_of(lifecycle.GetAgentStatus(caxton_pb2.GetAgentStatusRequest(name=name), timeout=timeout))


# ---------------------------------------------------------------- commands


def add_rollout_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of `caxton rollout ACTION NAME`."""
    parser.add_argument("action", choices=ACTIONS,
                        help="status: show the agent's rollout; promote: skip the remaining steps; "
                             "abort: go back to the stable version; pause; resume")
    parser.add_argument("name", help="agent name")
    parser.add_argument("--json", action="store_true", help="print the rollout as one JSON object (null if none)")


def control(lifecycle: Any, action: str, name: str, *, as_json: bool, timeout: float) -> int:
    """`caxton rollout ACTION NAME`: show the rollout, or steer it and show
    what it became."""
    rollout: caxton_pb2.RolloutStatus | None
    if action == "status":
        rollout = _current(lifecycle, name, timeout)
    else:
        request = caxton_pb2.ControlRolloutRequest(name=name, action=action)
        rollout = lifecycle.ControlRollout(request, timeout=timeout)
    print(json.dumps(rollout_dict(rollout)) if as_json else _describe(name, rollout))
    return 0


class RolloutError(Exception):
    """The CLI cannot follow the rollout; the message says why."""


class RolloutWatch:
    """An agent's events, printed as they come, from before a rollout
    starts until it ends; the first event that ends a rollout is kept."""

    def __init__(self, lifecycle: Any, name: str, out: TextIO, format_event: Callable[[caxton_pb2.Event], str]):
        self._call = lifecycle.WatchEvents(caxton_pb2.WatchEventsRequest(agent=name))
        self._out = out
        self._format = format_event
        self.final: caxton_pb2.Event | None = None
        self._error: grpc.RpcError | None = None
        self._closing = False
        self._subscribed = threading.Event()
        self._final_seen = threading.Event()
        self._wake = threading.Event()  # a final event, dropped events, or the stream's end
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RolloutWatch:
        self._thread.start()
        subscribed = self._subscribed.wait(SUBSCRIBE_S)
        if subscribed and self._error is None:
            return self
        self._close()
        if self._error is not None:
            raise self._error  # e.g. UNAUTHENTICATED: main reports it
        raise RolloutError(f"the supervisor's event stream did not answer within {SUBSCRIBE_S:g} s")

    def _run(self) -> None:
        try:
            for event in self._call:
                if event.kind == _WATCHING_KIND:
                    self._subscribed.set()
                    continue
                if event.kind == _AUDIT_KIND:
                    continue
                print(self._format(event), file=self._out, flush=True)
                if event.kind in FINAL_EVENTS and self.final is None:
                    self.final = event
                    self._final_seen.set()
                    self._wake.set()
                elif event.kind == _DROPPED_KIND:
                    self._wake.set()  # the end may be among the dropped: ask the supervisor
        except grpc.RpcError as exc:
            if not self._closing:
                self._error = exc
        finally:
            self._subscribed.set()
            self._wake.set()

    def wait(self, timeout: float) -> caxton_pb2.Event | None:
        """The final event once one came; None after `timeout`, or sooner
        when events were dropped or the stream ended (time to ask)."""
        self._wake.wait(timeout)
        # A wake-up lost to this clear is harmless: the caller asks the
        # supervisor after every None.
        self._wake.clear()
        return self.final

    def settle(self) -> None:
        """Give the final event, if it is still on its way, a moment to be printed."""
        self._final_seen.wait(FINAL_EVENT_WAIT_S)

    def _close(self) -> None:
        self._closing = True
        self._call.cancel()
        self._thread.join(5)

    def __exit__(self, *exc: object) -> None:
        self._close()


@dataclass(frozen=True)
class Ending:
    """How a followed rollout ended, as far as the CLI saw."""

    state: str  # promoted, rolled-back, aborted; "" when no rollout was reported
    reason: str
    rollout: caxton_pb2.RolloutStatus | None  # the latest known


def _until_over(lifecycle: Any, name: str, watch: RolloutWatch, answered: caxton_pb2.RolloutStatus | None,
                timeout: float) -> Ending:
    if answered is None:
        return Ending("", "the supervisor reported no rollout", None)
    if answered.state in FINAL_STATES:
        watch.settle()
        return Ending(answered.state, answered.reason, answered)
    while True:
        event = watch.wait(POLL_S)
        if event is not None:
            return Ending(FINAL_EVENTS[event.kind], event.message, _current(lifecycle, name, timeout) or answered)
        latest = _current(lifecycle, name, timeout)
        if latest is None:
            return Ending("", "the supervisor no longer reports a rollout", None)
        if latest.state in FINAL_STATES:
            return Ending(latest.state, latest.reason, latest)


def follow(lifecycle: Any, name: str,
           start: Callable[[], caxton_pb2.AgentStatus | caxton_pb2.HotReloadAgentResponse], *,
           as_json: bool, format_event: Callable[[caxton_pb2.Event], str], timeout: float) -> int:
    """Runs `start` (the DeployAgent or HotReloadAgent call; it returns the
    message whose `rollout` the call answered with) while printing the
    agent's events on stderr, then waits for the rollout to end. 0 when it
    was promoted, else 1 with the reason on stderr. Ctrl-C stops the
    waiting, not the rollout."""
    answered = False
    try:
        with RolloutWatch(lifecycle, name, sys.stderr, format_event) as watch:
            answer = _rollout_of(start())
            answered = True
            ending = _until_over(lifecycle, name, watch, answer, timeout)
    except RolloutError as exc:
        print(f"caxton: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if answered:
            print(f"caxton: stopped waiting; the rollout of {name} goes on (see `caxton rollout status {name}`; "
                  f"`caxton rollout abort {name}` goes back to the stable version)", file=sys.stderr)
        else:
            print(f"caxton: interrupted before the supervisor answered; see `caxton rollout status {name}`",
                  file=sys.stderr)
        return 1
    if as_json:
        print(json.dumps({"name": name, "outcome": ending.state or None, "reason": ending.reason,
                          "rollout": rollout_dict(ending.rollout)}))
    if ending.rollout is None:
        print(f"caxton: {name}: {ending.reason}", file=sys.stderr)
        return 1
    rollout = ending.rollout
    what = f"{name} v{rollout.stable_version} -> v{rollout.candidate_version} ({rollout.strategy or 'graceful'})"
    if ending.state == "promoted":
        if not as_json:
            print(f"promoted {what}" + (f": {ending.reason}" if ending.reason else ""))
        return 0
    print(f"caxton: rollout of {what} {ending.state.replace('-', ' ')}: {ending.reason}", file=sys.stderr)
    return 1

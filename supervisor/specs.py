"""What a caller asks the runtime for: deploy and reload requests as plain data.

The API layer builds these from protobuf; the runtime takes nothing else, so
it can be driven in-process by tests and other front ends. Unset fields are
None and mean "the supervisor's default" (or, on reload, "as before").
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields, replace

from .config import Limits
from .errors import InvalidArgument
from .restart import RestartSettings
from .strategy import RolloutRequest

# \Z, not $: `$` also matches before a trailing newline, so "a\n" would pass.
NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}\Z")

# How much of a client's string an error message quotes back.
_QUOTED_CHARS = 80


def quoted(text: str) -> str:
    """`text` as an error message quotes it: repr, and cut short, so that a
    huge name cannot make an error bigger than a status may be."""
    if len(text) <= _QUOTED_CHARS:
        return repr(text)
    return f"{text[:_QUOTED_CHARS]!r}... ({len(text)} characters)"


def check_name(name: str) -> None:
    if not NAME_PATTERN.match(name):
        raise InvalidArgument(
            f"invalid agent name {quoted(name)}: use 1-63 characters of a-z, 0-9, '.', '_' and '-', "
            "starting with a letter or digit"
        )


@dataclass(frozen=True)
class LimitOverrides:
    memory_bytes: int | None = None
    fuel: int | None = None
    timeout_ms: int | None = None
    max_message_bytes: int | None = None

    def apply(self, base: Limits) -> Limits:
        """`base` with every field set here taking over."""
        return replace(base, **{f.name: v for f in fields(self) if (v := getattr(self, f.name)) is not None})


@dataclass(frozen=True)
class RestartOverrides:
    initial_delay_s: float | None = None
    factor: float | None = None
    max_delay_s: float | None = None
    reset_after_s: float | None = None
    max_failures: int | None = None
    window_s: float | None = None
    breaker_cooldown_s: float | None = None
    breaker_cooldown_max_s: float | None = None
    auto_recover: bool | None = None

    def apply(self, base: RestartSettings) -> RestartSettings:
        """`base` with every field set here taking over; InvalidArgument
        naming the field if the result is not a valid policy."""
        settings = replace(base, **{f.name: v for f in fields(self) if (v := getattr(self, f.name)) is not None})
        try:
            settings.check()
        except ValueError as exc:
            raise InvalidArgument(f"restart.{exc}") from None
        return settings


@dataclass(frozen=True)
class DeploySpec:
    name: str
    module: bytes
    limits: LimitOverrides = LimitOverrides()
    policy: str = ""  # "" = the supervisor's default policy
    label: str = ""
    restart: RestartOverrides = RestartOverrides()
    replicas: int | None = None
    # Only for a name that exists: roll the module out as a new version.
    rollout: RolloutRequest | None = None


@dataclass(frozen=True)
class ReloadSpec:
    name: str
    module: bytes
    limits: LimitOverrides = LimitOverrides()  # over the current version's
    policy: str = ""  # "" = the agent's policy
    label: str = ""
    warmup: tuple[bytes, ...] = ()
    drain_timeout_s: float | None = None  # None = the configured stop timeout
    rollout: RolloutRequest = RolloutRequest()  # default: graceful

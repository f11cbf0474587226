"""Durations on the command line: `30s`, `5m`, `2h`, `1d` (or bare seconds)."""

from __future__ import annotations

import re

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd]?)")


def parse_duration(text: str) -> float:
    """Seconds in `text`; ValueError (naming the text) when it is not a duration."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"not a duration: {text!r} (examples: 30s, 5m, 2h, 1d)")
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]

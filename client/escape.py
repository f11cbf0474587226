"""Display escaping: text an agent wrote, made safe to print on a terminal.

The same rule as the supervisor's own log (caxton.supervisor.logs.escape),
kept here so the client does not import the supervisor: every control
character (newlines, terminal escape sequences, C1 controls) becomes a
visible escape, so an agent's log line is one line and cannot drive the
reader's terminal.
"""

from __future__ import annotations

_ESCAPES = {i: f"\\x{i:02x}" for i in range(32)} | {0x7F: "\\x7f", ord("\\"): "\\\\"}
_ESCAPES |= {ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t"}
_ESCAPES |= {i: f"\\u{i:04x}" for i in range(0x80, 0xA0)}


def escape(text: str) -> str:
    """`text` with every control character shown as an escape, on one line."""
    return text.translate(_ESCAPES)

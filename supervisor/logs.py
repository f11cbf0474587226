"""Log lines you can follow: one line per event, as text or as JSON.

On a terminal a line is plain text; under systemd (which sets
$JOURNAL_STREAM for a service's stderr) or with `--log-format json`, each
line is one JSON object with `ts`, `level`, `logger`, `msg`, and `agent`,
`version`, `pid` where they apply (passed as `extra=`). Text an agent wrote
is never trusted: `escape()` turns control characters (newlines, terminal
escape sequences) into visible escapes before it reaches any log line, so an
agent can neither forge a line of the supervisor's own nor drive the
operator's terminal.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time

# Attributes a record may carry (through `extra=`) that become JSON fields.
CONTEXT_FIELDS = ("agent", "version", "pid")

_ESCAPES = {i: f"\\x{i:02x}" for i in range(32)} | {0x7F: "\\x7f", ord("\\"): "\\\\"}
_ESCAPES |= {ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t"}
# C1 controls (U+0080..U+009F) include single-character terminal escapes.
_ESCAPES |= {i: f"\\u{i:04x}" for i in range(0x80, 0xA0)}


def escape(text: str) -> str:
    """`text` with every control character shown as an escape, on one line."""
    return text.translate(_ESCAPES)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                line[name] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


TEXT_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"


def default_format(environ: os._Environ[str] | dict[str, str] = os.environ) -> str:
    """'json' under systemd (its journal reads structured lines), else 'text'."""
    return "json" if environ.get("JOURNAL_STREAM") else "text"


# The levels `--log-level` and the config's `log_level` accept.
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def configure(level: str, fmt: str) -> None:
    """Send the supervisor's log to stderr, one line per record, as `fmt`
    ('text' or 'json'), from `level` up."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    set_level(level)


def set_level(level: str) -> None:
    """Log from `level` (one of LEVELS) up, from now on: at start, and on SIGHUP."""
    logging.getLogger().setLevel(level)

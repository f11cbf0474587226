"""Log lines: JSON when asked or under systemd, and agent text escaped."""

from __future__ import annotations

import json
import logging

from caxton.supervisor.logs import JsonFormatter, default_format, escape


def _record(msg: str, **extra) -> logging.LogRecord:
    record = logging.LogRecord("caxton.agent", logging.WARNING, __file__, 1, msg, (), None)
    for key, value in extra.items():
        setattr(record, key, value)
    return record


def test_a_json_line_carries_the_fields_and_the_context():
    line = JsonFormatter().format(_record("worker 12 killed by SIGKILL", agent="echo", version=3, pid=12))
    assert "\n" not in line
    parsed = json.loads(line)
    assert parsed["level"] == "WARNING" and parsed["logger"] == "caxton.agent"
    assert parsed["msg"] == "worker 12 killed by SIGKILL"
    assert (parsed["agent"], parsed["version"], parsed["pid"]) == ("echo", 3, 12)
    assert parsed["ts"].endswith("Z")


def test_context_fields_are_left_out_when_they_do_not_apply():
    parsed = json.loads(JsonFormatter().format(_record("serving")))
    assert not {"agent", "version", "pid"} & set(parsed)


def test_agent_text_cannot_forge_a_line_or_drive_a_terminal():
    forged = "hello\n2026-11-30 03:00:00,000 caxton.supervisor ERROR rooted\x1b[2J\x9b31m\r"
    escaped = escape(forged)
    assert "\n" not in escaped and "\r" not in escaped and "\x1b" not in escaped and "\x9b" not in escaped
    assert escaped == ("hello\\n2026-11-30 03:00:00,000 caxton.supervisor ERROR rooted\\x1b[2J\\u009b31m\\r")
    assert escape("plain text, ünïcode") == "plain text, ünïcode"


def test_json_is_the_default_under_systemd():
    assert default_format({"JOURNAL_STREAM": "8:12345"}) == "json"
    assert default_format({}) == "text"

"""What remote delivery (remote.py) puts in a NATS message: batches.

One NATS message carries every message queued for one host at that moment
(a batch of requests), and one carries every outcome ready for one sending
host (a batch of answers): under load hundreds of messages share one NATS
message and its per-message costs, as they share one worker batch on a
host; when idle a batch holds one. Each item is numbered by the sending
host, which matches answers to its waiting callers by number.

Requests: per item, a fixed header (number, deadline in ms or NO_DEADLINE,
length) and the serialized AgentMessage envelope, unchanged. Answers: per
item, (number, status code, whether there is a reply, length) and the
reply's content, or the error's text. Pure: no I/O.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

import grpc

_REQUEST = struct.Struct("!IIi")
_ANSWER = struct.Struct("!IBBi")
NO_DEADLINE = 0xFFFFFFFF
REQUEST_OVERHEAD = _REQUEST.size
_CODES = {code.value[0]: code for code in grpc.StatusCode}

Request = tuple[int, int | None, bytes]  # number, deadline ms (None: none), envelope
Answer = tuple[int, grpc.StatusCode, str, bytes | None]  # number, code, error, reply


class BadFrame(ValueError):
    """A batch that is not one (truncated, or not ours)."""


def pack_requests(requests: Iterable[Request]) -> bytes:
    parts = []
    for number, deadline_ms, envelope in requests:
        deadline = NO_DEADLINE if deadline_ms is None else min(deadline_ms, NO_DEADLINE - 1)
        parts.append(_REQUEST.pack(number, deadline, len(envelope)))
        parts.append(envelope)
    return b"".join(parts)


def unpack_requests(data: bytes) -> list[Request]:
    requests: list[Request] = []
    offset = 0
    while offset < len(data):
        if offset + _REQUEST.size > len(data):
            raise BadFrame("truncated request header")
        number, deadline, length = _REQUEST.unpack_from(data, offset)
        offset += _REQUEST.size
        if length < 0 or offset + length > len(data):
            raise BadFrame("truncated request")
        requests.append((number, None if deadline == NO_DEADLINE else deadline, data[offset:offset + length]))
        offset += length
    return requests


def pack_answers(answers: Iterable[Answer]) -> bytes:
    parts = []
    for number, code, error, reply in answers:
        body = reply if reply is not None else error.encode()
        parts.append(_ANSWER.pack(number, code.value[0], reply is not None, len(body)))
        parts.append(body)
    return b"".join(parts)


def unpack_answers(data: bytes) -> list[Answer]:
    answers: list[Answer] = []
    offset = 0
    while offset < len(data):
        if offset + _ANSWER.size > len(data):
            raise BadFrame("truncated answer header")
        number, value, has_reply, length = _ANSWER.unpack_from(data, offset)
        offset += _ANSWER.size
        if length < 0 or offset + length > len(data):
            raise BadFrame("truncated answer")
        body = data[offset:offset + length]
        offset += length
        code = _CODES.get(value, grpc.StatusCode.UNKNOWN)
        if has_reply:
            answers.append((number, code, "", body))
        else:
            answers.append((number, code, body.decode(errors="replace"), None))
    return answers

"""`caxton trace`: a conversation between agents, message by message.

The supervisor keeps a bounded history of what agents sent to agents, per
conversation, with the replies and FAILUREs the runtime carried back;
TraceConversation streams it in order and, with --follow, what is sent
after. One line per message: when it was sent, sender -> receiver,
performative, message_id, the message it answers (in-reply-to), its size
or, with --content, its escaped content, and what became of it
(`delivered`, or why not).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, TextIO

from google.protobuf import json_format

from caxton.v1 import caxton_pb2

from .escape import escape

# The outcome of the entry a followed trace gets in place of messages it
# fell too far behind to receive.
DROPPED = "dropped"


def add_trace_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("conversation", nargs="?", default="", metavar="CONVERSATION_ID",
                        help="the conversation to show (default: every conversation kept)")
    parser.add_argument("-f", "--follow", action="store_true", help="keep printing new messages until Ctrl-C")
    parser.add_argument("--content", action="store_true",
                        help="show each message's content, escaped, instead of its size (deployer or admin role)")
    parser.add_argument("--json", action="store_true", help="one JSON object per message (content in base64)")


def trace_request(args: argparse.Namespace) -> caxton_pb2.TraceConversationRequest:
    return caxton_pb2.TraceConversationRequest(conversation_id=args.conversation, follow=args.follow,
                                               include_content=args.content)


def performative_name(value: int) -> str:
    """As message_info spells it: request, inform, accept-proposal, ..."""
    if value == caxton_pb2.PERFORMATIVE_UNSPECIFIED:
        return "request"  # unspecified is treated as REQUEST
    if value not in caxton_pb2.Performative.values():
        return str(value)  # one this client does not know yet
    return caxton_pb2.Performative.Name(value).removeprefix("PERFORMATIVE_").lower().replace("_", "-")


def _clock(at: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(at)) + f".{int(at * 1000) % 1000:03d}"


def _quoted(content: bytes) -> str:
    """Content in double quotes on one line: control characters escaped
    (escape.py's rule, which also doubles backslashes), then quotes, so
    only the closing quote ends it."""
    return '"' + escape(content.decode("utf-8", "replace")).replace('"', '\\"') + '"'


def trace_line(traced: caxton_pb2.TracedMessage, *, content: bool = False, conversation: bool = False) -> str:
    """One message as one line; `conversation` prefixes its conversation id
    (when the trace covers every conversation)."""
    if traced.outcome == DROPPED:
        # Not a message: the server's word that a follower fell behind.
        return f"{_clock(traced.at)} messages dropped: this trace fell behind"
    message = traced.message
    what = _quoted(message.content) if content else f"{traced.content_bytes} bytes"
    where = f"[{message.conversation_id}] " if conversation else ""
    return (f"{_clock(traced.at)} {where}{message.sender} -> {message.receiver} "
            f"{performative_name(message.performative)} {message.message_id} "
            f"in-reply-to {message.in_reply_to or '-'} {what} {traced.outcome}")


def trace_json(traced: caxton_pb2.TracedMessage) -> str:
    fields: dict[str, Any] = json_format.MessageToDict(
        traced, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
    return json.dumps(fields)


def trace(lifecycle: Any, args: argparse.Namespace, *, timeout: float, out: TextIO | None = None) -> int:
    """Print the trace `args` asks for; 0 when it ends (or on Ctrl-C)."""
    out = out or sys.stdout
    every = not args.conversation
    try:
        # A followed trace has no end, so no deadline; a plain read does.
        for traced in lifecycle.TraceConversation(trace_request(args), timeout=None if args.follow else timeout):
            text = trace_json(traced) if args.json else trace_line(traced, content=args.content, conversation=every)
            print(text, file=out, flush=True)
    except KeyboardInterrupt:
        return 0
    return 0

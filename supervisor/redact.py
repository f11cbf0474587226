"""Redaction: host paths taken out of text that clients are shown.

Reasons and errors reach clients (an agent's last_error, its failures, the
details of a failed call), and they are often built from foreign errors that
name files: the state directory, a worker's socket, the interpreter. A
client has no business knowing the supervisor's filesystem layout, so every
absolute path of two or more components is cut to its last component,
`.../w3.sock`; the operator's log keeps the full text.
"""

from __future__ import annotations

import re

# An absolute path: "/" then at least two components. Not after a word
# character or a dot, so that "1/2" and "and/or" are left alone; ":" may come
# before it, as in grpc's "unix:/run/caxton/w1.sock".
_PATH = re.compile(r"(?<![\w.])/(?:[^\s/'\"]+/)+([^\s/'\"]*)")


def without_paths(text: str) -> str:
    """`text` with each absolute path cut to `.../<last component>`."""
    return _PATH.sub(lambda match: f".../{match.group(1)}", text)

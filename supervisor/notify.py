"""systemd's notification protocol: tell the service manager how we are.

The protocol is one datagram per message to the Unix socket named in
$NOTIFY_SOCKET (a path, or an abstract name written with a leading '@'),
each a few `KEY=value` lines: READY=1 once the supervisor serves, STATUS=
for `systemctl status`, RELOADING=1 and READY=1 around a configuration
reload (with MONOTONIC_USEC=, which systemd asks for), STOPPING=1 on
shutdown, and WATCHDOG=1 pings while the supervisor is healthy. Without
$NOTIFY_SOCKET (not under systemd, or Type=simple) every call does nothing.
Written with the standard library, as sd_notify(3) describes it.
"""

from __future__ import annotations

import os
import socket
import time


class Notifier:
    def __init__(self, environ: os._Environ[str] | dict[str, str] = os.environ) -> None:
        address = environ.get("NOTIFY_SOCKET", "")
        # An abstract socket name is given with '@' and addressed with a NUL.
        self._address = "\0" + address[1:] if address.startswith("@") else address
        self._watchdog_s = _watchdog_interval(environ)

    @property
    def enabled(self) -> bool:
        return bool(self._address)

    @property
    def watchdog_interval_s(self) -> float | None:
        """How often to ping: half of WatchdogSec=, as sd_watchdog_enabled(3)
        advises; None when no watchdog is asked for."""
        return self._watchdog_s / 2 if self._watchdog_s else None

    def ready(self, status: str = "") -> None:
        self._send("READY=1", f"STATUS={status}" if status else "")

    def reloading(self) -> None:
        self._send("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")

    def stopping(self) -> None:
        self._send("STOPPING=1")

    def status(self, text: str) -> None:
        self._send(f"STATUS={text}")

    def watchdog(self) -> None:
        self._send("WATCHDOG=1")

    def _send(self, *lines: str) -> None:
        if not self._address:
            return
        message = "\n".join(line for line in lines if line).encode()
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            try:
                sock.sendto(message, self._address)
            except OSError:
                # The manager went away or the socket is gone: nothing a
                # supervisor should stop serving for.
                pass


def _watchdog_interval(environ: os._Environ[str] | dict[str, str]) -> float | None:
    """WatchdogSec= in seconds, if it is meant for this process."""
    usec = environ.get("WATCHDOG_USEC", "")
    pid = environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid != str(os.getpid()):
        return None
    return int(usec) / 1_000_000

"""What the supervisor and its clients must agree on beyond the .proto files.

The protobuf messages are the API; this module holds the few conventions
around them that both sides implement: the default address, the trailer that
carries a full validation report, the gRPC message-size limit, where a token
travels and where a client finds one, how sizes are written on the command
line and in config, and the JSON shape of an agent's status (a stable
interface for scripts). It imports nothing of the server,
so the client never pulls the supervisor in.
"""

from __future__ import annotations

import re
from typing import Any

from caxton.v1 import caxton_pb2

DEFAULT_ADDRESS = "127.0.0.1:50051"

# Trailing metadata key of a rejected module's serialized ValidationReport.
REPORT_METADATA_KEY = "caxton-validation-report-bin"

# gRPC message-size limit on every channel and server of Caxton, public and
# private: room for a SendStream frame or a worker batch of many messages.
MAX_GRPC_MESSAGE_BYTES = 64 << 20

# Every call but grpc.health.v1 and reflection carries a bearer token in
# this metadata key: `authorization: Bearer <token>`, as OAuth 2.0 (RFC 6750)
# and gRPC's own access-token credentials write it.
AUTHORIZATION_METADATA_KEY = "authorization"
BEARER_SCHEME = "Bearer"

# The admin token a supervisor without configured tokens creates at its first
# start, in its state directory (mode 0600).
ADMIN_TOKEN_FILE = "admin.token"
# Where a client looks for its token, after --token, --token-file and these
# two variables: the admin token of a supervisor run from the same directory
# with the default state dir, then the one of the systemd unit.
TOKEN_ENV = "CAXTON_TOKEN"
TOKEN_FILE_ENV = "CAXTON_TOKEN_FILE"
DEFAULT_TOKEN_FILES = (f".caxton/{ADMIN_TOKEN_FILE}", f"/var/lib/caxton/{ADMIN_TOKEN_FILE}")

_SIZE = re.compile(r"^\s*(\d+)\s*([KMGT]i?B|B)?\s*$", re.IGNORECASE)
_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40}


def parse_size(text: str | int) -> int:
    """'10MB' -> 10_000_000, '64MiB' -> 67_108_864, 4096 -> 4096."""
    if isinstance(text, int) and not isinstance(text, bool):
        if text < 0:
            raise ValueError(f"size must not be negative: {text}")
        return text
    match = _SIZE.match(str(text))
    if not match:
        raise ValueError(f"not a size: {text!r} (examples: 4096, 10MB, 64MiB)")
    number, unit = match.groups()
    return int(number) * _UNITS[(unit or "b").lower()]


def state_name(state: int) -> str:
    """AGENT_STATE_RUNNING -> 'running'."""
    return caxton_pb2.AgentState.Name(state).removeprefix("AGENT_STATE_").lower()


def status_dict(status: caxton_pb2.AgentStatus) -> dict[str, Any]:
    """The JSON shape of `caxton status --json`."""
    limits = status.limits
    return {
        "name": status.name,
        "state": state_name(status.state),
        "version": status.version,
        "label": status.label,
        "module_sha256": status.module_sha256,
        "pid": status.instances[0].pid if status.instances else None,
        "instances": [
            {
                "pid": i.pid,
                "version": i.version,
                "uptime_s": round(i.uptime_s, 3),
                "memory_bytes": i.memory_bytes,
                "rss_bytes": i.rss_bytes,
                "messages": i.messages,
                "errors": i.errors,
                "resets": i.resets,
                "enforcement": list(i.enforcement),
            }
            for i in status.instances
        ],
        "uptime_s": round(status.uptime_s, 3),
        "memory_bytes": status.memory_bytes,
        "messages": status.messages,
        "errors": status.errors,
        "restarts": status.restarts,
        "resets": sum(i.resets for i in status.instances),
        "enforcement": list(status.instances[0].enforcement) if status.instances else [],
        "limits": {
            "memory_bytes": limits.memory_bytes,
            "fuel": limits.fuel,
            "timeout_ms": limits.timeout_ms,
            "max_message_bytes": limits.max_message_bytes,
        },
        "policy": status.policy,
        "replicas": status.replicas,
        "versions": [
            {"version": v.version, "replicas": v.replicas, "messages": v.messages, "share": round(v.share, 4)}
            for v in status.versions
        ],
        "history": [{"version": h.version, "label": h.label, "module_sha256": h.module_sha256,
                     "deployed_at": h.deployed_at} for h in status.history],
        "recent_failures": [{"at": f.at, "reason": f.reason} for f in status.recent_failures],
        "last_error": status.last_error,
        "deployed_at": status.deployed_at,
        "next_restart_in_s": round(status.next_restart_in_s, 3),
        "breaker": {
            "state": status.breaker.state or "closed",
            "opened_at": status.breaker.opened_at or None,
            "reason": status.breaker.reason,
            "next_attempt_in_s": round(status.breaker.next_attempt_in_s, 3),
        },
        "health_status": status.health_status,
        "health_reason": status.health_reason,
        "rollout": rollout_dict(status.rollout) if status.HasField("rollout") else None,
    }


def rollout_dict(rollout: caxton_pb2.RolloutStatus) -> dict[str, Any]:
    """The JSON shape of a rollout (`status --json`, `rollout status --json`)."""
    return {
        "strategy": rollout.strategy,
        "state": rollout.state,
        "step": rollout.step,
        "steps": list(rollout.steps),
        "share": round(rollout.share, 4),
        "stable_version": rollout.stable_version,
        "candidate_version": rollout.candidate_version,
        "reason": rollout.reason,
        "verdict": rollout.verdict,
        "started_at": rollout.started_at,
        "ended_at": rollout.ended_at or None,
    }

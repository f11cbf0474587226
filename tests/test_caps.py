"""Operator caps (supervisor/caps.py), read from config and checked: pure logic.

The same caps through the real API, and a restart after them, are in
test_rejections.py; through the in-process runtime in test_runtime.py.
"""

from __future__ import annotations

import pytest

from caxton.contract import MAX_GRPC_MESSAGE_BYTES
from caxton.supervisor.caps import (
    COMMITTED_MEMORY_PER_RAM,
    Caps,
    Usage,
    check_label,
    check_limits,
    check_quota,
    check_replicas,
    host_memory_bytes,
    over_caps,
    unrunnable,
)
from caxton.supervisor.config import ConfigError, Limits, config_from_table
from caxton.supervisor.errors import InvalidArgument, ResourceExhausted
from caxton.supervisor.redact import without_paths
from caxton.supervisor.restart import RestartSettings
from caxton.supervisor.specs import LimitOverrides

MIB = 1 << 20
CAPS = Caps(memory_bytes=64 * MIB, fuel=1000, timeout_ms=500, max_message_bytes=4096, replicas=4, label_length=10,
            agents=3, workers=5, committed_memory_bytes=128 * MIB)


def test_the_defaults_are_documented_figures():
    caps = Caps()
    assert caps.memory_bytes == 4 << 30 and caps.max_message_bytes == 16 * MIB
    assert caps.max_message_bytes < MAX_GRPC_MESSAGE_BYTES
    assert caps.committed_memory_bytes == COMMITTED_MEMORY_PER_RAM * host_memory_bytes() > 0
    # The default limits of an agent deployed without its own are within them.
    assert not over_caps(caps, Limits(), 1)


@pytest.mark.parametrize("limits, words", [
    (LimitOverrides(memory_bytes=64 * MIB + 1), ["limits.memory_bytes: 67108865 is above the cap of 67108864 (64 MiB)",
                                                 "caps.memory"]),
    (LimitOverrides(fuel=1001), ["limits.fuel: 1001 is above the cap of 1000", "caps.fuel"]),
    (LimitOverrides(timeout_ms=501), ["limits.timeout_ms: 501 is above the cap of 500", "caps.timeout_ms"]),
    (LimitOverrides(max_message_bytes=1 << 40), ["limits.max_message_bytes: 1099511627776 (1 TiB) is above",
                                                 "4096 (4 KiB)", "caps.max_message_bytes"]),
    (LimitOverrides(memory_bytes=0), ["limits.memory_bytes: expected at least 1, got 0"]),
    (LimitOverrides(timeout_ms=-5), ["limits.timeout_ms: expected at least 1, got -5"]),
], ids=["memory", "fuel", "timeout", "message", "memory-zero", "timeout-negative"])
def test_a_limit_above_its_cap_names_field_value_and_cap(limits, words):
    with pytest.raises(InvalidArgument) as refused:
        check_limits(CAPS, limits)
    for word in words:
        assert word in refused.value.message


def test_limits_at_their_caps_or_not_given_pass():
    check_limits(CAPS, LimitOverrides())
    check_limits(CAPS, LimitOverrides(memory_bytes=64 * MIB, fuel=1000, timeout_ms=500, max_message_bytes=4096))
    check_replicas(CAPS, 4)
    check_label(CAPS, "")
    check_label(CAPS, "v1.2 é 中")  # printable is not ASCII-only


def test_replicas_and_labels():
    with pytest.raises(InvalidArgument, match=r"^replicas: 5 is above the cap of 4 \(caps\.replicas"):
        check_replicas(CAPS, 5)
    with pytest.raises(InvalidArgument, match=r"^replicas: expected at least 1, got 0"):
        check_replicas(CAPS, 0)
    with pytest.raises(InvalidArgument, match=r"^label: 11 characters is above the cap of 10 \(caps\.label_length"):
        check_label(CAPS, "x" * 11)
    for bad, shown in [("a\nb", "'\\n' at 1"), ("\x1b[31m", "'\\x1b' at 0"), ("tab\t", "'\\t' at 3"),
                       ("\u202e", "'\\u202e' at 0")]:
        with pytest.raises(InvalidArgument, match="only printable characters") as refused:
            check_label(CAPS, bad)
        assert shown in refused.value.message


def test_quotas_check_only_what_grows():
    held = Usage(agents=2, workers=4, memory_bytes=100 * MIB)
    check_quota(CAPS, held, Usage.of(28 * MIB, 1))  # exactly at every quota
    with pytest.raises(ResourceExhausted, match=r"^agents: the supervisor holds 3 agents and its cap is 3"):
        check_quota(CAPS, held + Usage.of(1, 1), Usage.of(1, 1))
    with pytest.raises(ResourceExhausted, match=r"^replicas: 2 more workers would make 6, above the cap of 5"):
        check_quota(CAPS, held, Usage.of(1, 2))
    with pytest.raises(ResourceExhausted) as refused:
        check_quota(CAPS, held, Usage(memory_bytes=30 * MIB))
    assert refused.value.message == (
        "limits.memory_bytes x replicas: 31457280 (30 MiB) more would commit 136314880 (130 MiB) to agents, above "
        "the cap of 134217728 (128 MiB) (caps.committed_memory in the supervisor's config)")
    # Held above the caps already (they were lowered): what does not grow passes.
    over = Usage(agents=9, workers=9, memory_bytes=1 << 40)
    check_quota(CAPS, over, Usage(memory_bytes=-MIB))
    check_quota(CAPS, over, Usage())
    assert Usage.of(3, 2) == Usage(1, 2, 6) and held - held == Usage()


def test_a_stored_record_outside_what_can_run_is_named():
    ok = RestartSettings()
    assert unrunnable(Limits(), 1, ok) == ""
    assert unrunnable(Limits(fuel=0, timeout_ms=0), 1, ok) == ""  # unmetered, no timeout: operator's choice
    for limits, replicas, restart, words in [
        (Limits(memory_bytes=(1 << 64) - 1), 1, ok, "limits.memory_bytes is 18446744073709551615, outside"),
        (Limits(fuel=-1), 1, ok, "limits.fuel is -1"),
        (Limits(timeout_ms=1 << 32), 1, ok, "limits.timeout_ms is 4294967296"),
        (Limits(max_message_bytes=0), 1, ok, "limits.max_message_bytes is 0"),
        (Limits(), 0, ok, "replicas is 0, outside what can run (1 to 1024)"),
        (Limits(), "many", ok, "replicas is 'many'"),
        (Limits(), 1, RestartSettings(window_s=1e12), "restart.window_s is 1000000000000.0"),
    ]:
        assert words in unrunnable(limits, replicas, restart)


def test_over_caps_lists_every_excess():
    assert over_caps(CAPS, Limits(memory_bytes=128 * MIB, fuel=1000, timeout_ms=500, max_message_bytes=4096), 9) == [
        "limits.memory_bytes = 134217728 (caps.memory = 67108864)", "replicas = 9 (caps.replicas = 4)"]


# ------------------------------------------------------------ config


def test_caps_are_read_from_config():
    config = config_from_table({"caps": {
        "memory": "1GiB", "fuel": 2 * 10**9, "timeout_ms": 6000, "max_message_bytes": "2MiB", "replicas": 8,
        "label_length": 32, "agents": 10, "workers": 20, "committed_memory": "4GiB"}})
    assert config.caps == Caps(memory_bytes=1 << 30, fuel=2 * 10**9, timeout_ms=6000, max_message_bytes=2 * MIB,
                               replicas=8, label_length=32, agents=10, workers=20, committed_memory_bytes=4 << 30)
    assert config.validation_concurrency == 2
    assert config_from_table({"validation_concurrency": 5}).validation_concurrency == 5


@pytest.mark.parametrize("table, message", [
    ({"caps": {"max_message_bytes": "64MiB"}},
     "caps.max_message_bytes: expected at most 66060288 (the gRPC message limit of 64 MiB less 1 MiB for the "
     "envelope), got 67108864"),
    ({"caps": {"timeout_ms": 1 << 32}}, "caps.timeout_ms: expected at most 4294967295"),
    ({"caps": {"replicas": 5000}}, "caps.replicas: expected at most 1024"),
    ({"caps": {"label_length": 100_000}}, "caps.label_length: expected at most 4096"),
    ({"caps": {"agents": 0}}, "caps.agents: expected an integer >= 1, got 0"),
    ({"caps": {"memroy": "1GiB"}}, "caps.memroy: unknown setting"),
    ({"caps": {"memory": "32MiB"}}, "limits.memory: 67108864 is above caps.memory (33554432)"),
    ({"caps": {"fuel": 10}, "limits": {"fuel": 11}}, "limits.fuel: 11 is above caps.fuel (10)"),
    ({"validation_concurrency": 0}, "validation_concurrency: expected an integer >= 1, got 0"),
], ids=["message-over-grpc", "timeout-over-uint32", "replicas", "label", "agents-zero", "misspelt",
        "default-memory-over", "default-fuel-over", "validation-zero"])
def test_bad_caps_fail_at_start_naming_the_field(table, message):
    with pytest.raises(ConfigError) as info:
        config_from_table(table)
    assert str(info.value).startswith(message), str(info.value)


# ------------------------------------------------------------ what clients are shown


@pytest.mark.parametrize("text, shown", [
    ("failed to connect: unix:/tmp/caxton-x1/w3.sock: Connection refused",
     "failed to connect: unix:.../w3.sock: Connection refused"),
    ("[Errno 2] No such file or directory: '/var/lib/caxton/modules/ab.wasm'",
     "[Errno 2] No such file or directory: '.../ab.wasm'"),
    ("1/2 of the replicas, read/write, v1 -> v2, /tmp", "1/2 of the replicas, read/write, v1 -> v2, /tmp"),
])
def test_host_paths_are_cut_from_what_clients_see(text, shown):
    assert without_paths(text) == shown

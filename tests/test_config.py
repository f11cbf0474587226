"""Supervisor configuration (supervisor/config.py): sizes, limits, tables, files."""

from __future__ import annotations

from pathlib import Path

import pytest

from caxton.supervisor.api import limits_from_proto, limits_to_proto
from caxton.supervisor.config import (
    Config,
    ConfigError,
    Limits,
    SandboxSettings,
    config_from_table,
    load_config,
    parse_size,
)
from caxton.supervisor.policy import BUILTIN_POLICIES, Policy
from caxton.supervisor.restart import RestartSettings
from caxton.v1 import caxton_pb2

# ------------------------------------------------------------ parse_size


@pytest.mark.parametrize(
    "text, expected",
    [
        ("10MB", 10_000_000),
        ("64MiB", 64 << 20),
        ("1GiB", 1 << 30),
        ("1GB", 10**9),
        ("4KB", 4000),
        ("4KiB", 4096),
        ("2TiB", 2 << 40),
        ("1TB", 10**12),
        ("512B", 512),
        ("4096", 4096),
        ("0", 0),
        (" 10 mb ", 10_000_000),
        ("64mib", 64 << 20),
        (4096, 4096),
        (0, 0),
    ],
)
def test_parse_size_accepts(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "MB", "ten", "10XB", "1.5MB", "-5", "-5MB", "10 M B", "0x10", "10MiBs", "1e6"])
def test_parse_size_rejects_bad_strings(text):
    with pytest.raises(ValueError, match="not a size"):
        parse_size(text)


@pytest.mark.parametrize("value", [-1, -4096])
def test_parse_size_rejects_negative_ints(value):
    with pytest.raises(ValueError, match="negative"):
        parse_size(value)


@pytest.mark.parametrize("value", [True, False])
def test_parse_size_rejects_bool(value):
    with pytest.raises(ValueError):
        parse_size(value)


def test_parse_size_rejects_float():
    with pytest.raises(ValueError):
        parse_size(4096.0)


# ------------------------------------------------------------ limits from a request (api.py + specs.py)


def test_overlay_with_empty_request_keeps_everything():
    base = Limits(memory_bytes=1, fuel=2, timeout_ms=3, max_message_bytes=4)
    assert limits_from_proto(caxton_pb2.ResourceLimits()).apply(base) == base


def test_overlay_nonzero_fields_take_over_zero_fields_keep_defaults():
    base = Limits()
    merged = limits_from_proto(caxton_pb2.ResourceLimits(memory_bytes=1 << 20, timeout_ms=250)).apply(base)
    assert merged == Limits(
        memory_bytes=1 << 20, fuel=base.fuel, timeout_ms=250, max_message_bytes=base.max_message_bytes
    )


def test_overlay_all_fields():
    request = caxton_pb2.ResourceLimits(memory_bytes=11, fuel=22, timeout_ms=33, max_message_bytes=44)
    assert limits_from_proto(request).apply(Limits()) == Limits(11, 22, 33, 44)


def test_overlay_does_not_mutate_and_round_trips_through_proto():
    base = Limits()
    request = limits_to_proto(Limits(5, 6, 7, 8))
    assert limits_from_proto(request).apply(base) == Limits(5, 6, 7, 8)
    assert base == Limits()


# ------------------------------------------------------------ config_from_table


def test_empty_table_gives_defaults():
    assert config_from_table({}) == Config()


def test_every_field():
    config = config_from_table(
        {
            "listen": "0.0.0.0:7000",
            "state_dir": "/var/lib/caxton",
            "runtime_dir": "/run/caxton",
            "default_policy": "strict",
            "stop_timeout_s": 3,
            "worker_start_timeout_s": 1.5,
            "queue_limit": 7,
            "batch_max_messages": 8,
            "batch_max_bytes": 9,
            "shutdown_timeout_s": 2.5,
            "limits": {"memory": "32MiB", "fuel": 1000, "timeout_ms": 200, "max_message_bytes": "64KiB"},
        }
    )
    assert config.listen == "0.0.0.0:7000"
    assert config.state_dir == Path("/var/lib/caxton")
    assert config.runtime_dir == "/run/caxton"
    assert config.default_policy == "strict"
    assert config.stop_timeout_s == 3.0 and isinstance(config.stop_timeout_s, float)
    assert config.worker_start_timeout_s == 1.5
    assert config.queue_limit == 7
    assert config.batch_max_messages == 8
    assert config.batch_max_bytes == 9
    assert config.shutdown_timeout_s == 2.5
    assert config.limits == Limits(memory_bytes=32 << 20, fuel=1000, timeout_ms=200, max_message_bytes=64 << 10)
    assert config.policies == BUILTIN_POLICIES


def test_limits_integers_accepted_and_partial_table_keeps_defaults():
    config = config_from_table({"limits": {"memory": 4096}})
    assert config.limits == Limits(memory_bytes=4096)


def test_limits_fuel_and_timeout_zero_allowed_meaning_unmetered():
    config = config_from_table({"limits": {"fuel": 0, "timeout_ms": 0}})
    assert config.limits.fuel == 0
    assert config.limits.timeout_ms == 0


def test_unknown_keys_rejected_naming_them():
    with pytest.raises(ConfigError) as info:
        config_from_table({"listen": "x:1", "lisen": "y", "zzz": 1})
    message = str(info.value)
    assert "lisen" in message and "zzz" in message
    assert "listen," not in message  # the known key is not reported


BAD_FIELDS = [
    ("listen", 5),
    ("state_dir", ["a"]),
    ("runtime_dir", 1),
    ("default_policy", 3),
    ("stop_timeout_s", 0),
    ("stop_timeout_s", -1.0),
    ("stop_timeout_s", "10"),
    ("stop_timeout_s", True),
    ("worker_start_timeout_s", 0),
    ("shutdown_timeout_s", -2),
    ("queue_limit", 0),
    ("queue_limit", -1),
    ("queue_limit", 1.5),
    ("queue_limit", True),
    ("queue_limit", "10"),
    ("batch_max_messages", 0),
    ("batch_max_bytes", 0),
    ("batch_max_bytes", "4MB"),
]


@pytest.mark.parametrize("key, value", BAD_FIELDS, ids=[f"{k}={v!r}" for k, v in BAD_FIELDS])
def test_bad_field_names_the_field(key, value):
    with pytest.raises(ConfigError) as info:
        config_from_table({key: value})
    assert key in str(info.value)


BAD_LIMITS = [
    ("memory", "lots", "limits.memory"),
    ("memory", -1, "limits.memory"),
    ("memory", 1.5, "limits.memory"),
    ("memory", True, "limits.memory"),
    ("max_message_bytes", "1.5MB", "limits.max_message_bytes"),
    ("max_message_bytes", -3, "limits.max_message_bytes"),
    ("fuel", -1, "fuel"),
    ("fuel", "many", "fuel"),
    ("fuel", True, "fuel"),
    ("timeout_ms", -5, "timeout_ms"),
    ("timeout_ms", 1.5, "timeout_ms"),
]


@pytest.mark.parametrize("key, value, named", BAD_LIMITS, ids=[f"{k}={v!r}" for k, v, _ in BAD_LIMITS])
def test_bad_limit_names_the_field(key, value, named):
    with pytest.raises(ConfigError) as info:
        config_from_table({"limits": {key: value}})
    assert named in str(info.value)


def test_limits_must_be_a_table():
    with pytest.raises(ConfigError, match="limits"):
        config_from_table({"limits": "64MiB"})


def test_custom_policy_builds_a_policy():
    config = config_from_table(
        {
            "default_policy": "tight",
            "policies": {"tight": {"max_module_bytes": 1024, "allowed_imports": ["caxton.log"]}},
        }
    )
    policy = config.policies["tight"]
    assert isinstance(policy, Policy)
    assert policy.name == "tight"
    assert policy.max_module_bytes == 1024
    assert policy.allowed_imports == frozenset({"caxton.log"})
    # unspecified fields come from the built-in default policy
    assert policy.max_imports == BUILTIN_POLICIES["default"].max_imports
    assert config.default_policy == "tight"
    # the built-ins remain available
    for name in BUILTIN_POLICIES:
        assert name in config.policies


def test_custom_policy_can_override_a_builtin_name():
    config = config_from_table({"policies": {"default": {"max_imports": 3}}})
    assert config.policies["default"].max_imports == 3
    assert BUILTIN_POLICIES["default"].max_imports != 3  # the module-level table is untouched


def test_bad_policy_field_names_policy_and_field():
    with pytest.raises(ConfigError) as info:
        config_from_table({"policies": {"mine": {"max_imports": "lots"}}})
    assert "policies.mine" in str(info.value)
    assert "max_imports" in str(info.value)


def test_unknown_policy_field_rejected():
    with pytest.raises(ConfigError, match="policies.mine.*bogus"):
        config_from_table({"policies": {"mine": {"bogus": 1}}})


def test_policy_entry_must_be_a_table():
    with pytest.raises(ConfigError, match="policies.mine"):
        config_from_table({"policies": {"mine": 5}})


def test_default_policy_must_exist():
    with pytest.raises(ConfigError) as info:
        config_from_table({"default_policy": "nope"})
    message = str(info.value)
    assert "default_policy" in message and "nope" in message
    assert "strict" in message  # lists the known ones


def test_default_policy_may_name_a_builtin():
    for name in BUILTIN_POLICIES:
        assert config_from_table({"default_policy": name}).default_policy == name


# ------------------------------------------------------------ load_config


def test_load_config_none_gives_defaults():
    assert load_config(None) == Config()


def test_load_config_from_toml_file(tmp_path):
    path = tmp_path / "caxton.toml"
    path.write_text(
        """
listen = "127.0.0.1:6000"
state_dir = "state"
queue_limit = 50
stop_timeout_s = 2.5
default_policy = "mine"

[limits]
memory = "16MiB"
fuel = 5000
timeout_ms = 100
max_message_bytes = "2KB"

[policies.mine]
max_imports = 2
deny_unsafe_features = false
"""
    )
    config = load_config(path)
    assert config.listen == "127.0.0.1:6000"
    assert config.state_dir == Path("state")
    assert config.queue_limit == 50
    assert config.stop_timeout_s == 2.5
    assert config.limits == Limits(memory_bytes=16 << 20, fuel=5000, timeout_ms=100, max_message_bytes=2000)
    assert config.default_policy == "mine"
    assert config.policies["mine"].max_imports == 2
    assert config.policies["mine"].deny_unsafe_features is False
    assert config.policies["mine"].denied_features == frozenset()


def test_load_config_missing_file(tmp_path):
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value)
    assert "cannot read config" in str(info.value)


def test_load_config_bad_toml(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("listen = \n[[[")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_load_config_bad_field_in_file(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("queue_limit = 0\n")
    with pytest.raises(ConfigError, match="queue_limit"):
        load_config(path)


def test_load_config_unknown_key_in_file(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('listen = "a:1"\nqueue_limt = 5\n')
    with pytest.raises(ConfigError, match="queue_limt"):
        load_config(path)


# ------------------------------------------------------------ malformed tables


@pytest.mark.parametrize("value", [5, "strict", ["a"]])
def test_policies_not_a_table_is_a_config_error(value):
    with pytest.raises(ConfigError, match="policies"):
        config_from_table({"policies": value})


def test_unknown_key_in_limits_table_is_rejected():
    with pytest.raises(ConfigError, match="memroy"):
        config_from_table({"limits": {"memroy": "1MiB"}})


def test_nan_timeout_is_rejected():
    with pytest.raises(ConfigError, match="stop_timeout_s"):
        config_from_table({"stop_timeout_s": float("nan")})


def test_limit_errors_name_the_limits_table():
    with pytest.raises(ConfigError, match=r"^limits\.fuel"):
        config_from_table({"limits": {"fuel": -1}})
    with pytest.raises(ConfigError, match=r"^limits\.memory"):
        config_from_table({"limits": {"memory": 0}})


def test_the_shipped_example_config_loads():
    """systemd/caxton.toml documents every setting; it must stay valid."""
    from pathlib import Path

    config = load_config(Path(__file__).resolve().parent.parent / "systemd" / "caxton.toml")
    assert config.restart.max_failures == 5 and config.sandbox.user == "nobody"
    assert config.sandbox.merge_pages is True
    assert "tight" in config.policies and config.keep_versions == 5


# ------------------------------------------------------------ one error format


FULL_PATHS = [
    ({"sandbox": {"cpu_cores": -1}}, "sandbox.cpu_cores: expected a number >= 0, got -1"),
    ({"sandbox": {"cpu_cores": float("nan")}}, "sandbox.cpu_cores: expected a finite number, got nan"),
    ({"sandbox": {"cgroups": "on"}}, "sandbox.cgroups: expected one of 'auto', 'off', got 'on'"),
    ({"sandbox": {"pids_max": True}}, "sandbox.pids_max: expected an integer, got True"),
    ({"sandbox": {"merge_pages": "yes"}}, "sandbox.merge_pages: expected true or false, got 'yes'"),
    ({"sandbox": {"memroy_overhead": "1MiB"}}, "sandbox.memroy_overhead: unknown setting"),
    ({"restart": {"factor": 0.5}}, "restart.factor: expected a finite number >= 1, got 0.5"),
    ({"restart": {"window_s": float("inf")}}, "restart.window_s: expected a finite number, got inf"),
    ({"restart": {"max_failure": 3}}, "restart.max_failure: unknown setting"),
    ({"restart": []}, "restart: expected a table, got []"),
    ({"policies": {"mine": {"max_imports": "lots"}}}, "policies.mine.max_imports: expected an integer, got 'lots'"),
    ({"policies": {"my policy": {"bogus": 1}}}, 'policies."my policy".bogus: unknown setting'),
    ({"policies": {"": {}}}, 'policies."": a policy needs a non-empty name'),
    ({"limits": {"memory": 0}}, "limits.memory: expected a size >= 1, got 0"),
    ({"worker_start": "spawn"}, "worker_start: expected one of 'fork', 'exec', got 'spawn'"),
    ({"health_timeout_s": float("nan")}, "health_timeout_s: expected a finite number, got nan"),
    ({"keep_versions": False}, "keep_versions: expected an integer, got False"),
]


@pytest.mark.parametrize("table, message", FULL_PATHS, ids=[m.split(":")[0] for _, m in FULL_PATHS])
def test_every_error_names_its_full_dotted_path(table, message):
    with pytest.raises(ConfigError) as info:
        config_from_table(table)
    assert str(info.value) == message


def test_every_section_and_field_of_the_config_is_readable():
    config = config_from_table(
        {
            "worker_start": "exec",
            "worker_pool": 0,
            "health_interval_s": 1,
            "health_timeout_s": 0.5,
            "health_failures": 3,
            "keep_versions": 1,
            "sandbox": {
                "user": "",
                "cgroups": "off",
                "memory_overhead": "1MiB",
                "cpu_cores": 0,
                "pids_max": 0,
                "open_files": 10,
                "cpu_seconds": 60,
                "merge_pages": False,
            },
            "restart": {"max_failures": 9},
        }
    )
    assert (config.worker_start, config.worker_pool, config.health_interval_s) == ("exec", 0, 1.0)
    assert (config.health_timeout_s, config.health_failures, config.keep_versions) == (0.5, 3, 1)
    assert config.sandbox == SandboxSettings(
        user="", cgroups="off", memory_overhead_bytes=1 << 20, cpu_cores=0.0, pids_max=0, open_files=10, cpu_seconds=60,
        merge_pages=False,
    )
    assert config.restart == RestartSettings(max_failures=9)

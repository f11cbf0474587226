"""Rollout plans: defaults filled in, each field checked on its own, errors naming it (pure)."""

from __future__ import annotations

import pytest

from caxton.supervisor.config import config_from_table
from caxton.supervisor.errors import InvalidArgument
from caxton.supervisor.settings import ConfigError
from caxton.supervisor.strategy import RolloutDefaults, RolloutRequest, Strategy, plan

DEFAULTS = RolloutDefaults()


def test_no_strategy_is_a_graceful_reload_as_before():
    graceful = plan(RolloutRequest(), DEFAULTS, replicas=2)
    assert graceful.strategy is Strategy.GRACEFUL
    # A plain reload is not watched afterwards unless asked to be.
    assert graceful.bake_s == 0.0 and graceful.steps == ()


def test_judged_strategies_take_their_default_steps_and_a_bake():
    canary = plan(RolloutRequest(strategy="canary"), DEFAULTS, replicas=3)
    assert canary.steps == DEFAULTS.canary_steps and canary.canary_replicas == 1
    assert canary.bake_s == DEFAULTS.bake_s and canary.step_s == DEFAULTS.step_s
    split = plan(RolloutRequest(strategy="traffic-split"), DEFAULTS, replicas=1)
    assert split.steps == DEFAULTS.split_steps
    assert plan(RolloutRequest(strategy="blue-green"), DEFAULTS, replicas=1).bake_s == DEFAULTS.bake_s
    assert plan(RolloutRequest(strategy="parallel"), DEFAULTS, replicas=1).steps == ()


def test_a_request_overrides_each_default():
    asked = plan(RolloutRequest(strategy="canary", steps=(20.0, 100.0), step_s=1.5, min_messages=50,
                                max_error_rate=0.0, max_latency_ratio=2.0, bake_s=0.0, canary_replicas=2),
                 DEFAULTS, replicas=4)
    assert asked.steps == (20.0, 100.0) and asked.step_s == 1.5 and asked.bake_s == 0.0
    assert asked.canary_replicas == 2
    t = asked.thresholds
    assert (t.min_messages, t.max_error_rate, t.max_latency_ratio) == (50, 0.0, 2.0)


@pytest.mark.parametrize("request_, field", [
    (RolloutRequest(strategy="yolo"), "rollout.strategy"),
    (RolloutRequest(strategy="rolling", batch=5), "rollout.batch"),
    (RolloutRequest(strategy="canary", canary_replicas=3), "rollout.canary_replicas"),
    (RolloutRequest(strategy="canary", steps=(50.0, 10.0, 100.0)), "rollout.steps"),
    (RolloutRequest(strategy="canary", steps=(10.0, 50.0)), "rollout.steps"),
    (RolloutRequest(strategy="canary", steps=(0.0, 100.0)), "rollout.steps"),
    (RolloutRequest(strategy="canary", steps=(float("nan"), 100.0)), "rollout.steps"),
    (RolloutRequest(step_s=-1.0), "rollout.step_s"),
    (RolloutRequest(bake_s=float("inf")), "rollout.bake_s"),
    (RolloutRequest(keep_old_s=1e9), "rollout.keep_old_s"),
    (RolloutRequest(max_error_rate=1.5), "rollout.max_error_rate"),
    (RolloutRequest(max_latency_ratio=0.5), "rollout.max_latency_ratio"),
    (RolloutRequest(min_messages=0), "rollout.min_messages"),
    (RolloutRequest(compare="fuzzy"), "rollout.compare"),
])
def test_each_bad_field_is_named(request_, field):
    with pytest.raises(InvalidArgument) as refused:
        plan(request_, DEFAULTS, replicas=2)
    assert refused.value.message.startswith(field + ":"), refused.value.message


def test_the_config_table_sets_the_defaults():
    config = config_from_table({"rollout": {"canary_steps": [25, 100], "step_s": 2, "max_error_rate": 0.01,
                                            "bake_s": 0}})
    assert config.rollout.canary_steps == (25.0, 100.0) and config.rollout.step_s == 2.0
    assert config.rollout.thresholds.max_error_rate == 0.01 and config.rollout.bake_s == 0.0


@pytest.mark.parametrize("table, field", [
    ({"canary_steps": [50, 10]}, "rollout.canary_steps"),
    ({"split_steps": "all"}, "rollout.split_steps"),
    ({"max_error_rate": 2}, "rollout.max_error_rate"),
    ({"min_messages": 0}, "rollout.min_messages"),
    ({"step_s": -1}, "rollout.step_s"),
    ({"surprise": 1}, "rollout.surprise"),
])
def test_a_bad_config_value_names_its_field(table, field):
    with pytest.raises(ConfigError) as refused:
        config_from_table({"rollout": table})
    assert field in str(refused.value), str(refused.value)

"""Restart policy (supervisor/restart.py): backoff, jitter, breaker, settings.

Time is a plain float passed to each call (a fake monotonic clock), and the
rng is seeded or stubbed, so every test is deterministic and instant.
"""

from __future__ import annotations

import dataclasses
import random

import pytest

from caxton.supervisor.restart import (
    BreakerState,
    Decision,
    RestartPolicy,
    RestartSettings,
    Verdict,
    read_settings,
    settings_from_table,
)
from caxton.supervisor.settings import Table

NO_JITTER = RestartSettings(jitter=0.0)


class EdgeRng(random.Random):
    """Always draws the chosen end of the jitter range."""

    def __init__(self, high: bool) -> None:
        super().__init__(0)
        self.high = high

    def uniform(self, a: float, b: float) -> float:
        return b if self.high else a


def fail_times(policy: RestartPolicy, times: list[float]) -> list[Verdict]:
    return [policy.on_failure(t, f"crash at {t}") for t in times]


# ------------------------------------------------------------ backoff


def test_delays_double_from_10ms_up_to_the_cap():
    settings = RestartSettings(jitter=0.0, max_delay_s=1.0, max_failures=100, window_s=1000.0)
    policy = RestartPolicy(settings)
    verdicts = fail_times(policy, [float(t) for t in range(10)])
    assert [v.decision for v in verdicts] == [Decision.RESTART] * 10
    assert [v.delay_s for v in verdicts] == pytest.approx(
        [0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.0, 1.0, 1.0]
    )
    assert policy.attempt == 10


def test_first_verdict_reports_attempt_window_and_delay():
    verdict = RestartPolicy(NO_JITTER).on_failure(5.0, "exit code 1")
    assert verdict == Verdict(Decision.RESTART, 0.01, 1, verdict.reason)
    assert "restart 1" in verdict.reason and "60s window" in verdict.reason and "0.01s" in verdict.reason


def test_a_very_long_crash_loop_stays_at_the_cap():
    # factor**step overflows a float long before the loop ends.
    settings = RestartSettings(jitter=0.0, factor=10.0, max_failures=10_000, window_s=1.0)
    policy = RestartPolicy(settings)
    verdicts = fail_times(policy, [float(t) for t in range(400)])
    assert verdicts[-1].delay_s == settings.max_delay_s
    assert policy.attempt == 400


def test_zero_initial_delay_restarts_immediately_forever():
    settings = RestartSettings(initial_delay_s=0.0, factor=10.0, max_failures=10_000, window_s=1.0)
    verdicts = fail_times(RestartPolicy(settings), [float(t) for t in range(400)])
    assert {v.delay_s for v in verdicts} == {0.0}


def test_jitter_stays_within_bounds_over_many_draws():
    # factor 1 keeps the base delay at 1 s, far below the cap, so every
    # draw shows the raw jitter.
    settings = RestartSettings(initial_delay_s=1.0, factor=1.0, jitter=0.2, max_failures=100_000, window_s=1.0)
    policy = RestartPolicy(settings, rng=random.Random(1234))
    delays = [v.delay_s for v in fail_times(policy, [float(t) for t in range(5000)])]
    assert all(0.8 <= d <= 1.2 for d in delays)
    # The seeded draws actually spread over the range, not a constant.
    assert min(delays) < 0.81 and max(delays) > 1.19


@pytest.mark.parametrize("high, expected", [(False, 0.008), (True, 0.012)])
def test_jitter_is_multiplicative_at_both_ends(high, expected):
    verdict = RestartPolicy(RestartSettings(jitter=0.2), rng=EdgeRng(high)).on_failure(0.0, "crash")
    assert verdict.delay_s == pytest.approx(expected)


def test_jitter_never_exceeds_max_delay():
    settings = RestartSettings(initial_delay_s=30.0, max_delay_s=30.0, jitter=0.5)
    verdict = RestartPolicy(settings, rng=EdgeRng(high=True)).on_failure(0.0, "crash")
    assert verdict.delay_s == 30.0


def test_a_healthy_run_of_reset_after_s_resets_the_backoff():
    policy = RestartPolicy(RestartSettings(jitter=0.0, reset_after_s=30.0))
    fail_times(policy, [0.0, 1.0, 2.0])
    assert policy.attempt == 3
    policy.on_start(3.0)
    verdict = policy.on_failure(33.0, "crash")  # exactly reset_after_s of health
    assert verdict.decision is Decision.RESTART
    assert verdict.delay_s == pytest.approx(0.01)
    assert policy.attempt == 1


def test_a_shorter_run_does_not_reset_the_backoff():
    policy = RestartPolicy(RestartSettings(jitter=0.0, reset_after_s=30.0))
    fail_times(policy, [0.0, 1.0, 2.0])
    policy.on_start(3.0)
    verdict = policy.on_failure(32.9, "crash")
    assert verdict.delay_s == pytest.approx(0.08)
    assert policy.attempt == 4


def test_time_down_does_not_count_as_healthy():
    # A failure long after the previous one, with no on_start in between
    # (e.g. the worker never came up), is not a healthy run.
    policy = RestartPolicy(RestartSettings(jitter=0.0, reset_after_s=30.0))
    policy.on_start(0.0)
    policy.on_failure(1.0, "crash")
    verdict = policy.on_failure(100.0, "start timeout")
    assert verdict.delay_s == pytest.approx(0.02)


def test_a_healthy_run_resets_backoff_but_not_the_breaker_window():
    settings = RestartSettings(jitter=0.0, reset_after_s=1.0, max_failures=3, window_s=60.0, auto_recover=False)
    policy = RestartPolicy(settings)
    verdicts = []
    for t in [0.0, 10.0, 20.0, 30.0]:
        policy.on_start(t - 5.0)  # 5 s healthy before each crash
        verdicts.append(policy.on_failure(t, "crash"))
    assert [v.delay_s for v in verdicts[:3]] == pytest.approx([0.01] * 3)
    assert verdicts[-1].decision is Decision.GIVE_UP


# ------------------------------------------------------------ breaker


def test_breaker_opens_on_the_failure_past_the_limit_within_the_window():
    policy = RestartPolicy(RestartSettings(jitter=0.0, max_failures=5, window_s=60.0, auto_recover=False))
    verdicts = fail_times(policy, [0.0, 10.0, 20.0, 30.0, 40.0, 59.0])
    assert [v.decision for v in verdicts[:5]] == [Decision.RESTART] * 5
    assert [v.failures_in_window for v in verdicts] == [1, 2, 3, 4, 5, 6]
    give_up = verdicts[-1]
    assert give_up.decision is Decision.GIVE_UP
    assert give_up.delay_s == 0.0
    assert give_up.reason == "6 failures within 60s (limit 5): circuit open"


def test_failures_spread_wider_than_the_window_never_open_it():
    policy = RestartPolicy(RestartSettings(jitter=0.0, max_failures=5, window_s=60.0))
    # Six per window would trip it; these are 12 s apart, so at most 5 are
    # within any 60 s (a failure exactly 60 s old has left the window).
    verdicts = fail_times(policy, [12.0 * i for i in range(50)])
    assert all(v.decision is Decision.RESTART for v in verdicts)
    assert max(v.failures_in_window for v in verdicts) == 5


def test_give_up_is_sticky_until_reset():
    """With auto_recover off, as before the breaker healed by itself."""
    policy = RestartPolicy(RestartSettings(jitter=0.0, max_failures=2, window_s=10.0, auto_recover=False))
    verdicts = fail_times(policy, [0.0, 1.0, 2.0])
    assert verdicts[-1].decision is Decision.GIVE_UP
    # Even long after the window has emptied, it stays given up.
    later = policy.on_failure(1000.0, "crash")
    assert later.decision is Decision.GIVE_UP
    assert later.failures_in_window == 1
    assert "waiting for operator reset" in later.reason
    assert policy.on_failure(1001.0, "crash").decision is Decision.GIVE_UP


def test_reset_closes_the_breaker_and_restarts_backoff_at_the_first_step():
    policy = RestartPolicy(RestartSettings(jitter=0.0, max_failures=2, window_s=60.0, auto_recover=False))
    fail_times(policy, [0.0, 1.0, 2.0])
    before = policy.recent_failures
    policy.reset()
    assert policy.attempt == 0
    # History stays visible for diagnosis ...
    assert policy.recent_failures == before
    # ... but no longer counts: the next failure, well within the old
    # window, restarts at the first step instead of reopening the breaker.
    verdict = policy.on_failure(3.0, "crash again")
    assert verdict.decision is Decision.RESTART
    assert verdict.delay_s == pytest.approx(0.01)
    assert verdict.failures_in_window == 1
    # The breaker works again after a reset.
    verdicts = fail_times(policy, [4.0, 5.0])
    assert [v.decision for v in verdicts] == [Decision.RESTART, Decision.GIVE_UP]


def test_reset_forgets_a_healthy_run_in_progress():
    policy = RestartPolicy(RestartSettings(jitter=0.0, reset_after_s=1.0))
    policy.on_start(0.0)
    policy.reset()
    fail_times(policy, [10.0])
    assert policy.attempt == 1


# ------------------------------------------------------------ recent_failures


def test_recent_failures_are_bounded_and_ordered_newest_last():
    policy = RestartPolicy(RestartSettings(jitter=0.0, max_failures=3, window_s=1000.0))
    fail_times(policy, [float(t) for t in range(20)])
    assert policy.recent_failures == [(t, f"crash at {t}") for t in [16.0, 17.0, 18.0, 19.0]]


def test_recent_failures_only_hold_the_window():
    policy = RestartPolicy(RestartSettings(jitter=0.0, max_failures=5, window_s=10.0))
    fail_times(policy, [0.0, 5.0, 12.0])
    assert policy.recent_failures == [(5.0, "crash at 5.0"), (12.0, "crash at 12.0")]


def test_time_going_backwards_is_an_error():
    policy = RestartPolicy(RestartSettings())
    policy.on_failure(10.0, "crash")
    with pytest.raises(ValueError, match="before the previous failure"):
        policy.on_failure(9.0, "crash")


# ------------------------------------------------------------ settings


def test_default_settings_are_valid():
    RestartSettings().check()


@pytest.mark.parametrize(
    "field, value",
    [
        ("initial_delay_s", -0.001),
        ("initial_delay_s", float("nan")),
        ("initial_delay_s", float("inf")),
        ("factor", 0.5),
        ("factor", float("nan")),
        ("max_delay_s", -1.0),
        ("jitter", -0.1),
        ("jitter", 1.0),
        ("reset_after_s", 0.0),
        ("max_failures", 0),
        ("max_failures", 2.5),
        ("window_s", 0.0),
        ("window_s", -60.0),
    ],
)
def test_check_rejects_each_bad_field_by_name(field, value):
    settings = RestartSettings(**{field: value})
    with pytest.raises(ValueError, match=f"^{field}: "):
        settings.check()
    with pytest.raises(ValueError, match=f"^{field}: "):
        RestartPolicy(settings)


def test_settings_from_table_builds_over_the_base():
    base = RestartSettings(max_delay_s=5.0)
    settings = settings_from_table({"initial_delay_s": 0.05, "max_failures": 3, "window_s": 120}, base)
    assert settings == RestartSettings(initial_delay_s=0.05, max_delay_s=5.0, max_failures=3, window_s=120.0)
    assert isinstance(settings.window_s, float)
    assert settings_from_table({}) == RestartSettings()


def test_settings_from_table_rejects_unknown_keys():
    with pytest.raises(ValueError, match="^max_failure, reset_s: unknown settings$"):
        settings_from_table({"max_failure": 3, "reset_s": 1, "jitter": 0.1})


@pytest.mark.parametrize(
    "field, value",
    [
        ("max_failures", 2.0),
        ("max_failures", True),
        ("window_s", "60s"),
        ("jitter", False),
        ("factor", 0.5),
        ("window_s", 0),
    ],
)
def test_settings_from_table_rejects_bad_values_by_name(field, value):
    with pytest.raises(ValueError, match=f"^{field}: "):
        settings_from_table({field: value})


def test_settings_from_table_reads_every_field_by_its_type():
    # Fields are read by type, so a field added to RestartSettings is
    # configurable without touching settings_from_table.
    custom = RestartSettings(
        initial_delay_s=0.5, factor=3.0, max_delay_s=9.0, jitter=0.1, reset_after_s=4.0, max_failures=2, window_s=7.0
    )
    table = {f.name: getattr(custom, f.name) for f in dataclasses.fields(RestartSettings)}
    assert settings_from_table(table) == custom


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_settings_from_table_rejects_nan_and_infinity(value):
    with pytest.raises(ValueError, match="^max_delay_s: expected a finite number"):
        settings_from_table({"max_delay_s": value})


def test_read_settings_names_fields_by_their_dotted_path():
    with pytest.raises(ValueError, match=r"^restart\.jitter: expected 0 <= jitter < 1, got 1\.0$"):
        read_settings(Table({"jitter": 1.0}, "restart"))
    with pytest.raises(ValueError, match=r"^restart\.max_failures: expected an integer, got 2\.5$"):
        read_settings(Table({"max_failures": 2.5}, "restart"))


# ------------------------------------------------------------ a breaker that heals

HEALING = RestartSettings(jitter=0.0, max_failures=1, window_s=60.0, reset_after_s=100.0,
                          breaker_cooldown_s=30.0, breaker_cooldown_max_s=100.0)


def test_the_breaker_opens_with_a_cooldown_then_half_opens_and_closes():
    policy = RestartPolicy(HEALING)
    assert policy.on_failure(0.0, "crash").decision is Decision.RESTART
    opened = policy.on_failure(1.0, "crash")
    assert (opened.decision, opened.delay_s) == (Decision.OPEN, 30.0)
    assert opened.reason == "2 failures within 60s (limit 1): circuit open; next attempt in 30s"
    assert (policy.breaker, policy.opened_at) == (BreakerState.OPEN, 1.0)
    policy.half_open()
    assert policy.breaker is BreakerState.HALF_OPEN
    policy.probe_passed(31.5)
    assert policy.breaker is BreakerState.CLOSED
    # The old failures are forgiven: one more crash restarts, it does not reopen.
    assert policy.on_failure(32.0, "crash").decision is Decision.RESTART


def test_each_reopen_doubles_the_cooldown_up_to_the_cap():
    policy = RestartPolicy(HEALING)
    fail_times(policy, [0.0, 1.0])
    cooldowns = []
    now = 1.0
    for _ in range(4):
        policy.half_open()
        now += 1.0
        verdict = policy.probe_failed(now, "caxton_init returned 7")
        assert verdict.decision is Decision.OPEN
        assert verdict.reason.startswith("probe failed: caxton_init returned 7")
        cooldowns.append(verdict.delay_s)
    assert cooldowns == [60.0, 100.0, 100.0, 100.0]
    assert policy.open_reason == "probe failed: caxton_init returned 7"


def test_reopens_after_a_quick_relapse_keep_growing():
    policy = RestartPolicy(HEALING)
    fail_times(policy, [0.0, 1.0])  # open: 30 s
    policy.half_open()
    policy.probe_passed(31.0)
    # A relapse soon after closing: the cool-down keeps growing.
    fail_times(policy, [40.0])
    assert policy.on_failure(41.0, "crash").delay_s == 60.0


def test_a_long_healthy_run_brings_the_cooldown_back_to_its_first_step():
    policy = RestartPolicy(HEALING)
    fail_times(policy, [0.0, 1.0])  # open: 30 s
    policy.half_open()
    policy.probe_failed(31.0, "still broken")  # open: 60 s
    policy.half_open()
    policy.probe_passed(92.0)
    # Healthy for reset_after_s (100 s), then two crashes: back to 30 s.
    fail_times(policy, [200.0])
    assert policy.on_failure(201.0, "crash").delay_s == 30.0


def test_an_operator_reset_closes_an_open_breaker_and_resets_the_cooldown():
    policy = RestartPolicy(HEALING)
    fail_times(policy, [0.0, 1.0])
    policy.half_open()
    policy.probe_failed(31.0, "still broken")  # next would be 100 s
    policy.reset()
    assert policy.breaker is BreakerState.CLOSED
    fail_times(policy, [40.0])
    assert policy.on_failure(41.0, "crash").delay_s == 30.0


def test_probe_steps_out_of_order_are_errors():
    policy = RestartPolicy(HEALING)
    with pytest.raises(ValueError, match="only an open breaker can half-open"):
        policy.half_open()
    with pytest.raises(ValueError, match="no probe is running"):
        policy.probe_passed(1.0)
    fail_times(policy, [0.0, 1.0])
    with pytest.raises(ValueError, match="no probe is running"):
        policy.probe_failed(2.0, "x")


def test_a_failure_while_open_changes_nothing():
    policy = RestartPolicy(HEALING)
    fail_times(policy, [0.0, 1.0])
    straggler = policy.on_failure(2.0, "late exit")
    assert straggler.decision is Decision.GIVE_UP
    assert "waiting for the probe" in straggler.reason
    assert (policy.breaker, policy.opened_at) == (BreakerState.OPEN, 1.0)


@pytest.mark.parametrize("field, value", [("breaker_cooldown_s", 0.0), ("breaker_cooldown_max_s", 1.0),
                                          ("auto_recover", 1)])
def test_check_rejects_bad_breaker_settings(field, value):
    with pytest.raises(ValueError, match=f"^{field}: "):
        dataclasses.replace(RestartSettings(), **{field: value}).check()

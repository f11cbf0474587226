"""The rollout analysis: samples from the metrics' counts, and the verdicts."""

from __future__ import annotations

import bisect
import math

import grpc
import pytest

from caxton.supervisor.analysis import (
    COMPARE_MODES,
    ERROR_RATE,
    LATENCY,
    SHADOW_MISMATCH,
    Result,
    Sample,
    Thresholds,
    agree,
    check_thresholds,
    judge,
    judge_shadow,
)
from caxton.supervisor.metrics import BUCKETS, Series

OK, INTERNAL = grpc.StatusCode.OK, grpc.StatusCode.INTERNAL
DEFAULTS = Thresholds()
SLOTS = len(BUCKETS) + 1


def sample(ok: int = 0, *, latency: float = 0.001, **outcomes: int) -> Sample:
    """`ok` replies and the other outcomes, every message taking `latency` s."""
    counts = {"ok": ok, **outcomes}
    buckets = [0] * SLOTS
    buckets[bisect.bisect_left(BUCKETS, latency)] = sum(counts.values())
    return Sample(counts, tuple(buckets))


def in_bucket(index: int, count: int) -> Sample:
    buckets = [0] * SLOTS
    buckets[index] = count
    return Sample({"ok": count}, tuple(buckets))


# ------------------------------------------------------------------ Sample


def test_between_takes_the_difference_of_two_series_counts():
    series = Series("a", 2)
    series.record(OK, True, 0.003)
    series.record(INTERNAL, False, 0.02)
    earlier = series.counts()
    for _ in range(3):
        series.record(OK, True, 0.0002)
    series.record(grpc.StatusCode.UNAVAILABLE, False, 0.2)
    window = Sample.between(earlier, series.counts())
    assert dict(window.outcomes) == {"ok": 3, "unavailable": 1}  # 'internal' did not move: left out
    assert window.buckets[bisect.bisect_left(BUCKETS, 0.0002)] == 3
    assert window.buckets[bisect.bisect_left(BUCKETS, 0.2)] == 1
    assert sum(window.buckets) == 4
    assert (window.total, window.errors) == (4, 1)


def test_between_from_zero_is_the_later_counts():
    series = Series("a", 1)
    series.record(OK, True, 0.001)
    series.record(OK, False, 0.001)
    window = Sample.between(None, series.counts())
    assert dict(window.outcomes) == {"ok": 1, "no_reply": 1}
    assert sum(window.buckets) == 2


def test_between_treats_a_count_that_went_down_as_a_reset():
    earlier = ({"ok": 50, "internal": 4}, [0] * 5 + [54] + [0] * (SLOTS - 6), 0.2)
    later = ({"ok": 7}, [0] * 5 + [7] + [0] * (SLOTS - 6), 0.03)
    window = Sample.between(earlier, later)
    assert dict(window.outcomes) == {"ok": 7}
    assert window.buckets[5] == 7


def test_a_sample_is_a_frozen_copy():
    outcomes = {"ok": 2}
    buckets = [2] + [0] * (SLOTS - 1)
    window = Sample(outcomes, tuple(buckets))
    outcomes["ok"] = 100
    assert window.total == 2
    with pytest.raises(TypeError):
        window.outcomes["ok"] = 5  # type: ignore[index]


def test_a_sample_refuses_the_wrong_buckets_and_negative_counts():
    with pytest.raises(ValueError, match=f"{SLOTS} latency buckets"):
        Sample({}, (0,) * len(BUCKETS))
    with pytest.raises(ValueError, match="negative"):
        Sample({"ok": -1}, (0,) * SLOTS)
    with pytest.raises(ValueError, match="negative"):
        Sample({}, (-1,) + (0,) * (SLOTS - 1))


def test_empty_sample():
    empty = Sample.empty()
    assert (empty.total, empty.errors, empty.error_rate) == (0, 0, 0.0)
    assert len(empty.buckets) == SLOTS
    assert empty.quantile(0.99) is None
    assert empty + empty == empty


def test_samples_add_up():
    a = sample(10, internal=2, latency=0.001)
    b = sample(5, no_reply=3, internal=1, latency=0.2)
    both = a + b
    assert dict(both.outcomes) == {"ok": 15, "internal": 3, "no_reply": 3}
    assert sum(both.buckets) == 21
    assert both.buckets[bisect.bisect_left(BUCKETS, 0.2)] == 9
    with pytest.raises(TypeError):
        a + 1  # type: ignore[operator]


def test_errors_are_everything_but_ok_and_no_reply():
    window = sample(6, no_reply=2, internal=1, deadline_exceeded=1)
    assert (window.total, window.errors) == (10, 2)
    assert window.error_rate == pytest.approx(0.2)
    assert window.error_kinds() == "deadline_exceeded 1, internal 1"


def test_quantile_interpolates_inside_the_bucket():
    # 100 messages in (0.01, 0.025]: the median is halfway.
    window = in_bucket(BUCKETS.index(0.025), 100)
    assert window.quantile(0.5) == pytest.approx(0.0175)
    assert window.quantile(0.99) == pytest.approx(0.01 + 0.015 * 0.99)
    assert window.quantile(1.0) == pytest.approx(0.025)


def test_quantile_of_the_first_bucket_starts_at_zero():
    window = in_bucket(0, 10)
    assert window.quantile(0.5) == pytest.approx(BUCKETS[0] / 2)


def test_quantile_across_buckets_like_prometheus():
    # 50 in (0.0025, 0.005], none in (0.005, 0.01], 50 in (0.01, 0.025]
    window = in_bucket(BUCKETS.index(0.005), 50) + in_bucket(BUCKETS.index(0.025), 50)
    assert window.quantile(0.5) == pytest.approx(0.005)  # the top of the lower half
    assert window.quantile(0.99) == pytest.approx(0.01 + 0.015 * 49 / 50)
    assert window.quantile(0.0) == pytest.approx(0.0025)  # the bottom of the first occupied bucket


def test_a_quantile_in_inf_is_the_highest_finite_bound():
    everything = in_bucket(SLOTS - 1, 30)
    assert everything.quantile(0.5) == BUCKETS[-1]
    assert everything.quantile(0.99) == BUCKETS[-1]
    mostly_fast = in_bucket(0, 98) + in_bucket(SLOTS - 1, 2)
    assert mostly_fast.quantile(0.99) == BUCKETS[-1]
    assert mostly_fast.quantile(0.5) < BUCKETS[0]


@pytest.mark.parametrize("q", [-0.1, 1.01, math.nan])
def test_quantile_out_of_range(q):
    with pytest.raises(ValueError, match="between 0 and 1"):
        in_bucket(0, 1).quantile(q)


# ------------------------------------------------------------------ judge


def test_too_few_messages_is_inconclusive_and_says_what_it_waits_for():
    verdict = judge(sample(100), sample(12), DEFAULTS)
    assert verdict.result is Result.INCONCLUSIVE
    assert "12 of 20 messages" in verdict.reason
    assert verdict.cause == ""


def test_nothing_yet_is_inconclusive():
    verdict = judge(Sample.empty(), Sample.empty(), DEFAULTS)
    assert verdict.result is Result.INCONCLUSIVE
    assert "0 of 20 messages" in verdict.reason


def test_errors_fail_as_soon_as_the_limit_is_certain():
    # 5% of the 20-message minimum is 1 error: a second one cannot be made good.
    one = judge(sample(100), sample(2, internal=1), DEFAULTS)
    assert one.result is Result.INCONCLUSIVE
    two = judge(sample(100), sample(1, internal=2), DEFAULTS)
    assert two.result is Result.FAIL and two.cause == ERROR_RATE
    assert two.reason.startswith("error rate 66.7% (2 of 3) over the 5.0% limit")
    assert "internal 2" in two.reason and "first 20 messages" in two.reason


def test_error_rate_over_the_limit_fails():
    verdict = judge(sample(100), sample(44, internal=5, unavailable=1), DEFAULTS)
    assert verdict.result is Result.FAIL and verdict.cause == ERROR_RATE
    assert verdict.reason.startswith("error rate 12.0% (6 of 50) over the 5.0% limit")
    assert "internal 5, unavailable 1" in verdict.reason


def test_error_rate_at_the_limit_passes():
    assert judge(sample(100), sample(95, internal=5), DEFAULTS).result is Result.PASS  # 5.0% of 100
    assert judge(sample(100), sample(94, internal=6), DEFAULTS).result is Result.FAIL


def test_no_reply_is_not_an_error():
    verdict = judge(sample(100), sample(0, no_reply=100), DEFAULTS)
    assert verdict.result is Result.PASS
    assert "error rate 0.0% (0 of 100) within the 5.0% limit" in verdict.reason


def test_a_zero_error_limit_fails_the_first_error():
    strict = Thresholds(max_error_rate=0.0)
    assert judge(sample(100), sample(1, internal=1), strict).result is Result.FAIL
    assert judge(sample(100), sample(100), strict).result is Result.PASS


def test_good_candidate_passes_with_the_numbers():
    verdict = judge(sample(100, latency=0.008), sample(100, latency=0.008), DEFAULTS)
    assert verdict.result is Result.PASS and verdict.cause == ""
    assert "error rate 0.0% (0 of 100)" in verdict.reason
    assert "p99 latency" in verdict.reason and "within the 3.0x limit" in verdict.reason


def test_slow_candidate_fails_on_latency():
    verdict = judge(sample(100, latency=0.008), sample(100, latency=0.08), DEFAULTS)
    assert verdict.result is Result.FAIL and verdict.cause == LATENCY
    # p99s: 0.005 + 0.005 * 0.99 and 0.05 + 0.05 * 0.99, a ratio of 10
    assert "p99 latency 99.5 ms is 10.0x the stable version's 10.0 ms, over the 3.0x limit" in verdict.reason


def test_latency_ratio_at_the_limit_passes():
    stable = in_bucket(BUCKETS.index(0.01), 100)  # p99 = 9.95 ms
    at_limit = judge(stable, stable, Thresholds(max_latency_ratio=1.0))
    assert at_limit.result is Result.PASS
    slower = in_bucket(BUCKETS.index(0.025), 100)  # p99 = 24.85 ms: 2.497x
    assert judge(stable, slower, Thresholds(max_latency_ratio=2.49)).result is Result.FAIL
    assert judge(stable, slower, Thresholds(max_latency_ratio=2.5)).result is Result.PASS


def test_latency_is_not_compared_while_the_stable_version_has_under_100_messages():
    # The candidate is 5000x slower, but a p99 of 99 stable messages would be their maximum.
    verdict = judge(sample(99, latency=0.001), sample(100, latency=5.0), DEFAULTS)
    assert verdict.result is Result.PASS and verdict.cause == ""
    assert verdict.reason == ("error rate 0.0% (0 of 100) within the 5.0% limit; "
                              "latency not compared: the stable version has 99 of 100 timed messages")
    # Errors are still judged on their own.
    failing = judge(sample(99), sample(90, internal=10), DEFAULTS)
    assert failing.result is Result.FAIL and failing.cause == ERROR_RATE


def test_a_candidate_under_100_messages_waits_for_the_latency_comparison():
    # Past min_messages (20) and without an error, but not yet enough for a p99.
    good_so_far = judge(sample(100), sample(20), DEFAULTS)
    assert good_so_far.result is Result.INCONCLUSIVE and good_so_far.cause == ""
    assert good_so_far.reason == "waiting for 20 of 100 messages to compare p99 latency; error rate 0.0%"
    slow_so_far = judge(sample(100, latency=0.001), sample(99, latency=5.0), DEFAULTS)
    assert slow_so_far.result is Result.INCONCLUSIVE and slow_so_far.cause == ""
    assert slow_so_far.reason == "waiting for 99 of 100 messages to compare p99 latency; error rate 0.0%"
    # Errors do not wait for the latency comparison.
    failing = judge(sample(100), sample(45, internal=5), DEFAULTS)
    assert failing.result is Result.FAIL and failing.cause == ERROR_RATE


def test_latency_is_judged_once_both_have_100_messages():
    verdict = judge(sample(100, latency=0.001), sample(100, latency=5.0), DEFAULTS)
    assert verdict.result is Result.FAIL and verdict.cause == LATENCY
    assert "p99 latency 4975.0 ms is 995.0x the stable version's 1.0 ms" in verdict.reason


def test_one_cold_start_in_100_does_not_decide_the_p99():
    stable = sample(100, latency=0.008)
    one_cold_start = sample(99, latency=0.008) + in_bucket(SLOTS - 1, 1)
    assert judge(stable, one_cold_start, DEFAULTS).result is Result.PASS
    # In 99 messages, that one would be the p99: the verdict waits instead of failing.
    too_few = sample(98, latency=0.008) + in_bucket(SLOTS - 1, 1)
    assert judge(stable, too_few, DEFAULTS).result is Result.INCONCLUSIVE
    two_slow = sample(98, latency=0.008) + in_bucket(SLOTS - 1, 2)
    assert judge(stable, two_slow, DEFAULTS).cause == LATENCY


def test_min_messages_above_100_raises_the_latency_bar():
    t = Thresholds(min_messages=150)
    stable_short = judge(sample(149, latency=0.001), sample(150, latency=5.0), t)
    assert stable_short.result is Result.PASS
    assert "latency not compared: the stable version has 149 of 150 timed messages" in stable_short.reason
    candidate_short = judge(sample(150, latency=0.001), sample(149, latency=5.0), t)
    assert candidate_short.result is Result.INCONCLUSIVE
    assert "149 of 150 messages" in candidate_short.reason
    both = judge(sample(150, latency=0.001), sample(150, latency=5.0), t)
    assert both.result is Result.FAIL and both.cause == LATENCY


def test_min_messages_below_100_does_not_lower_the_latency_bar():
    t = Thresholds(min_messages=5)
    assert judge(sample(100, latency=0.001), sample(99, latency=5.0), t).result is Result.INCONCLUSIVE
    stable_short = judge(sample(99, latency=0.001), sample(100, latency=5.0), t)
    assert stable_short.result is Result.PASS
    assert "the stable version has 99 of 100 timed messages" in stable_short.reason


def test_latency_floor_hides_sub_millisecond_noise():
    stable, candidate = sample(100, latency=0.0002), sample(100, latency=0.004)  # 20x, but both tiny
    floored = judge(stable, candidate, DEFAULTS)
    assert floored.result is Result.PASS
    assert "count as 5.0 ms" in floored.reason
    unfloored = judge(stable, candidate, Thresholds(latency_floor_s=0.0))
    assert unfloored.result is Result.FAIL and unfloored.cause == LATENCY


def test_candidate_all_in_inf_fails_on_latency():
    verdict = judge(sample(100, latency=0.01), in_bucket(SLOTS - 1, 100), DEFAULTS)
    assert verdict.result is Result.FAIL and verdict.cause == LATENCY
    assert "10000.0 ms" in verdict.reason


def test_errors_are_judged_before_latency():
    # Both sides have enough messages for the (failing) latency comparison.
    verdict = judge(sample(100, latency=0.001), sample(90, internal=10, latency=5.0), DEFAULTS)
    assert verdict.cause == ERROR_RATE


def test_stable_errors_do_not_count_against_the_candidate():
    verdict = judge(sample(10, internal=90), sample(100), DEFAULTS)
    assert verdict.result is Result.PASS
    assert "p99 latency" in verdict.reason  # the stable side was counted: 100 messages, errors or not


# ------------------------------------------------------------------ shadow


def test_shadow_waits_for_the_minimum():
    verdict = judge_shadow(12, 0, DEFAULTS)
    assert verdict.result is Result.INCONCLUSIVE
    assert "12 of 20 compared replies" in verdict.reason


def test_shadow_fails_on_the_first_certain_mismatch():
    # 1% of the 20-reply minimum is 0.2: one mismatch is already too many.
    verdict = judge_shadow(3, 1, DEFAULTS)
    assert verdict.result is Result.FAIL and verdict.cause == SHADOW_MISMATCH
    assert verdict.reason.startswith("mismatch rate 25.0% (1 of 4 replies) over the 1.0% limit")


def test_shadow_passes_after_the_minimum():
    verdict = judge_shadow(20, 0, DEFAULTS)
    assert verdict.result is Result.PASS and verdict.cause == ""
    assert "0 of 20" in verdict.reason


def test_shadow_mismatch_at_the_limit_passes():
    loose = Thresholds(max_mismatch_rate=0.1)
    assert judge_shadow(18, 2, loose).result is Result.PASS
    assert judge_shadow(17, 3, loose).result is Result.FAIL
    assert judge_shadow(0, 2, loose).result is Result.INCONCLUSIVE  # 2 of a 20-reply minimum is 10%


def test_shadow_counts_cannot_be_negative():
    with pytest.raises(ValueError, match="negative"):
        judge_shadow(-1, 0, DEFAULTS)
    with pytest.raises(ValueError, match="negative"):
        judge_shadow(0, -1, DEFAULTS)


@pytest.mark.parametrize(
    "stable, candidate, exact, outcome",
    [
        ((OK, b"v1:x"), (OK, b"v1:x"), True, True),
        ((OK, b"v1:x"), (OK, b"v2:x"), False, True),
        ((OK, None), (OK, None), True, True),
        ((OK, b"v1:x"), (OK, None), False, False),
        ((OK, None), (OK, b""), False, False),
        ((OK, b"v1:x"), (INTERNAL, None), False, False),
        ((INTERNAL, None), (INTERNAL, None), True, True),
        ((INTERNAL, None), (grpc.StatusCode.UNAVAILABLE, None), False, False),
    ],
)
def test_agree(stable, candidate, exact, outcome):
    assert COMPARE_MODES == ("exact", "outcome")
    assert agree("exact", stable, candidate) is exact
    assert agree("outcome", stable, candidate) is outcome


def test_agree_refuses_an_unknown_mode():
    with pytest.raises(ValueError, match="'loose'.*exact, outcome"):
        agree("loose", (OK, None), (OK, None))


# ------------------------------------------------------------------ thresholds


def test_check_thresholds_returns_good_ones():
    assert check_thresholds(DEFAULTS) is DEFAULTS
    edges = Thresholds(max_error_rate=0.0, max_latency_ratio=1.0, min_messages=1, max_mismatch_rate=1.0,
                       latency_floor_s=0.0)
    assert check_thresholds(edges) is edges


@pytest.mark.parametrize(
    "field, value",
    [
        ("max_error_rate", -0.01),
        ("max_error_rate", 1.5),
        ("max_error_rate", math.nan),
        ("max_mismatch_rate", -1.0),
        ("max_mismatch_rate", 2.0),
        ("max_latency_ratio", 0.99),
        ("max_latency_ratio", math.nan),
        ("min_messages", 0),
        ("min_messages", 2.5),
        ("min_messages", True),
        ("latency_floor_s", -0.001),
        ("latency_floor_s", math.inf),
        ("latency_floor_s", "5ms"),
    ],
)
def test_check_thresholds_names_the_bad_field(field, value):
    with pytest.raises(ValueError, match=f"^{field} must"):
        check_thresholds(Thresholds(**{field: value}))


def test_latency_needs_timed_messages_not_restored_counts():
    # After a supervisor restart, outcome counts come back without their
    # latencies: 5000 restored outcomes and 3 timed messages are 3 samples.
    restored = Sample({"ok": 5003}, tuple([3] + [0] * 16))
    verdict = judge(restored, sample(100, latency=5.0), DEFAULTS)
    assert verdict.result is Result.PASS
    assert "3 of 100 timed messages" in verdict.reason

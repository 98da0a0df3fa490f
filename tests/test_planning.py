"""Planning a sweep (issue 25 item 4): the smoothed ETA on known sequences of unit times, and the estimate scaled
from measured rates, with known answers."""

from __future__ import annotations

import math

import pytest

from cadx.planning import EtaSmoother, TimeRange, duration_words, scaled_estimate


def test_equal_units_give_the_exact_time_left_with_no_spread():
    eta = EtaSmoother()
    assert eta.eta(10) is None  # nothing measured yet: no guess
    for _ in range(4):
        eta.observe(30.0, 1)
    left = eta.eta(6)
    assert (left.seconds, left.low, left.high) == pytest.approx((180.0, 180.0, 180.0))
    assert left.words() == "about 3 min 00 s"


def test_the_rate_is_an_exponentially_weighted_geometric_mean_of_the_unit_rates():
    eta = EtaSmoother(alpha=0.5)
    eta.observe(10.0, 1)
    eta.observe(40.0, 2)  # 20 s per unit of work
    # m = log 10 + 0.5 (log 20 - log 10) = log(10 * sqrt 2); var = 0.5 * 0.5 * (log 2)^2 -> sd = (log 2) / 2
    assert eta.rate == pytest.approx(10 * math.sqrt(2))
    left = eta.eta(1)
    sd = math.log(2) / 2
    assert left.low == pytest.approx(10 * math.sqrt(2) * math.exp(-1.645 * sd))
    assert left.high == pytest.approx(10 * math.sqrt(2) * math.exp(1.645 * sd))


def test_the_eta_does_not_swing_on_the_issue_s_sequence():
    """Ten units of a sweep on a shared 2-core machine: most take about a minute, one is slowed to 8 min by another
    user's job, two race through in 5 s. The old ETA (time so far x work left / work so far, restarted by stages)
    swung from hours to minutes; the smoothed one moves at most by the factor 3^alpha per unit."""
    units = [60, 62, 480, 58, 5, 5, 61, 59, 60, 63]
    total = len(units) + 10
    eta = EtaSmoother(alpha=0.25)
    shown = []
    for done, seconds in enumerate(units, start=1):
        eta.observe(seconds, 1)
        shown.append(eta.eta(total - done))
    per_unit = [s.seconds / (total - done) for done, s in enumerate(shown, start=1)]
    before = math.exp(math.log(60) + 0.25 * math.log(62 / 60))  # the smoothed cost after 60 s and 62 s
    assert per_unit[1] == pytest.approx(before)
    assert per_unit[2] / per_unit[1] == pytest.approx(3 ** 0.25)  # 480 s counts as 3x the rate, by weight 0.25
    assert max(per_unit) / min(per_unit) < 2
    assert all(s.low <= s.seconds <= s.high for s in shown)
    assert shown[2].high > 1.5 * shown[2].seconds  # after the outlier the range says so: wide
    last = shown[-1]
    assert last.low < 10 * 60 < last.high  # the ten units left take about ten minutes: inside the range


def test_units_restored_from_checkpoints_say_nothing_of_the_rate():
    eta = EtaSmoother()
    eta.observe(0.0, 5)  # a burst of restored units
    eta.observe(20.0, 0)
    assert eta.eta(3) is None and eta.n == 0
    eta.observe(20.0, 1)
    assert eta.eta(3).seconds == pytest.approx(60.0)


def test_alpha_must_be_a_weight():
    with pytest.raises(ValueError, match="alpha"):
        EtaSmoother(alpha=0.0)


def test_the_estimate_takes_each_part_s_median_rate_and_the_range_of_the_rates():
    # sweep: modelled 100 s, measured 2x, 3x, 4x the model on earlier runs; extract: 10 s at 1x (one run)
    estimate = scaled_estimate({"sweep": 100.0, "extract": 10.0, "statistics": 2.0},
                               {"sweep": [4.0, 2.0, 3.0], "extract": [1.0]}, spread=1.25)
    pooled_median = 2.5  # statistics has no rate of its own: the machine's rates pooled (1, 2, 3, 4)
    assert estimate.seconds == pytest.approx(300 + 10 + 2 * pooled_median)
    assert estimate.low == pytest.approx(200 + 8 + 2 * 1.0)  # one extract rate: at least 1.25x either side
    assert estimate.high == pytest.approx(400 + 12.5 + 2 * 4.0)
    with pytest.raises(ValueError, match="no measured ratio"):
        scaled_estimate({"sweep": 1.0}, {})


def test_durations_read_as_people_say_them():
    assert [duration_words(s) for s in (None, 42, 185, 7020)] == ["–", "42 s", "3 min 05 s", "1 h 57 min"]
    assert TimeRange(780, 600, 1320).words() == "about 13 min 00 s (10 min 00 s – 22 min 00 s)"

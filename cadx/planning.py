"""Planning a long run: how long it will take, as a range, before it starts and while it runs.

Two pure pieces, arrays of measured seconds in and a :class:`TimeRange` out (no database, no streamlit):

* :func:`scaled_estimate`: a run's modelled cost (seconds on the reference machine, per part of the work) times
  what this machine measured per unit of modelled cost (``ratios``: earlier runs' measured / modelled seconds, or
  a short calibration); the range comes from the spread of those ratios.
* :class:`EtaSmoother`: the time left while a job runs, from the seconds each finished unit of work took. The rate
  (seconds per unit of work) is an exponentially weighted mean of the *logarithm* of each unit's rate, so one slow
  or fast unit moves the estimate by a bounded factor (``alpha``) instead of swinging it (the old ETA divided the
  time so far by the work so far and jumped as stages of another speed began), and its exponentially weighted
  spread gives the range.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = ["CALIBRATION_SPREAD", "EtaSmoother", "TimeRange", "duration_words", "scaled_estimate"]

CALIBRATION_SPREAD = 1.6
"""The range's factor either side when a part's rate rests on one measurement (a short calibration, or one earlier
run): a 2-core machine shared with others varies by about this much from one minute to the next."""

_Z = 1.645  # the range of an ETA: the 90 % interval of the smoothed log rate
_CLIP = 3.0  # one unit counts as at most 3x slower or faster than the smoothed rate (a unit slowed by another
# user's job says little of the next); a lasting change still comes through, by 3^alpha per unit


@dataclass(frozen=True)
class TimeRange:
    """A duration in seconds: the most likely value and a range ``low <= seconds <= high``."""

    seconds: float
    low: float
    high: float

    def words(self) -> str:
        """``"about 12 min 30 s (8 min 10 s – 19 min 00 s)"``; one value when the range is that value."""
        if duration_words(self.low) == duration_words(self.high):
            return f"about {duration_words(self.seconds)}"
        return f"about {duration_words(self.seconds)} ({duration_words(self.low)} – {duration_words(self.high)})"

    def to_dict(self) -> dict[str, float]:
        return {"seconds": self.seconds, "low": self.low, "high": self.high}


def duration_words(seconds: float | None) -> str:
    """``"42 s"``, ``"3 min 05 s"``, ``"1 h 57 min"`` (``"–"`` for None)."""
    if seconds is None:
        return "–"
    whole = int(round(seconds))
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    return f"{whole // 3600} h {whole % 3600 // 60:02d} min"


def scaled_estimate(model_seconds: Mapping[str, float], ratios: Mapping[str, Sequence[float]], *,
                    spread: float = CALIBRATION_SPREAD) -> TimeRange:
    """The time of a run whose parts cost ``model_seconds[part]`` on the reference machine, on a machine that took
    ``ratios[part]`` (each a measured / modelled seconds of one earlier run or calibration) for such work.

    Each part takes the median of its ratios; its range is their smallest to largest, and at least a factor
    ``spread`` either side of the median (one measurement says nothing about the next minute's load). A part
    without any ratio takes those of all the other parts pooled (the machine's speed in general).

    Examples
    --------
    >>> r = scaled_estimate({"sweep": 100.0, "extract": 10.0}, {"sweep": [2.0, 3.0, 4.0], "extract": [1.0]},
    ...                     spread=1.25)
    >>> (r.seconds, r.low, r.high)
    (310.0, 208.0, 412.5)
    """
    pooled = sorted(r for values in ratios.values() for r in values if r > 0 and math.isfinite(r))
    if not pooled:
        raise ValueError("no measured ratio: give at least one earlier run or calibration")
    total = low = high = 0.0
    for part, cost in model_seconds.items():
        if cost <= 0:
            continue
        values = sorted(r for r in ratios.get(part, ()) if r > 0 and math.isfinite(r)) or pooled
        mid = _median(values)
        total += cost * mid
        low += cost * min(values[0], mid / spread)
        high += cost * max(values[-1], mid * spread)
    return TimeRange(total, low, high)


def _median(values: Sequence[float]) -> float:
    n = len(values)
    return values[n // 2] if n % 2 else (values[n // 2 - 1] + values[n // 2]) / 2


class EtaSmoother:
    """The time left of a job from the seconds its finished units took.

    ``observe(seconds, work)`` after each unit (``work`` in any unit of work, e.g. parts of the progress bar);
    ``eta(work_left)`` is the :class:`TimeRange` left: the work left times the smoothed rate, the range its 90 %
    interval. The smoothed rate is ``exp(m)`` where ``m`` is the exponentially weighted mean (weight ``alpha`` for
    the newest unit) of ``log(seconds / work)``, each unit's deviation from ``m`` clipped to ``± log 3``, and the
    range ``exp(m ± 1.645 s)`` with ``s`` the exponentially weighted SD of those (clipped) deviations.

    Examples
    --------
    >>> eta = EtaSmoother(alpha=0.5)
    >>> eta.observe(16.0, 1)
    >>> eta.observe(25.0, 1)
    >>> round(eta.eta(3).seconds, 6)  # geometric: 16 s, then 25 s per unit -> 20 s per unit
    60.0
    """

    def __init__(self, *, alpha: float = 0.25) -> None:
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {alpha!r}")
        self.alpha = alpha
        self._mean: float | None = None
        self._var = 0.0
        self.n = 0

    def observe(self, seconds: float, work: float) -> None:
        """One finished unit: ``work`` units of work took ``seconds``. Non-positive values are ignored (units
        restored from checkpoints take no time and say nothing of the rate)."""
        if seconds <= 0 or work <= 0 or not math.isfinite(seconds) or not math.isfinite(work):
            return
        x = math.log(seconds / work)
        self.n += 1
        if self._mean is None:
            self._mean = x
            return
        delta = min(max(x - self._mean, -math.log(_CLIP)), math.log(_CLIP))
        self._mean += self.alpha * delta
        self._var = (1.0 - self.alpha) * (self._var + self.alpha * delta * delta)

    @property
    def rate(self) -> float | None:
        """Seconds per unit of work (None before any unit)."""
        return None if self._mean is None else math.exp(self._mean)

    def eta(self, work_left: float) -> TimeRange | None:
        """The time left for ``work_left`` units of work (None before any unit was observed)."""
        if self._mean is None:
            return None
        left = max(float(work_left), 0.0)
        sd = math.sqrt(self._var)
        return TimeRange(left * math.exp(self._mean), left * math.exp(self._mean - _Z * sd),
                         left * math.exp(self._mean + _Z * sd))

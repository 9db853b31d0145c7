"""What a change that leaves the runs different does to their difference, measured.

A pair with an intervention that still differs is compared with two plain pairs (the pair
``find`` recorded and a second one made for this) on their curves: the largest parameter
difference after each step, from the step of the first divergence on. Two numbers describe a
curve on a log scale: its level (where it lies) and its rate (decades per step, a least-squares
fit). The plain pairs' own distance from each other on both is the spread that run-to-run
noise alone gives (a racy kernel's difference varies by orders of magnitude from pair to pair).
The change has an effect only where it moves the level or the rate further than that spread
allows; else there is no clear effect, and the numbers say why.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# Steps from the first differing one that a pair with an intervention runs: enough points to
# fit a rate. A short script simply gives fewer.
GROWTH_STEPS = 4
# Differences at or below this are taken as this (log scale: an exact zero is 45 decades down).
_TINY = 1e-45
# An effect lies beyond 3x the plain pairs' spread, and beyond these floors: run-to-run noise
# moves a difference by about a decade and its rate by a fraction of one between two pairs.
_MIN_LEVEL_DECADES = 1.0
_MIN_RATE_DECADES = 0.5
# A parameter difference this large means the weights themselves blew up (SGD with Adam's
# learning rate can diverge).
_BLOWN_UP = 1e3
# Without a second plain pair the spread is unknown: the floors are doubled.
_UNKNOWN_SPREAD_FACTOR = 2.0


@dataclass(frozen=True)
class Curve:
    """The largest parameter difference after each step, from the first differing step on."""

    steps: tuple[int, ...]
    values: tuple[float, ...]

    @classmethod
    def of(cls, rows: Sequence[Mapping[str, Any]], start: int) -> Curve:
        """A curve from growth rows (``max_param_diff`` per ``step``), from step ``start``."""
        kept = [r for r in rows if r["step"] >= start and r.get("max_param_diff") is not None]
        kept.sort(key=lambda r: r["step"])
        return cls(tuple(r["step"] for r in kept), tuple(float(r["max_param_diff"]) for r in kept))

    def logs(self) -> dict[int, float]:
        pairs = zip(self.steps, self.values, strict=True)
        return {s: float(np.log10(max(v, _TINY))) for s, v in pairs}

    def rate(self) -> float | None:
        """Decades per step of the nonzero values (a least-squares line through their logs),
        or None with fewer than two."""
        points = [(s, np.log10(v)) for s, v in zip(self.steps, self.values, strict=True) if v > 0]
        if len(points) < 2:
            return None
        steps, logs = np.array(points).T
        return float(np.polyfit(steps, logs, 1)[0])


@dataclass(frozen=True)
class Effect:
    """What a change does to the difference, against the plain pairs.

    Attributes:
        outcome: "amplifier" (it moves the level or the rate beyond the plain pairs' spread)
            or "no-effect" (no clear effect).
        decided_by: "level", "rate" or "level and rate" for an amplifier, else None.
        curve: the pair's parameter difference per step (``steps``, ``values``).
        baseline: the plain pairs' curves, the recorded pair's first.
        level: how many decades the change moves the curve (the median over shared steps of
            its log against the plain pairs' mean log; negative: smaller).
        level_spread: how far the plain pairs lie apart (median over their shared steps), or
            None without a second plain pair.
        level_threshold: how far the level must move to count.
        rate: the pair's growth in decades per step, or None (fewer than two nonzero values).
        baseline_rates: the plain pairs' rates.
        rate_change: the pair's rate minus the plain pairs' mean rate, or None.
        rate_spread: how far the plain pairs' rates lie apart, or None.
        rate_threshold: how far the rate must move to count.
    """

    outcome: str
    decided_by: str | None
    curve: dict
    baseline: list[dict]
    level: float | None
    level_spread: float | None
    level_threshold: float
    rate: float | None
    baseline_rates: list[float | None]
    rate_change: float | None
    rate_spread: float | None
    rate_threshold: float


def measure(
    changed: Sequence[Mapping[str, Any]], plain: Sequence[Sequence[Mapping[str, Any]]], start: int
) -> Effect:
    """The effect of a change whose pair still differs: its growth rows against those of the
    plain pairs (one or two), each from step ``start`` (the first differing step) on."""
    curve = Curve.of(changed, start)
    bases = [Curve.of(rows, start) for rows in plain if rows]
    base_logs = [b.logs() for b in bases]
    offsets = []
    for step, value in curve.logs().items():
        known = [logs[step] for logs in base_logs if step in logs]
        if known:
            offsets.append(value - float(np.mean(known)))
    level = _round(float(np.median(offsets))) if offsets else None
    level_spread = rate_spread = None
    if len(base_logs) == 2:
        shared = sorted(set(base_logs[0]) & set(base_logs[1]))
        gaps = [abs(base_logs[0][s] - base_logs[1][s]) for s in shared]
        level_spread = _round(float(np.median(gaps))) if gaps else None
    rates = [b.rate() for b in bases]
    known_rates = [r for r in rates if r is not None]
    rate = curve.rate()
    rate_change = None
    if rate is not None and known_rates:
        rate_change = _round(rate - float(np.mean(known_rates)))
    if len(known_rates) == 2:
        rate_spread = _round(abs(known_rates[0] - known_rates[1]))
    level_threshold = _threshold(_MIN_LEVEL_DECADES, level_spread)
    rate_threshold = _threshold(_MIN_RATE_DECADES, rate_spread)
    by_level = level is not None and abs(level) > level_threshold
    by_rate = rate_change is not None and abs(rate_change) > rate_threshold
    decided = " and ".join(n for n, moved in (("level", by_level), ("rate", by_rate)) if moved)
    return Effect(
        outcome="amplifier" if decided else "no-effect",
        decided_by=decided or None,
        curve=_shown(curve),
        baseline=[_shown(b) for b in bases],
        level=level,
        level_spread=level_spread,
        level_threshold=level_threshold,
        rate=None if rate is None else _round(rate),
        baseline_rates=[None if r is None else _round(r) for r in rates],
        rate_change=rate_change,
        rate_spread=rate_spread,
        rate_threshold=rate_threshold,
    )


def _round(value: float) -> float:
    """Rounded for the report, without a negative zero ("-0.00 decades/step")."""
    return round(value, 2) + 0.0


def _threshold(floor: float, spread: float | None) -> float:
    if spread is None:
        return floor * _UNKNOWN_SPREAD_FACTOR
    return _round(max(floor, 3 * spread))


def _shown(curve: Curve) -> dict:
    return {"steps": list(curve.steps), "values": list(curve.values)}


def adam_explanation(effect: Effect, first_divergence: str | None) -> str:
    """Why Adam -> SGD changes the difference, or does not, without removing it: the source
    still differs under SGD; Adam normalises each update, so a last-bit gradient difference
    becomes a parameter difference of the order of the learning rate."""
    still = f"still first differs at {first_divergence}" if first_divergence else "still differs"
    text = f"with SGD the pair {still}: the optimizer is not the cause"
    adam = np.mean([np.mean(b["values"]) for b in effect.baseline]) if effect.baseline else 0.0
    sgd = np.mean(effect.curve["values"]) if effect.curve["values"] else 0.0
    if effect.outcome != "amplifier":
        return f"{text}, and it changes the difference no more than the plain pairs vary"
    if effect.level is not None and effect.level < 0 and sgd < adam:
        steps = effect.curve["steps"]
        less = (
            f"with SGD the parameters stay bitwise equal over steps {steps[0]}-{steps[-1]}"
            if not any(effect.curve["values"])
            else f"the parameters differ {abs(effect.level):.1f} decades less with SGD"
        )
        return (
            f"{text}. Adam divides each update by the running scale of the gradient, so a "
            "last-bit difference in a gradient can move a parameter by up to about the "
            f"learning rate, where SGD moves it by the learning rate times the difference: {less}"
        )
    faster = effect.rate_change is not None and effect.rate_change > 0
    text += f"; the difference {'grows faster' if faster else 'is larger'} with SGD"
    largest = max(effect.curve["values"], default=0.0)
    if not largest < _BLOWN_UP:
        text += (
            f" (it reaches {largest:.2g}, so a weight grew at least half that large: SGD at "
            "this learning rate diverges)"
        )
    return text

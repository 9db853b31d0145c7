"""Inline SVG plots for the HTML report, computed in Python: no script, no external asset."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape
from typing import Any

# Pixel width of every plot: the HTML page's content width, so text keeps its size on screen.
WIDTH = 1040
_FONT = 'font-family="system-ui, sans-serif" font-size="12"'
_AXIS = "#555"
_GRID = "#e6e6e6"
_POINT = "#0072b2"
_FIRST = "#d55e00"
_ZERO = "#8a8a8a"
# Step labels closer together than this many pixels are skipped (the lines are still drawn).
_LABEL_GAP = 52
# Height of the lane under the log axis that holds zero and non-finite values.
_LANE = 26
# Least vertical room, in pixels, between two labelled decades.
_DECADE_LABEL_GAP = 24
# Height of the strip at the top of the curve plot that holds the step labels, clear of points.
_LABEL_STRIP = 20

# Series of the growth plot: (key in a growth row, legend text, colour); colour-blind safe.
GROWTH_SERIES = (
    ("max_grad_diff", "gradients", "#0072b2"),
    ("max_param_diff", "parameters", "#e69f00"),
    ("max_state_diff", "optimizer state", "#009e73"),
)


@dataclass(frozen=True)
class _Box:
    """The drawing area of a plot inside its SVG, in pixels."""

    left: float
    top: float
    right: float
    bottom: float


@dataclass(frozen=True)
class _LogScale:
    """A log10 axis from 10**low to 10**high, with a lane for zeros under it when ``lane``
    and ``headroom`` pixels left free above 10**high."""

    low: int
    high: int
    lane: bool
    headroom: float = 0

    def y(self, value: float, box: _Box) -> float:
        """Pixel row of a value; zero and non-finite values go to the lane (or the bottom)."""
        floor = box.bottom - (_LANE if self.lane else 0)
        if not _plottable(value):
            return box.bottom - _LANE / 2 if self.lane else floor
        share = (math.log10(value) - self.low) / (self.high - self.low)
        return floor - share * (floor - box.top - self.headroom)


@dataclass(frozen=True)
class _Linear:
    """A linear x axis from ``low`` to ``high``."""

    low: float
    high: float

    def x(self, value: float, box: _Box) -> float:
        span = self.high - self.low
        share = 0.5 if span <= 0 else (value - self.low) / span
        return box.left + share * (box.right - box.left)


def curve_plot(curve: list[list], events: int, first_event: int | None, first_label: str) -> str:
    """The difference over a run: one point per differing event, on a log scale.

    Args:
        curve: ``[event, step, max_abs_diff lower bound]`` per differing event (Report.curve).
        events: events compared (the x axis runs from 0 to this).
        first_event: the first source's event, marked with a vertical line (None: no mark).
        first_label: the text of that mark, e.g. the op's name.

    Returns:
        An ``<svg>`` element.
    """
    box = _Box(left=64, top=40, right=WIDTH - 16, bottom=276)
    points = sorted(curve, key=lambda p: p[0])
    values = [float(p[2]) for p in points]
    scale = _log_scale(values, headroom=_LABEL_STRIP)
    last = max([events, *(p[0] + 1 for p in points), 1])
    xs = _Linear(0, last)
    parts = [
        _y_axis(box, scale, "max |A−B| (lower bound)"),
        _x_axis(box, xs, _nice_ticks(0, last), "event (execution order in run A)"),
        _step_marks(points, xs, box),
    ]
    if first_event is not None:
        parts.append(_first_mark(first_event, first_label, xs, box))
    for event, step, value in points:
        bound = float(value)
        tip = f"event {event}, step {step}: ≥ {_number(bound)}"
        parts.append(
            _marker(xs.x(event, box), scale.y(bound, box), bound, _POINT, tip, event == first_event)
        )
    return _svg(box.bottom + 40, parts, "The difference per differing event over the run")


def growth_plot(rows: Sequence[Mapping[str, Any]]) -> str:
    """The largest gradient, parameter and optimizer-state difference per step, on a log scale.

    Args:
        rows: growth rows (Report.growth or DigestReport.growth), each with ``step`` and the keys
            of ``GROWTH_SERIES`` (a missing or None value is left out, and a series without
            any value is left out of the legend).

    Returns:
        An ``<svg>`` element with its legend.
    """
    box = _Box(left=64, top=34, right=WIDTH - 16, bottom=196)
    rows = sorted(rows, key=lambda r: r["step"])
    steps = [r["step"] for r in rows]
    values = [float(r[k]) for r in rows for k, _, _ in GROWTH_SERIES if r.get(k) is not None]
    scale = _log_scale(values)
    # A little room on each side, so the first and last step do not sit on the frame.
    pad = max(0.5, (steps[-1] - steps[0]) * 0.03)
    xs = _Linear(steps[0] - pad, steps[-1] + pad)
    ticks = steps if len(steps) <= 20 else _nice_ticks(steps[0], steps[-1])
    parts = [_y_axis(box, scale, "max |A−B|"), _x_axis(box, xs, ticks, "optimizer step")]
    shown = [
        (k, label, c) for k, label, c in GROWTH_SERIES if any(r.get(k) is not None for r in rows)
    ]
    for key, label, colour in shown:
        series = [(r["step"], float(r[key])) for r in rows if r.get(key) is not None]
        line = [(xs.x(s, box), scale.y(v, box)) for s, v in series if _plottable(v)]
        if len(line) > 1:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in line)
            parts.append(
                f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>'
            )
        for step, value in series:
            tip = f"{label}, step {step}: {_number(value)}"
            parts.append(_marker(xs.x(step, box), scale.y(value, box), value, colour, tip))
    parts.append(_legend([(label, colour) for _, label, colour in shown], box))
    return _svg(box.bottom + 40, parts, "The largest difference per step")


# Colours of the pairs plot: the plain pairs in greys, the reruns with a change after them.
_PLAIN_COLOURS = ("#333333", "#999999")
_CHANGE_COLOURS = ("#0072b2", "#e69f00", "#009e73", "#cc79a7", "#56b4e9", "#d55e00", "#f0e442")
# Pixels between the dots of neighbouring pairs at one step, so equal values stay visible.
_DODGE = 9
_LEGEND_ROW = 4  # legend entries per line


def pairs_plot(
    pairs: Sequence[tuple[str, Sequence[Mapping[str, Any]]]], key: str = "max_param_diff"
) -> str:
    """The difference of each pair of runs per step: the plain pairs (first, in greys) against
    the reruns with a change, on a log scale; a pair whose runs are identical sits in the zero
    lane. Dots of different pairs at one step are set a few pixels apart.

    Args:
        pairs: (legend text, growth rows) per pair, plain pairs first.
        key: the growth row's value to plot (``max_param_diff``: parameters after the step).

    Returns:
        An ``<svg>`` element with its legend, or "" when no pair has a value.
    """
    series = [
        (label, [(r["step"], float(r[key])) for r in rows if r.get(key) is not None])
        for label, rows in pairs
    ]
    series = [(label, points) for label, points in series if points]
    if not series:
        return ""
    legend_rows = (len(series) + _LEGEND_ROW - 1) // _LEGEND_ROW
    top = 34 + 18 * (legend_rows - 1)
    box = _Box(left=64, top=top, right=WIDTH - 16, bottom=top + 170)
    steps = sorted({step for _, points in series for step, _ in points})
    scale = _log_scale([value for _, points in series for _, value in points])
    pad = max(0.5, (steps[-1] - steps[0]) * 0.05)
    xs = _Linear(steps[0] - pad, steps[-1] + pad)
    ticks = steps if len(steps) <= 20 else _nice_ticks(steps[0], steps[-1])
    parts = [_y_axis(box, scale, "max |A−B|"), _x_axis(box, xs, ticks, "optimizer step")]
    plain = sum(1 for label, _ in series if label.startswith("plain"))
    colours = [*_PLAIN_COLOURS[:plain], *_CHANGE_COLOURS]
    legend = []
    for index, (label, points) in enumerate(series):
        colour = colours[index % len(colours)]
        shift = (index - (len(series) - 1) / 2) * _DODGE
        line = [(xs.x(s, box) + shift, scale.y(v, box)) for s, v in points if _plottable(v)]
        if len(line) > 1:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in line)
            dash = ' stroke-dasharray="5,3"' if index < plain else ""
            parts.append(
                f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"{dash}/>'
            )
        for step, value in points:
            tip = f"{label}, step {step}: {_number(value)}"
            x, y = xs.x(step, box) + shift, scale.y(value, box)
            parts.append(_marker(x, y, value, colour, tip, zero_colour=colour))
        legend.append((label, colour))
    for row in range(legend_rows):  # (a legend is drawn 20 px above its box's top)
        entries = legend[row * _LEGEND_ROW : (row + 1) * _LEGEND_ROW]
        parts.append(_legend(entries, _Box(box.left, 34 + 18 * row, box.right, box.bottom)))
    label = "The difference of each pair of runs per step"
    return _svg(box.bottom + 40, parts, label)


def _svg(height: float, parts: list[str], label: str) -> str:
    # Inline SVG in HTML needs no xmlns; width/height keep text at its size, CSS shrinks it.
    return (
        f'<svg class="plot" width="{WIDTH}" height="{height:.0f}" '
        f'viewBox="0 0 {WIDTH} {height:.0f}" role="img" aria-label="{escape(label)}" {_FONT}>'
        + "".join(parts)
        + "</svg>"
    )


def _plottable(value: float) -> bool:
    return math.isfinite(value) and value > 0


def _log_scale(values: list[float], headroom: float = 0) -> _LogScale:
    """Whole decades around the positive finite values; a lane when some are not."""
    shown = [v for v in values if _plottable(v)]
    lane = len(shown) < len(values)
    if not shown:
        return _LogScale(-1, 0, lane, headroom)
    low = math.floor(math.log10(min(shown)))
    high = math.ceil(math.log10(max(shown)))
    if high == low:
        high += 1
    return _LogScale(low, high, lane, headroom)


def _nice_ticks(low: float, high: float, count: int = 8) -> list[int]:
    """Whole-number ticks from ``low`` to ``high`` at 1, 2 or 5 times a power of ten apart."""
    if high <= low:
        return [int(low)]
    raw = (high - low) / count
    power = 10 ** math.floor(math.log10(raw)) if raw >= 1 else 1
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.ceil(low / step) * step
    return list(range(int(first), int(high) + 1, int(step)))


def _y_axis(box: _Box, scale: _LogScale, title: str) -> str:
    decade = scale.y(10.0**scale.low, box) - scale.y(10.0 ** (scale.low + 1), box)
    every = max(1, math.ceil(_DECADE_LABEL_GAP / decade))  # label every decade that has room
    parts = []
    for exponent in range(scale.low, scale.high + 1):
        y = scale.y(10.0**exponent, box)
        parts.append(
            f'<line x1="{box.left}" y1="{y:.1f}" x2="{box.right}" y2="{y:.1f}" stroke="{_GRID}"/>'
        )
        if (exponent - scale.low) % every == 0:
            parts.append(_power_label(box.left - 8, y, exponent))
    if scale.lane:
        y = box.bottom - _LANE / 2
        parts.append(
            f'<text x="{box.left - 8}" y="{y + 4:.1f}" text-anchor="end" fill="{_AXIS}" '
            f'class="tick-y">0</text>'
        )
        top = box.bottom - _LANE
        parts.append(
            f'<line x1="{box.left}" y1="{top}" x2="{box.right}" y2="{top}" stroke="{_AXIS}" '
            'stroke-dasharray="2 3"/>'
        )
    middle = (box.top + box.bottom) / 2
    parts.append(
        f'<text x="14" y="{middle:.1f}" transform="rotate(-90 14 {middle:.1f})" '
        f'text-anchor="middle" fill="{_AXIS}">{escape(title)}</text>'
        f'<line x1="{box.left}" y1="{box.top}" x2="{box.left}" y2="{box.bottom}" '
        f'stroke="{_AXIS}"/>'
    )
    return "".join(parts)


def _power_label(x: float, y: float, exponent: int) -> str:
    """'10' with the exponent raised, right-aligned at x."""
    return (
        f'<text x="{x}" y="{y + 4:.1f}" text-anchor="end" fill="{_AXIS}" class="tick-y">10'
        f'<tspan dy="-6" font-size="9">{exponent}</tspan></text>'
    )


def _x_axis(box: _Box, scale: _Linear, ticks: list, title: str) -> str:
    parts = [
        f'<line x1="{box.left}" y1="{box.bottom}" x2="{box.right}" y2="{box.bottom}" '
        f'stroke="{_AXIS}"/>'
    ]
    for tick in ticks:
        x = scale.x(tick, box)
        parts.append(
            f'<line x1="{x:.1f}" y1="{box.bottom}" x2="{x:.1f}" y2="{box.bottom + 5}" '
            f'stroke="{_AXIS}"/><text x="{x:.1f}" y="{box.bottom + 18}" text-anchor="middle" '
            f'fill="{_AXIS}" class="tick-x">{tick}</text>'
        )
    middle = (box.left + box.right) / 2
    parts.append(
        f'<text x="{middle:.1f}" y="{box.bottom + 34}" text-anchor="middle" fill="{_AXIS}">'
        f"{escape(title)}</text>"
    )
    return "".join(parts)


def _step_marks(points: list[list], xs: _Linear, box: _Box) -> str:
    """A light line where the step changes along the curve, and 'step N' where there is room.

    The report holds only differing events, so a boundary is drawn just before the first
    differing event of the new step: the real boundary lies between it and the point before.
    """
    parts = []
    last_label = -math.inf
    previous = None
    for event, step, _ in points:
        if step == previous:
            continue
        x = xs.x(event - 0.5, box)
        if previous is not None:
            parts.append(
                f'<line x1="{x:.1f}" y1="{box.top}" x2="{x:.1f}" y2="{box.bottom}" '
                'stroke="#b9b9b9" stroke-dasharray="4 3"/>'
            )
        if x - last_label >= _LABEL_GAP and x + _LABEL_GAP <= box.right:
            parts.append(
                f'<text x="{x + 4:.1f}" y="{box.top + 13}" fill="#6b6b6b" font-size="11" '
                f'class="step-label">step {step}</text>'
            )
            last_label = x
        previous = step
    return "".join(parts)


def _first_mark(event: int, label: str, xs: _Linear, box: _Box) -> str:
    """The first source: a vertical line through the plot and its label above the plot."""
    x = xs.x(event, box)
    # Past the middle the label reads leftwards, so it never runs off the plot.
    anchor, dx = ("end", -6) if x > (box.left + box.right) / 2 else ("start", 6)
    text = f"first source: {label} (event {event})"
    return (
        f'<line x1="{x:.1f}" y1="{box.top - 14}" x2="{x:.1f}" y2="{box.bottom}" '
        f'stroke="{_FIRST}" stroke-width="1.5" stroke-dasharray="5 3" class="first-source"/>'
        f'<text x="{x + dx:.1f}" y="{box.top - 18}" text-anchor="{anchor}" fill="{_FIRST}" '
        f'font-weight="600">{escape(text)}</text>'
    )


def _marker(
    x: float,
    y: float,
    value: float,
    colour: str,
    tip: str,
    first: bool = False,
    zero_colour: str = _ZERO,
) -> str:
    """A filled dot for a measured value, a hollow diamond in the lane for 0 or non-finite."""
    title = f"<title>{escape(tip)}</title>"
    if not _plottable(value):
        d = f"M{x:.1f},{y - 4:.1f}l4,4l-4,4l-4,-4z"
        return (
            f'<path d="{d}" fill="white" stroke="{zero_colour}" stroke-width="1.5">{title}</path>'
        )
    if first:
        return (
            f'<circle cx="{x:.1f}" cy="{y:.1f}" r="5.5" fill="{_FIRST}" stroke="white" '
            f'stroke-width="1.5">{title}</circle>'
        )
    return (
        f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{colour}" fill-opacity="0.8">'
        f"{title}</circle>"
    )


def _legend(entries: list[tuple[str, str]], box: _Box) -> str:
    parts = []
    x = box.left
    for label, colour in entries:
        y = box.top - 20
        parts.append(
            f'<line x1="{x}" y1="{y}" x2="{x + 18}" y2="{y}" stroke="{colour}" stroke-width="2"/>'
            f'<circle cx="{x + 9}" cy="{y}" r="3" fill="{colour}"/>'
            f'<text x="{x + 24}" y="{y + 4}" fill="#333">{escape(label)}</text>'
        )
        x += 24 + 7 * len(label) + 22  # about 7 px per character at 12 px
    return "".join(parts)


def _number(value: float) -> str:
    return f"{value:.3g}"

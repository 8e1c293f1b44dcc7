"""Inline SVG line charts for the HTML report (`html_report.py`). Plain markup, no script, so the
report draws the same offline, in any browser, and in a DOM dump. Histograms are drawn as step
lines through `step_points`, so several distributions can overlap on one chart.

    plot area: x maps [x_lo, x_hi] to [LEFT, WIDTH - RIGHT]; y maps [0, y_hi] to [HEIGHT - BOTTOM, TOP]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

WIDTH, HEIGHT = 460, 270
LEFT, RIGHT, TOP, BOTTOM = 58, 14, 30, 42
PALETTE = (
    "#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2",
    "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac",
)  # fmt: skip
SLO_COLOR = "#d62728"


@dataclass(frozen=True)
class Series:
    name: str
    points: Sequence[tuple[float, float]]  # (x, y) in drawing order
    color: str
    dashed: bool = False
    labels: Sequence[str] = ()  # one tooltip per point; markers are drawn only when given


@dataclass(frozen=True)
class Threshold:
    """A reference line at a value, e.g. an SLO limit: horizontal at y, or vertical at x."""

    name: str
    value: float
    vertical: bool = False


def color(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def step_points(edges: Sequence[float], heights: Sequence[float]) -> list[tuple[float, float]]:
    """A histogram's outline: up at each bin's left edge, across, and down after the last bin."""
    points = [(edges[0], 0.0)]
    for left, right, h in zip(edges[:-1], edges[1:], heights):
        points += [(left, h), (right, h)]
    return [*points, (edges[-1], 0.0)]


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """About `count` round tick values (1, 2 or 5 times a power of ten apart) covering [lo, hi]."""
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.floor(lo / step) * step
    return [first + i * step for i in range(int(math.ceil((hi - first) / step - 1e-9)) + 1)]


def line_chart(
    title: str, x_label: str, y_label: str, series: Sequence[Series], thresholds: Sequence[Threshold] = ()
) -> str:
    """One chart as an <svg> element; y starts at 0, x spans the data (padded when it is one point)."""
    xs = [x for s in series for x, _ in s.points] + [t.value for t in thresholds if t.vertical]
    ys = [y for s in series for _, y in s.points] + [t.value for t in thresholds if not t.vertical]
    if not xs:
        return _empty(title)
    x_lo, x_hi = min(xs), max(xs)
    if x_hi - x_lo < 1e-12:
        pad = abs(x_lo) * 0.2 or 1.0
        x_lo, x_hi = x_lo - pad, x_hi + pad
    x_ticks = nice_ticks(x_lo, x_hi)
    y_ticks = nice_ticks(0.0, max(ys) * 1.05 or 1.0)
    sx = lambda x: LEFT + (x - x_lo) / (x_hi - x_lo) * (WIDTH - LEFT - RIGHT)
    sy = lambda y: HEIGHT - BOTTOM - y / y_ticks[-1] * (HEIGHT - TOP - BOTTOM)
    parts = [
        f'<svg class="chart" role="img" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}">',
        f'<title>{escape(title)}</title><text class="title" x="{WIDTH / 2}" y="18">{escape(title)}</text>',
        *_axes(x_ticks, y_ticks, x_lo, x_hi, sx, sy, x_label, y_label),
    ]
    parts += [_threshold(t, sx, sy) for t in thresholds]
    for s in series:
        parts += _series(s, sx, sy)
    return "\n".join([*parts, "</svg>"])


def _axes(x_ticks, y_ticks, x_lo, x_hi, sx, sy, x_label: str, y_label: str) -> list[str]:
    bottom, right = HEIGHT - BOTTOM, WIDTH - RIGHT
    parts = []
    for y in y_ticks:
        parts.append(
            f'<line class="grid" x1="{LEFT}" x2="{right}" y1="{sy(y):.1f}" y2="{sy(y):.1f}"/>'
            f'<text class="tick" x="{LEFT - 5}" y="{sy(y) + 4:.1f}" text-anchor="end">{_tick(y)}</text>'
        )
    for x in x_ticks:
        if x_lo - 1e-9 <= x <= x_hi + 1e-9:
            parts.append(f'<text class="tick" x="{sx(x):.1f}" y="{bottom + 15}" text-anchor="middle">{_tick(x)}</text>')
    parts += [
        f'<path class="axis" d="M{LEFT} {TOP} V{bottom} H{right}"/>',
        f'<text class="label" x="{(LEFT + right) / 2}" y="{HEIGHT - 6}" text-anchor="middle">{escape(x_label)}</text>',
        f'<text class="label" transform="translate(13 {(TOP + bottom) / 2}) rotate(-90)" '
        f'text-anchor="middle">{escape(y_label)}</text>',
    ]
    return parts


def _threshold(t: Threshold, sx, sy) -> str:
    if t.vertical:
        x = sx(t.value)
        line, label = f'x1="{x:.1f}" x2="{x:.1f}" y1="{TOP}" y2="{HEIGHT - BOTTOM}"', f'x="{x + 3:.1f}" y="{TOP + 10}"'
    else:
        y = sy(t.value)
        line = f'x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}"'
        label = f'x="{WIDTH - RIGHT - 2}" y="{y - 4:.1f}" text-anchor="end"'
    name = escape(t.name)
    return (
        f'<line class="slo" {line} stroke="{SLO_COLOR}" stroke-dasharray="6 3"><title>{name}</title></line>'
        f'<text class="slo-label" {label} fill="{SLO_COLOR}">{name}</text>'
    )


def _series(s: Series, sx, sy) -> list[str]:
    d = " ".join(f"{'M' if i == 0 else 'L'}{sx(x):.1f} {sy(y):.1f}" for i, (x, y) in enumerate(s.points))
    dash = ' stroke-dasharray="5 3"' if s.dashed else ""
    parts = [f'<path class="series" d="{d}" stroke="{s.color}"{dash}><title>{escape(s.name)}</title></path>']
    for (x, y), label in zip(s.points, s.labels):
        parts.append(
            f'<circle class="point" cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="{s.color}">'
            f"<title>{escape(s.name)}, {escape(label)}: {_tick(y)}</title></circle>"
        )
    return parts


def _empty(title: str) -> str:
    return (
        f'<svg class="chart empty" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}">'
        f'<text class="title" x="{WIDTH / 2}" y="18">{escape(title)}</text>'
        f'<text class="label" x="{WIDTH / 2}" y="{HEIGHT / 2}" text-anchor="middle">no completed requests</text></svg>'
    )


def _tick(value: float) -> str:
    return f"{value:.4g}"

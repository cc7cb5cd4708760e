"""The stats page's charts, drawn on the server as inline SVG.

No charting library and no script: the page works offline and under a Content-Security-Policy
without 'unsafe-inline' (colours come from classes in review.css, not style attributes). Each
chart is an image with a title and a description for screen readers, and the page shows the
same numbers in a table beside it.
"""

from __future__ import annotations

from collections.abc import Sequence

from markupsafe import Markup, escape

from authz.clock import utc

WIDTH = 960
TIME_HEIGHT = 260
LEFT = 56
RIGHT = 40
BOTTOM = 28
TOP = 12
BAR_ROW = 22
BARS_WIDTH = 620
LABEL_WIDTH = 250
LABEL_CHARS = 30


def _svg(
    width: int, height: int, title: str, desc: str, body: list[str], chart_id: str, kind: str
) -> Markup:
    return Markup(
        f'<svg class="chart {kind}" id="{escape(chart_id)}" viewBox="0 0 {width} {height}" '
        f'width="100%" role="img" aria-labelledby="{escape(chart_id)}-t {escape(chart_id)}-d" '
        f'xmlns="http://www.w3.org/2000/svg">'
        f'<title id="{escape(chart_id)}-t">{escape(title)}</title>'
        f'<desc id="{escape(chart_id)}-d">{escape(desc)}</desc>' + "".join(body) + "</svg>"
    )


def _tick_label(start: float, bucket: str) -> str:
    moment = utc(start)
    if bucket == "day":
        return moment.strftime("%Y-%m-%d")
    if bucket == "hour":
        return moment.strftime("%m-%d %H:00")
    return moment.strftime("%H:%M")


def _nice_max(value: int) -> int:
    if value <= 5:
        return 5
    magnitude = 10 ** (len(str(value)) - 1)
    for step in (1, 2, 5, 10):
        if value <= step * magnitude:
            return step * magnitude
    return value


def over_time(series: Sequence[tuple[float, int, int]], bucket: str, chart_id: str) -> Markup:
    """Stacked bars per bucket: denies (bottom) and allows (top)."""
    height = TIME_HEIGHT
    # The right margin holds half of the last time label, which is centred on its bar.
    plot_w, plot_h = WIDTH - LEFT - RIGHT, height - TOP - BOTTOM
    top = _nice_max(max((n for _, n, _ in series), default=0))
    count = max(1, len(series))
    step = plot_w / count
    bar = max(step * 0.8, 0.5)
    body = [
        f'<line class="axis" x1="{LEFT}" y1="{TOP + plot_h}" x2="{LEFT + plot_w}" '
        f'y2="{TOP + plot_h}"/>',
        f'<line class="axis" x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{TOP + plot_h}"/>',
    ]
    for fraction in (0.5, 1.0):
        y = TOP + plot_h - plot_h * fraction
        body.append(
            f'<line class="gridline" x1="{LEFT}" y1="{y:.1f}" x2="{LEFT + plot_w}" y2="{y:.1f}"/>'
            f'<text class="tick" x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">'
            f"{int(top * fraction)}</text>"
        )
    for i, (start, total, denied) in enumerate(series):
        if not total:
            continue
        x = LEFT + i * step + (step - bar) / 2
        deny_h = plot_h * denied / top
        allow_h = plot_h * (total - denied) / top
        label = f"{_tick_label(start, bucket)}: {total} decisions, {denied} denied"
        if denied:
            body.append(
                f'<rect class="deny" x="{x:.2f}" y="{TOP + plot_h - deny_h:.2f}" '
                f'width="{bar:.2f}" height="{deny_h:.2f}"><title>{escape(label)}</title></rect>'
            )
        if total - denied:
            body.append(
                f'<rect class="allow" x="{x:.2f}" y="{TOP + plot_h - deny_h - allow_h:.2f}" '
                f'width="{bar:.2f}" height="{allow_h:.2f}"><title>{escape(label)}</title></rect>'
            )
    ticks = min(8, count)
    for k in range(ticks):
        i = round(k * (count - 1) / max(1, ticks - 1))
        if i >= len(series):
            continue
        x = LEFT + i * step + step / 2
        body.append(
            f'<text class="tick" x="{x:.1f}" y="{height - 8}" text-anchor="middle">'
            f"{escape(_tick_label(series[i][0], bucket))}</text>"
        )
    total = sum(n for _, n, _ in series)
    denied = sum(d for _, _, d in series)
    desc = (
        f"{total} decisions in {len(series)} {bucket}s, {denied} of them denied; "
        f"the busiest {bucket} had {max((n for _, n, _ in series), default=0)}."
    )
    title = f"Decisions and denies per {bucket}"
    return _svg(WIDTH, height, title, desc, body, chart_id, "over-time")


def bars(
    items: Sequence[tuple[str, int]],
    title: str,
    chart_id: str,
    *,
    css: str = "deny",
    suffix: str = "",
    fractions: Sequence[float] | None = None,
) -> Markup:
    """Horizontal bars, one row per item, labelled; lengths from the counts (or `fractions`)."""
    height = TOP + BAR_ROW * max(1, len(items)) + 8
    plot_w = BARS_WIDTH - LABEL_WIDTH - 60
    largest = max((n for _, n in items), default=0) or 1
    body: list[str] = []
    if not items:
        body.append(f'<text class="tick" x="{LABEL_WIDTH}" y="{TOP + 14}">none</text>')
    for row, (label, count) in enumerate(items):
        y = TOP + row * BAR_ROW
        share = fractions[row] if fractions is not None else count / largest
        width = max(plot_w * share, 1.0)
        shown = label if len(label) <= LABEL_CHARS else label[: LABEL_CHARS - 1] + "…"
        value = f"{share:.1%}" if fractions is not None else f"{count}{suffix}"
        body.append(
            f'<text class="label" x="{LABEL_WIDTH - 8}" y="{y + 15}" text-anchor="end">'
            f"{escape(shown)}<title>{escape(label)}</title></text>"
            f'<rect class="{css}" x="{LABEL_WIDTH}" y="{y + 3}" width="{width:.2f}" '
            f'height="{BAR_ROW - 8}"><title>{escape(label)}: {escape(value)}</title></rect>'
            f'<text class="tick" x="{LABEL_WIDTH + width + 6:.2f}" y="{y + 15}">'
            f"{escape(value)}</text>"
        )
    desc = "; ".join(f"{label}: {count}" for label, count in items) or "nothing to show"
    return _svg(BARS_WIDTH, height, title, desc, body, chart_id, "bars")

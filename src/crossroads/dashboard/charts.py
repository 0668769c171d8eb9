"""Charts drawn on the server as inline SVG: no charting library, no script, nothing for the CSP to allow."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from markupsafe import Markup, escape


def bar_chart(points: Sequence[tuple[str, float]], *, title: str, fmt: Callable[[float], str] = str,
              width: int = 640, height: int = 180) -> Markup:
    """A bar per (label, value), the tallest scaled to the chart's height; labels and values as <title> tooltips
    and an accessible table-like description."""
    top = max((value for _, value in points), default=0.0)
    plot_height = height - 34
    slot = width / max(len(points), 1)
    bar = max(slot * 0.7, 1.0)
    parts = [f'<figcaption>{escape(title)}</figcaption>', f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}">',
             f"<title>{escape(title)}</title>"]
    for index, (label, value) in enumerate(points):
        h = 0.0 if top <= 0 else plot_height * value / top
        x = index * slot + (slot - bar) / 2
        parts.append(f'<rect x="{x:.1f}" y="{plot_height - h + 16:.1f}" width="{bar:.1f}" height="{max(h, 0.5):.1f}">'
                     f"<title>{escape(label)}: {escape(fmt(value))}</title></rect>")
    if points:
        last = len(points) - 1
        for index, x, anchor in ((0, 2, "start"), (last // 2, (last // 2) * slot + slot / 2, "middle"),
                                 (last, width - 2, "end")):
            parts.append(f'<text x="{x:.1f}" y="{height - 6}" text-anchor="{anchor}">{escape(points[index][0])}</text>')
    parts.append(f'<text x="4" y="12" text-anchor="start">max {escape(fmt(top))}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))

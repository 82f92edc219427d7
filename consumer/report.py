"""`consumer report`: the daily snapshots (consumer.snapshots) as a terminal table and as one HTML page.

The page is self-contained: plots are inline SVG drawn here, no script, no CDN, nothing fetched, so it opens
anywhere (an attachment, an air-gapped laptop). Three plots: net liquidation over time, each strategy's cumulative
P&L (realized to date + unrealized), and each strategy's gross exposure.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import Any

PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22"]
WIDTH, HEIGHT, PAD = 1000, 260, 56


def cumulative(snapshot: Mapping[str, Any], strategy: str) -> float:
    line = snapshot.get("strategies", {}).get(strategy, {})
    return float(line.get("realizedPnlToDate", 0.0)) + float(line.get("unrealizedPnl", 0.0))


def strategies_of(snapshots: Sequence[Mapping[str, Any]]) -> list[str]:
    return sorted({s for snap in snapshots for s in snap.get("strategies", {})})


def table(snapshots: Sequence[Mapping[str, Any]]) -> str:
    """One row per day: net liquidation, day's change, high-water mark, then per strategy day's realized and P&L
    to date."""
    if not snapshots:
        return "no snapshots (eod-check writes one per trading day)"
    names = strategies_of(snapshots)
    header = ["date", "netLiq", "change", "highWater", *[f"{s} realized/toDate" for s in names]]
    rows = [header]
    previous: float | None = None
    for snap in snapshots:
        nlv = float(snap.get("netLiquidation", 0.0))
        change = "" if previous is None else f"{nlv - previous:,.2f}"
        previous = nlv
        cells = [str(snap.get("date")), f"{nlv:,.2f}", change, f"{float(snap.get('highWaterMark', 0.0)):,.2f}"]
        for s in names:
            line = snap.get("strategies", {}).get(s)
            cells.append(
                "-" if line is None else f"{float(line.get('realizedPnl', 0.0)):,.2f}/{cumulative(snap, s):,.2f}"
            )
        rows.append(cells)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = [
        "  ".join(c.rjust(w) if n else c.ljust(w) for n, (c, w) in enumerate(zip(r, widths, strict=True))) for r in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _plot(title: str, dates: Sequence[str], series: Mapping[str, Sequence[float | None]]) -> str:
    """A line chart of `series` over `dates`, with a zero line when the values cross zero, axes and a legend."""
    values = [v for ys in series.values() for v in ys if v is not None]
    low, high = (min(values), max(values)) if values else (0.0, 1.0)
    if high - low < 1e-9:
        low, high = low - 1.0, high + 1.0
    span = high - low
    low, high = low - span * 0.08, high + span * 0.08
    inner_w, inner_h = WIDTH - 2 * PAD, HEIGHT - 2 * PAD

    def x(i: int) -> float:
        return PAD + (inner_w * i / (len(dates) - 1) if len(dates) > 1 else inner_w / 2)

    def y(v: float) -> float:
        return PAD + inner_h * (high - v) / (high - low)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'role="img" aria-label="{html.escape(title)}">',
        f'<rect x="0" y="0" width="{WIDTH}" height="{HEIGHT}" fill="#ffffff"/>',
        f'<text x="{PAD}" y="24" font-size="16" font-weight="bold" fill="#222">{html.escape(title)}</text>',
        f'<rect x="{PAD}" y="{PAD}" width="{inner_w}" height="{inner_h}" fill="#f6f8fa" stroke="#999"/>',
    ]
    for k in range(5):  # horizontal grid with values
        v = low + (high - low) * k / 4
        parts.append(f'<line x1="{PAD}" x2="{WIDTH - PAD}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#ddd"/>')
        parts.append(
            f'<text x="{PAD - 4}" y="{y(v) + 4:.1f}" font-size="10" text-anchor="end" fill="#555">{v:,.0f}</text>'
        )
    if low < 0 < high:
        parts.append(
            f'<line x1="{PAD}" x2="{WIDTH - PAD}" y1="{y(0):.1f}" y2="{y(0):.1f}" '
            'stroke="#333" stroke-dasharray="4 3"/>'
        )
    step = max(1, len(dates) // 10)
    for i in range(0, len(dates), step):
        parts.append(
            f'<text x="{x(i):.1f}" y="{HEIGHT - PAD + 16}" font-size="10" text-anchor="middle" fill="#555">'
            f"{html.escape(dates[i])}</text>"
        )
    for n, (name, ys) in enumerate(series.items()):
        colour = PALETTE[n % len(PALETTE)]
        points = [(x(i), y(v)) for i, v in enumerate(ys) if v is not None]
        if len(points) > 1:
            path = " ".join(f"{px:.1f},{py:.1f}" for px, py in points)
            parts.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2.5"/>')
        for px, py in points:
            parts.append(f'<circle cx="{px:.1f}" cy="{py:.1f}" r="3.5" fill="{colour}"/>')
        lx = PAD + 10 + 170 * n
        parts.append(f'<rect x="{lx}" y="{PAD - 18}" width="12" height="12" fill="{colour}"/>')
        parts.append(f'<text x="{lx + 16}" y="{PAD - 8}" font-size="12" fill="#222">{html.escape(name)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def page(snapshots: Sequence[Mapping[str, Any]], title: str = "Daily P&L") -> str:
    """The HTML page: three inline SVG plots and the table."""
    dates = [str(s.get("date")) for s in snapshots]
    names = strategies_of(snapshots)
    base = str(snapshots[-1].get("baseCurrency", "")) if snapshots else ""

    def per_strategy(value: Any) -> dict[str, list[float | None]]:
        return {s: [value(snap, s) if s in snap.get("strategies", {}) else None for snap in snapshots] for s in names}

    plots = [
        _plot(
            f"Net liquidation ({base})",
            dates,
            {"net liquidation": [float(s.get("netLiquidation", 0.0)) for s in snapshots]},
        ),
        _plot(f"Cumulative P&L per strategy ({base})", dates, per_strategy(cumulative)),
        _plot(
            f"Gross exposure per strategy ({base})",
            dates,
            per_strategy(lambda snap, s: float(snap["strategies"][s].get("grossExposure", 0.0))),
        ),
    ]
    body = "\n".join(f"<section>{p}</section>" for p in plots) if snapshots else "<p>No snapshots yet.</p>"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:16px;background:#fff;color:#222}}section{{margin-bottom:12px}}
pre{{font-size:12px;background:#f6f8fa;padding:8px}}</style></head>
<body><h1>{html.escape(title)}</h1>
{body}
<pre>{html.escape(table(snapshots))}</pre>
</body></html>
"""

"""The simulator's HTML report: one self-contained file, plots as inline SVG generated here.

No JavaScript, no external CSS, fonts or network: the file can be mailed or archived as is.
Plots: cumulative objective vs the oracle, budget share per level of every dimension, and the
number of actions (budget changes) per hour.
"""

from __future__ import annotations

import html
import json
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from campaignd.domain.campaign import DIMENSIONS

if TYPE_CHECKING:
    from campaignd.sim.driver import SimulationResult

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf", "#393b79", "#637939")
W, H = 720, 260
ML, MR, MT, MB = 64, 150, 30, 40


def _nice_max(v: float) -> float:
    if v <= 0:
        return 1.0
    mag = 10 ** len(str(int(v))) / 10
    for m in (1, 2, 2.5, 5, 10):
        if v <= m * mag:
            return m * mag
    return 10 * mag


def _fmt(v: float) -> str:
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if abs(v) >= 10 or v == int(v):
        return f"{v:.0f}"
    return f"{v:.2f}"


def _frame(title: str, x_max: float, y_max: float, x_label: str, y_label: str) -> list[str]:
    pw, ph = W - ML - MR, H - MT - MB
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
           f'viewBox="0 0 {W} {H}" role="img" aria-label="{html.escape(title)}">',
           f'<text x="{ML}" y="18" font-size="14" font-weight="bold">{html.escape(title)}</text>',
           f'<rect x="{ML}" y="{MT}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>']
    for k in range(5):
        y = MT + ph - ph * k / 4
        out.append(f'<line x1="{ML}" x2="{ML + pw}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>')
        out.append(f'<text x="{ML - 6}" y="{y + 4:.1f}" font-size="10" text-anchor="end">'
                   f'{_fmt(y_max * k / 4)}</text>')
    for k in range(7):
        x = ML + pw * k / 6
        out.append(f'<text x="{x:.1f}" y="{MT + ph + 14}" font-size="10" text-anchor="middle">'
                   f'{_fmt(x_max * k / 6)}</text>')
    out.append(f'<text x="{ML + pw / 2}" y="{H - 6}" font-size="11" text-anchor="middle">'
               f'{html.escape(x_label)}</text>')
    out.append(f'<text x="12" y="{MT + ph / 2}" font-size="11" text-anchor="middle" '
               f'transform="rotate(-90 12 {MT + ph / 2})">{html.escape(y_label)}</text>')
    return out


def line_chart(title: str, xs: Sequence[float], series: Sequence[tuple[str, Sequence[float]]],
               *, x_label: str = "hours", y_label: str = "", y_max: float | None = None) -> str:
    """An SVG line chart; ``series`` is (name, ys) with ys aligned with ``xs``."""
    pw, ph = W - ML - MR, H - MT - MB
    x_max = max(xs[-1] if xs else 1.0, 1e-9)
    top = y_max if y_max is not None else _nice_max(max((max(ys) for _, ys in series if ys),
                                                        default=1.0))
    out = _frame(title, x_max, top, x_label, y_label)
    for i, (name, ys) in enumerate(series):
        color = PALETTE[i % len(PALETTE)]
        pts = " ".join(f"{ML + pw * x / x_max:.1f},{MT + ph - ph * min(y, top) / top:.1f}"
                       for x, y in zip(xs, ys, strict=False))
        out.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.8" points="{pts}"/>')
        ly = MT + 12 + 15 * i
        out.append(f'<rect x="{ML + pw + 10}" y="{ly - 8}" width="10" height="10" '
                   f'fill="{color}"/>')
        out.append(f'<text x="{ML + pw + 24}" y="{ly + 1}" font-size="11">'
                   f'{html.escape(name)}</text>')
    out.append("</svg>")
    return "\n".join(out)


def bar_chart(title: str, xs: Sequence[float], ys: Sequence[float], *, x_label: str = "hours",
              y_label: str = "") -> str:
    pw, ph = W - ML - MR, H - MT - MB
    x_max = max((xs[-1] + 1) if xs else 1.0, 1e-9)
    top = _nice_max(max(ys, default=1.0))
    out = _frame(title, x_max, top, x_label, y_label)
    bw = max(1.0, pw / max(len(xs), 1) - 1)
    for x, y in zip(xs, ys, strict=False):
        h = ph * y / top
        out.append(f'<rect x="{ML + pw * x / x_max:.1f}" y="{MT + ph - h:.1f}" '
                   f'width="{bw:.1f}" height="{h:.1f}" fill="{PALETTE[0]}"/>')
    out.append("</svg>")
    return "\n".join(out)


def render_html(result: SimulationResult) -> str:
    rep = result.report
    p, o = result.policy_trace, result.oracle_trace
    t0 = p.times[0] if p.times else None
    hours = [(t - t0).total_seconds() / 3600 for t in p.times] if t0 else []
    ohours = [(t - t0).total_seconds() / 3600 for t in o.times] if t0 else []
    # the oracle is sampled on its own (hourly) grid: align by hour
    oracle_by_hour = dict(zip((round(h) for h in ohours), o.objective, strict=False))
    oracle_ys = [oracle_by_hour.get(round(h), float("nan")) for h in hours]
    oracle_ys = _ffill(oracle_ys)
    objective = rep.get("objective", "objective")
    charts = [line_chart(f"Cumulative {objective}: {rep['policy']} vs oracle", hours,
                         [(str(rep["policy"]), p.objective), ("oracle", oracle_ys)],
                         y_label=objective)]
    for d in DIMENSIONS:
        levels = [lvl.id for lvl in result.spec.levels(d)]
        shares = p.level_share.get(d, [])
        series = [(lvl, [s[i] * 100 for s in shares]) for i, lvl in enumerate(levels)]
        if len(series) > len(PALETTE):
            series = series[: len(PALETTE)]
        charts.append(line_chart(f"Budget share by {d} (%)", hours, series, y_label="% of budget",
                                 y_max=100.0))
    charts.append(bar_chart("Actions per hour (budget changes)", hours, p.actions,
                            y_label="actions"))
    rows = "\n".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_cell(v))}</td></tr>"
                     for k, v in rep.items())
    title = f"campaignd simulation: {rep['scenario']} / {rep['policy']} / seed {rep['seed']}"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, -apple-system, Segoe UI, Helvetica, Arial, sans-serif;
       margin: 24px; color: #222; }}
table {{ border-collapse: collapse; margin-bottom: 24px; }}
th, td {{ text-align: left; padding: 3px 12px; border-bottom: 1px solid #eee; font-size: 13px; }}
th {{ color: #555; font-weight: 600; }}
.charts svg {{ display: block; margin: 12px 0 24px; }}
</style></head>
<body>
<h1>{html.escape(title)}</h1>
<p>{html.escape(result.scenario.description)}</p>
<table>{rows}</table>
<div class="charts">
{chr(10).join(charts)}
</div>
<script type="application/json" id="report">{html.escape(json.dumps(rep))}</script>
</body></html>
"""


def _cell(v: object) -> str:
    if isinstance(v, dict):
        return ", ".join(f"{k}: {x}" for k, x in v.items())
    return str(v)


def _ffill(ys: list[float]) -> list[float]:
    out, last = [], 0.0
    for y in ys:
        if y == y:  # not NaN
            last = y
        out.append(last)
    return out


def check_report_path(path: Path) -> str | None:
    """Why the report could not be written at ``path`` (``None`` when it can), found before a
    run spends minutes: the path is not a directory; an existing file can be opened for
    writing (appending nothing, so it is left as it is); otherwise a file can be created in
    its nearest existing directory (``write_html_report`` makes the missing ones). Asks the
    file system itself: ``os.access`` says yes to root even on read-only or virtual file
    systems such as ``/proc``."""
    if path.is_dir():
        return "is a directory"
    if path.exists():
        try:
            with open(path, "ab"):
                pass
        except OSError as exc:
            return f"cannot be written ({exc.strerror or exc})"
        return None
    where = path.parent
    while not where.exists() and where != where.parent:
        where = where.parent
    if not where.is_dir():
        return f"cannot be created: {where} is not a directory"
    try:
        with tempfile.TemporaryFile(dir=where):
            pass
    except OSError as exc:
        return f"cannot be created in {where} ({exc.strerror or exc})"
    return None


def write_html_report(path: Path, result: SimulationResult) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(result), encoding="utf-8")
    return path


__all__ = ["bar_chart", "check_report_path", "line_chart", "render_html",
           "write_html_report"]

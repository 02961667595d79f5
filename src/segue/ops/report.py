"""The HTML validation report: a verdict, a table of every feature and schema finding, and for
each failing feature its two distributions side by side (inline SVG bar charts: no plotting
library, a few milliseconds per chart)."""

from __future__ import annotations

import html
from typing import TYPE_CHECKING

from segue.ops.drift import OTHER

if TYPE_CHECKING:
    from segue.ops.validation import FeatureCheck, Result

_W, _H = 460, 230  # one panel
_PAD_L, _PAD_B, _PAD_T = 70, 80, 24
_MAX_LABELS = 25  # more bins than this: x labels thinned so they stay readable


def feature_svg(check: FeatureCheck) -> str:
    """Reference and candidate distributions of one feature as two bar charts on one y scale.
    An <other> bin that would flatten every other bar (popularity: the long tail) is left out of
    the bars and its two shares are written in the panel titles instead."""
    labels = list(check.reference)
    rest = [k for k in labels if k != OTHER]
    notes = {"reference": "", "candidate": ""}
    if OTHER in labels and rest:
        biggest = max(max(check.reference.get(k, 0.0), check.candidate.get(k, 0.0)) for k in rest)
        if max(check.reference.get(OTHER, 0.0), check.candidate.get(OTHER, 0.0)) > 3 * biggest:
            labels = rest
            notes = {
                "reference": f", {OTHER} {check.reference.get(OTHER, 0.0):.3f}",
                "candidate": f", {OTHER} {check.candidate.get(OTHER, 0.0):.3f}",
            }
    top = max([*(check.reference.get(k, 0.0) for k in labels), *(check.candidate.get(k, 0.0) for k in labels), 1e-12])
    panels = [
        _panel(
            f"reference (n = {check.n_reference:,.0f}{notes['reference']})", labels, check.reference, top, "#4c72b0", 0
        ),
        _panel(
            f"candidate (n = {check.n_candidate:,.0f}{notes['candidate']})", labels, check.candidate, top, "#dd8452", _W
        ),
    ]
    title = html.escape(f"{check.name}: Chebyshev distance {check.distance:.4f} > limit {check.limit:.4f}")
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{2 * _W}" height="{_H + 20}" '
        f'viewBox="0 0 {2 * _W} {_H + 20}" font-family="sans-serif" font-size="10" role="img">'
        f'<title>{title}</title><text x="{_W}" y="12" text-anchor="middle" font-size="12">{title}</text>'
        f'<g transform="translate(0,20)">{"".join(panels)}</g></svg>'
    )


def _panel(name: str, labels: list[str], values: dict[str, float], top: float, colour: str, x0: int) -> str:
    e = html.escape
    plot_w, plot_h = _W - _PAD_L - 10, _H - _PAD_B - _PAD_T
    n = max(len(labels), 1)
    bw = plot_w / n
    parts = [f'<text x="{x0 + _PAD_L + plot_w / 2:.1f}" y="12" text-anchor="middle">{e(name)}</text>']
    y_base = _PAD_T + plot_h
    for frac in (0, 0.5, 1):
        y = y_base - frac * plot_h
        parts.append(f'<line x1="{x0 + _PAD_L}" x2="{x0 + _PAD_L + plot_w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/>')
        parts.append(f'<text x="{x0 + _PAD_L - 4}" y="{y + 3:.1f}" text-anchor="end">{frac * top:.3g}</text>')
    step = max(1, -(-n // _MAX_LABELS))
    for i, k in enumerate(labels):
        v = values.get(k, 0.0)
        h = v / top * plot_h
        x = x0 + _PAD_L + i * bw
        parts.append(
            f'<rect x="{x + 0.1 * bw:.2f}" y="{y_base - h:.2f}" width="{0.8 * bw:.2f}" height="{h:.2f}" '
            f'fill="{colour}"><title>{e(k)}: {v:.4f}</title></rect>'
        )
        if i % step == 0:
            cx, cy = x + bw / 2, y_base + 8
            parts.append(
                f'<text x="{cx:.1f}" y="{cy:.1f}" text-anchor="end" transform="rotate(-50 {cx:.1f} {cy:.1f})">'
                f"{e(_short(k))}</text>"
            )
    return "".join(parts)


def _short(label: str, n: int = 18) -> str:
    return label if len(label) <= n else "..." + label[-(n - 3) :]


def render_html(result: Result) -> str:
    e = html.escape
    verdict = "PASS" if result.passed else "FAIL"
    rows = []
    for f in result.features:
        status = "skipped" if f.skipped else ("pass" if f.passed else "FAIL")
        detail = e(f.skipped) if f.skipped else f"{f.n_reference:,.0f} / {f.n_candidate:,.0f}"
        rows.append(
            f"<tr class='{status.lower()}'><td>{e(f.name)}</td><td>{'-' if f.skipped else f'{f.distance:.4f}'}</td>"
            f"<td>{f.threshold:.4f}</td><td>{'-' if f.skipped else f'{f.allowance:.4f}'}</td><td>{status}</td>"
            f"<td>{detail}</td></tr>"
        )
    findings = "".join(
        f"<tr class='{'fail' if x.severity == 'error' else 'note'}'><td>{e(x.column)}</td><td>{e(x.check)}</td>"
        f"<td>{e(x.expected)}</td><td>{e(x.found)}</td><td>{e(x.severity)}</td></tr>"
        for x in result.schema
    )
    charts = []
    for f in result.failures():
        charts.append(f"<h3>{e(f.name)}</h3><figure>{feature_svg(f)}</figure>")
    webhook = ""
    if result.webhook is not None:
        webhook = f"<p>webhook: {e(str(result.webhook))}</p>"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>segue validate: {verdict}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; }}
table {{ border-collapse: collapse; margin-bottom: 1.5em; }}
td, th {{ border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }}
tr.fail td {{ background: #fde2e1; }} tr.note td {{ color: #666; }} tr.skipped td {{ color: #888; }}
svg {{ max-width: 100%; height: auto; }}
</style></head><body>
<h1 id="verdict">{verdict}</h1>
<p>candidate: {e(result.candidate)}<br>reference: {e(result.reference)}<br>{e(result.created_at)}</p>
<h2>Distributions (Chebyshev distance; a feature fails past max(threshold, allowance))</h2>
<table><tr><th>feature</th><th>distance</th><th>threshold</th><th>allowance</th><th>status</th><th>n ref / cand</th></tr>
{"".join(rows)}</table>
<h2>Schema</h2>
{"<table><tr><th>column</th><th>check</th><th>expected</th><th>found</th><th>severity</th></tr>" + findings + "</table>" if findings else "<p>no findings</p>"}
{"<h2>Failing features</h2>" + "".join(charts) if charts else ""}
{webhook}
</body></html>
"""

"""The HTML validation report: a verdict, a table of every feature and schema finding, and for
each failing feature its two distributions side by side (PNG charts embedded as base64)."""

from __future__ import annotations

import base64
import html
import io
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from segue.ops.validation import FeatureCheck, Result

_MAX_LABELS = 30  # more bins than this: x labels thinned so they stay readable


def feature_png(check: FeatureCheck) -> bytes:
    """Reference and candidate distributions of one feature as two bar charts sharing the y axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(check.reference)
    x = range(len(labels))
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.4), sharey=True)
    try:
        for ax, side, values, colour in (
            (axes[0], "reference", check.reference, "#4c72b0"),
            (axes[1], "candidate", check.candidate, "#dd8452"),
        ):
            ax.bar(x, [values.get(k, 0.0) for k in labels], color=colour, width=0.85)
            ax.set_title(f"{side} (n = {check.n_reference if side == 'reference' else check.n_candidate:,.0f})")
            step = max(1, len(labels) // _MAX_LABELS)
            ax.set_xticks(list(x)[::step])
            ax.set_xticklabels(
                [_short(k) for k in labels[::step]], rotation=60 if len(labels) > 8 else 0, ha="right", fontsize=7
            )
        axes[0].set_ylabel("share")
        fig.suptitle(
            f"{check.name}: Chebyshev distance {check.distance:.4f} > limit {check.limit:.4f}", fontsize=10
        )
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=90)
        return buf.getvalue()
    finally:
        plt.close(fig)


def _short(label: str, n: int = 24) -> str:
    return label if len(label) <= n else "..." + label[-(n - 3) :]


def render_html(result: Result) -> str:
    e = html.escape
    verdict = "PASS" if result.passed else "FAIL"
    rows = []
    for f in result.features:
        status = "skipped" if f.skipped else ("pass" if f.passed else "FAIL")
        detail = e(f.skipped) if f.skipped else f"{f.n_reference:,.0f} / {f.n_candidate:,.0f}"
        rows.append(
            f"<tr class='{status.lower()}'><td>{e(f.name)}</td><td>{f.distance:.4f}</td><td>{f.threshold:.4f}</td>"
            f"<td>{f.allowance:.4f}</td><td>{status}</td><td>{detail}</td></tr>"
        )
    findings = "".join(
        f"<tr class='{'fail' if x.severity == 'error' else 'note'}'><td>{e(x.column)}</td><td>{e(x.check)}</td>"
        f"<td>{e(x.expected)}</td><td>{e(x.found)}</td><td>{e(x.severity)}</td></tr>"
        for x in result.schema
    )
    charts = []
    for f in result.failures():
        png = base64.b64encode(feature_png(f)).decode("ascii")
        charts.append(f"<h3>{e(f.name)}</h3><img alt='{e(f.name)} distributions' src='data:image/png;base64,{png}'>")
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
img {{ max-width: 100%; }}
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

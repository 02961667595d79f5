"""What a tuning run shows: the trials table, the validation metric against each parameter, the
best config as TOML, its test metrics with CIs beside the defaults', and the cost of each trial.

Two renderings of the same content:
  card_components()  Metaflow card components (Markdown, Table, Image) for `@card(type="blank")`;
                     Metaflow 2.19's Table cannot be sorted by clicking, so it lists trials best first
  render_page()      a self-contained HTML page (`segue tune` writes it as tune.html) whose trials
                     table sorts by any column on a click of its header
"""

from __future__ import annotations

import base64
import html
import io
import math
from typing import Any

from segue.tuning.space import SearchSpace


def _fmt(x: Any, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if isinstance(x, float):
        return f"{x:.{digits}g}"
    return str(x)


def ordered(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Finished trials best first, then pruned, failed and skipped ones by number."""
    rank = {"ok": 0, "pruned": 1, "failed": 2, "skipped": 3}
    return sorted(records, key=lambda r: (rank.get(r["status"], 4), -(r["value"] or 0.0), r["number"]))


def trial_table(space: SearchSpace, records: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """(header, rows): one row per trial, the metric, its cost, its parameters and error. The cost
    comes before the parameters: a space with many parameters makes the table wider than the
    card's column, and the columns past its edge are only seen by scrolling."""
    names = list(space.params)
    header = ["trial", "round", "status", f"valid {space.metric}", "seconds", "peak RSS (MiB)", *names, "error"]
    rows = []
    for r in ordered(records):
        params = [_fmt(r["params"][n]) if n in r["params"] else "" for n in names]
        err = (r.get("error") or "")[:160]
        rows.append(
            [str(r["number"]), str(r["round"]), r["status"], _fmt(r["value"]),
             f"{r.get('seconds', 0.0):.1f}", f"{r.get('peak_rss_mb', 0.0):.0f}", *params, err]
        )
    return header, rows


def plot_parameter(space: SearchSpace, records: list[dict[str, Any]], name: str) -> bytes | None:
    """PNG: the validation metric of finished trials against one parameter (None if none set it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p = space.params[name]
    pts = [(r["params"][name], r["value"]) for r in records if r["status"] == "ok" and name in r["params"]]
    if not pts:
        return None
    fig, ax = plt.subplots(figsize=(4.2, 3.0))
    if p.type == "choice":
        labels = [str(c) for c in p.choices or []]
        xs = [labels.index(str(x)) for x, _ in pts]
        ax.set_xticks(range(len(labels)), labels)
        ax.set_xlim(-0.5, len(labels) - 0.5)
    else:
        xs = [float(x) for x, _ in pts]
        if p.log:
            from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

            # labels at 1, 2 and 5 per decade: matplotlib's minor labels overlap within a decade
            ax.set_xscale("log")
            ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
            ax.xaxis.set_minor_formatter(NullFormatter())
    ys = [y for _, y in pts]
    ax.scatter(xs, ys, s=22, alpha=0.75)
    best = max(range(len(ys)), key=ys.__getitem__)
    ax.scatter([xs[best]], [ys[best]], s=60, facecolors="none", edgecolors="red", label="best")
    ax.set_xlabel(name)
    ax.set_ylabel(f"valid {space.metric}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def test_table(test: dict[str, Any] | None) -> tuple[list[str], list[list[str]]] | None:
    """(header, rows) of the test metrics: mean [CI] of each model (tuned, defaults), and the
    paired difference tuned - defaults with its CI and p."""
    if not test:
        return None
    cols = test["columns"]
    header = ["model", *cols]
    rows = []
    for m, per in test["intervals"].items():
        rows.append([m, *(f"{per[c]['mean']:.4f} [{per[c]['low']:.4f}, {per[c]['high']:.4f}]" for c in cols)])
    for m, per in test.get("comparisons", {}).items():
        rows.append([f"{m} - {test['reference']}",
                     *(f"{per[c]['diff']:+.4f} [{per[c]['low']:+.4f}, {per[c]['high']:+.4f}] p={per[c]['p_value']:.3f}" for c in cols)])
    return header, rows


def summary_lines(space: SearchSpace, records: list[dict[str, Any]], best: dict[str, Any] | None, meta: dict[str, Any]) -> list[str]:
    n = {s: sum(r["status"] == s for r in records) for s in ("ok", "pruned", "failed", "skipped")}
    lines = [
        f"**family** {space.family} · **strategy** {space.strategy} · **store** {meta.get('store', space.store)} · "
        f"**split** {space.split} · **metric** {space.metric} on the validation part",
        f"**trials** {len(records)}: {n['ok']} finished, {n['pruned']} pruned, {n['failed']} failed, {n['skipped']} skipped"
        + (f" · **rounds** {meta['rounds']}" if meta.get("rounds") else ""),
    ]
    if best is not None:
        lines.append(f"**best** trial {best['number']}: valid {space.metric} {best['value']:.4f}")
    return lines


def card_components(
    space: SearchSpace,
    records: list[dict[str, Any]],
    best: dict[str, Any] | None,
    best_toml: str,
    test: dict[str, Any] | None,
    meta: dict[str, Any],
) -> list[Any]:
    """Metaflow card components (to append to `current.card`)."""
    from metaflow.cards import Image, Markdown, Table

    out: list[Any] = [Markdown(f"# segue tune: {space.family}"), Markdown("  \n".join(summary_lines(space, records, best, meta)))]
    tt = test_table(test)
    if tt is not None:
        out += [Markdown(f"## Test ({test['part']} part, once): tuned vs defaults, mean [95% CI]"), Table(tt[1], headers=tt[0])]
        if test.get("defaults_error"):
            out.append(Markdown(f"**No comparison:** {test['defaults_error']}"))
    elif best is not None:
        out.append(Markdown("## Test\nNot run in this round: the best config is tested once, after the last round."))
    if best is not None:
        out += [Markdown("## Best config (TOML)"), Markdown(f"```toml\n{best_toml}\n```")]
    header, rows = trial_table(space, records)
    out += [Markdown(f"## Trials (best first by valid {space.metric})"), Table(rows, headers=header)]
    out.append(Markdown(f"## Validation {space.metric} against each parameter"))
    for name in space.params:
        png = plot_parameter(space, records, name)
        if png is not None:
            out.append(Image(png, label=name))
    return out


SORT_JS = """
document.querySelectorAll('table.sortable th').forEach((th, col) => th.addEventListener('click', () => {
  const table = th.closest('table'), body = table.tBodies[0];
  const desc = th.dataset.dir !== 'desc'; th.dataset.dir = desc ? 'desc' : 'asc';
  const key = tr => { const t = tr.cells[col].textContent.trim(); const x = parseFloat(t);
                      return isNaN(x) ? (desc ? '' : '\\uffff') + t : x; };
  const rows = Array.from(body.rows).sort((a, b) => { const x = key(a), y = key(b);
    if (typeof x === 'number' && typeof y === 'number') return desc ? y - x : x - y;
    if (typeof x === 'number') return -1; if (typeof y === 'number') return 1;
    return desc ? (y > x ? 1 : -1) : (x > y ? 1 : -1); });
  rows.forEach(r => body.appendChild(r));
  table.querySelectorAll('th').forEach(h => h.classList.remove('sorted')); th.classList.add('sorted');
}));
"""

CSS = """
body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:1300px;color:#222;padding:0 1rem}
h1{font-size:1.5rem}h2{font-size:1.1rem;margin-top:2rem}
table{border-collapse:collapse;font-size:.85rem}th,td{border:1px solid #ddd;padding:.25rem .5rem;text-align:right}
th{background:#f3f3f3}table.sortable th{cursor:pointer}th.sorted{background:#dde8f7}
table.trials td:last-child{text-align:left;color:#a33}
pre{background:#f7f7f7;padding:.8rem}.plots{display:flex;flex-wrap:wrap;gap:.5rem}
"""


def render_page(
    space: SearchSpace,
    records: list[dict[str, Any]],
    best: dict[str, Any] | None,
    best_toml: str,
    test: dict[str, Any] | None,
    meta: dict[str, Any],
) -> str:
    """The same content as the card, as one self-contained HTML page with a sortable trials table."""
    e = html.escape

    def table(header: list[str], rows: list[list[str]], cls: str = "") -> str:
        head = "".join(f"<th>{e(h)}</th>" for h in header)
        body = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in rows)
        return f"<table class='{cls}'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    import re

    def md(line: str) -> str:
        return re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", e(line))

    out = ["<!doctype html><html><head><meta charset='utf-8'>", f"<title>segue tune: {e(space.family)}</title>",
           f"<style>{CSS}</style></head><body>", f"<h1>segue tune: {e(space.family)}</h1>"]
    out += [f"<p>{md(line)}</p>" for line in summary_lines(space, records, best, meta)]
    tt = test_table(test)
    if tt is not None:
        out += [f"<h2>Test ({e(test['part'])} part, once): tuned vs defaults, mean [95% CI]</h2>", table(*tt, cls="test")]
        if test.get("defaults_error"):
            out.append(f"<p class='defaults-error'><b>No comparison:</b> {e(test['defaults_error'])}</p>")
    if best is not None:
        out += ["<h2>Best config (TOML)</h2>", f"<pre>{e(best_toml)}</pre>"]
    header, rows = trial_table(space, records)
    out += [f"<h2>Trials (click a header to sort; best first by valid {e(space.metric)})</h2>", table(header, rows, cls="sortable trials")]
    out.append(f"<h2>Validation {e(space.metric)} against each parameter</h2><div class='plots'>")
    for name in space.params:
        png = plot_parameter(space, records, name)
        if png is not None:
            out.append(f"<img class='param-plot' alt='{e(name)}' src='data:image/png;base64,{base64.b64encode(png).decode()}'>")
    out.append(f"</div><script>{SORT_JS}</script></body></html>")
    return "\n".join(out)

"""Reports of an evaluation: a rich table on the terminal and a report folder.

The folder (written atomically: it appears complete or not at all):
  report.md           tables: headline metrics with CIs, every metric at every K, paired comparisons
  report.html         the same, self-contained (inline CSS, plots as base64 PNG)
  metrics_vs_k.png    each metric against K, one line per model
  results.json        means, CIs, comparisons, per-group means, notes, timings
  per_user.npz        per-query values of every metric for every model (+ seq_ids), to re-compare later
  evaluate.toml       the evaluation config (models, store, split, protocol, ks, bootstrap)
  store.json          store path, content checksum, split kind/params/checks
  models/<name>/model.toml   each model's family and typed config (copied from its folder, or the
                      config a baseline was fitted with)
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from segue.config import Config
from segue.evaluation import metrics as M
from segue.evaluation.evaluator import EvalResult
from segue.evaluation.pipeline_hooks import pipeline_tables
from segue.evaluation.protocols import ProtocolConfig
from segue.evaluation.significance import (
    Comparison,
    Interval,
    bootstrap_means,
    cis,
    summarize_difference,
)
from segue.io import atomic_path, check_output

# The file every report folder holds: how a path is recognised as an earlier report (check_report_path).
REPORT_MARKER = "results.json"
MIN_REPORT_BOOT = 10  # a report's CIs and p-values need resamples


class EvaluateConfig(Config):
    """Everything that shaped an evaluation (saved as evaluate.toml beside the report)."""

    models: list[str]
    store: str
    split: str
    protocol: ProtocolConfig = ProtocolConfig()
    ks: list[int] = []
    batch_size: int | None = None
    n_boot: int = Field(1000, ge=MIN_REPORT_BOOT)
    level: float = Field(0.95, gt=0, lt=1)
    seed: int = 0
    reference: str | None = None  # model the others are compared with; default: best on the headline


@dataclass
class Stats:
    """CIs and paired comparisons computed from an EvalResult."""

    intervals: dict[str, dict[str, Interval]]  # model -> metric -> mean/CI
    reference: str
    headline: str  # metric key used to pick the reference ("ndcg@10")
    comparisons: dict[str, dict[str, Comparison]]  # model -> metric -> (model - reference)
    level: float
    n_boot: int


def headline_metric(result: EvalResult) -> str:
    return f"ndcg@{result.headline_k}"


def compute_stats(
    result: EvalResult,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    reference: str | None = None,
) -> Stats:
    """Bootstrap CI of every mean and paired comparisons of every model against the reference
    (named, or else the best on NDCG at the headline K). Queries of one sequence are resampled
    together (see EvalResult.clusters)."""
    headline = headline_metric(result)
    names = list(result.models)
    if reference is None:
        reference = max(names, key=lambda n: _nan_to(result.models[n].mean(headline), -1.0))
    elif reference not in result.models:
        from segue.errors import SegueError

        raise SegueError(f"reference model '{reference}' is not among the evaluated models ({', '.join(names)})")
    clusters = result.clusters
    keys = result.metric_keys
    flat = {(m, k): result.models[m].per_user[k] for m in names for k in keys}
    iv = cis({f"{m}\0{k}": v for (m, k), v in flat.items()}, clusters=clusters, level=level, n_boot=n_boot, seed=seed)
    intervals = {m: {k: iv[f"{m}\0{k}"] for k in keys} for m in names}
    # All (model, metric) differences with the reference in one resampling pass.
    others = [m for m in names if m != reference]
    pairs = [(m, k) for m in others for k in keys]
    comparisons: dict[str, dict[str, Comparison]] = {m: {} for m in others}
    if pairs:
        d = np.stack([flat[(m, k)] - flat[(reference, k)] for m, k in pairs])
        reps = bootstrap_means(d, clusters=clusters, n_boot=n_boot, seed=seed)
        for i, (m, k) in enumerate(pairs):
            comparisons[m][k] = summarize_difference(d[i], reps[i], level)
    return Stats(intervals, reference, headline, comparisons, level, n_boot)


def _nan_to(x: float, v: float) -> float:
    return v if math.isnan(x) else x


def _fmt(x: float, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:.{digits}f}"


def _fmt_diff(x: float) -> str:
    return "–" if math.isnan(x) else f"{x:+.4f}"


def _fmt_ci(c: Comparison) -> str:
    """'[low, high]', or '–' where no CI was computed (n_boot 0; it printed '[+nan, +nan]')."""
    if math.isnan(c.low) or math.isnan(c.high):
        return "–"
    return f"[{c.low:+.4f}, {c.high:+.4f}]"


def _fmt_p(p: float, n_boot: int) -> str:
    if math.isnan(p):
        return "–"
    if p <= 1.5 / (n_boot + 1):  # no resample as extreme: p is below what n_boot resamples resolve
        return f"<{1 / n_boot:.2g}"
    return f"{p:.3f}"


def headline_columns(result: EvalResult) -> list[str]:
    k = result.headline_k
    if result.protocol == "playlist_continuation":  # the challenge's three, then recall
        cols = ["rprec", f"ndcg@{k}", "clicks", f"recall@{k}", f"poppct@{k}"]
    else:
        cols = [f"hr@{k}", f"recall@{k}", f"ndcg@{k}", f"mrr@{k}", f"poppct@{k}"]
    return [c for c in cols if c in result.metric_keys]


SHORT = {"hr": "HR", "recall": "Recall", "ndcg": "NDCG", "mrr": "MRR", "poppct": "PopPct", "rprec": "R-prec",
         "clicks": "Clicks", "precision": "Prec"}


def short_label(key: str) -> str:
    name, k = M.split_key(key)
    return f"{SHORT.get(name, name)}@{k}" if k is not None else SHORT.get(name, name)


def column_label(key: str) -> str:
    name, k = M.split_key(key)
    label = M.LABELS.get(name, name)
    return f"{label}@{k}" if k is not None else label


# ---------------------------------------------------------------------------------------------
# terminal


def print_table(result: EvalResult, stats: Stats, console: Any = None) -> None:
    """The headline table (mean ± half CI width) and the comparisons with the reference model."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    k = result.headline_k
    cols = headline_columns(result)
    boot = stats.n_boot > 0  # --n-boot 0: means and differences only, no CI or p
    ci_text = f"± = half the {round(100 * stats.level)}% bootstrap CI" if boot else "no CIs (--n-boot 0)"
    title = (
        f"{result.protocol} on split '{result.split}' ({result.part}): {len(result.seq_ids)} queries, "
        f"{result.n_items} items; every column at K = {k}; {ci_text}"
    )
    t = Table(title=title, title_justify="left")
    # On a narrow terminal a long model name folds; the figures and their labels are never cut
    # (K is in the title: "NDCG@100" had been cut to "NDCG@1…", which reads as @1).
    t.add_column("model", style="bold", overflow="fold")
    for c in cols:
        label = SHORT.get(M.split_key(c)[0], c)
        t.add_column(label, justify="right", no_wrap=True, min_width=max(len(label), 6))
    t.add_column("Cov", justify="right", no_wrap=True, min_width=5)
    for m, r in result.models.items():
        cells = []
        for c in cols:
            iv = stats.intervals[m][c]
            digits = 2 if c.startswith("poppct") or c == "clicks" else 4
            mean = f"[green]{_fmt(iv.mean, digits)}[/]" if m == stats.reference else _fmt(iv.mean, digits)
            cells.append(f"{mean}\n[dim]±{_fmt((iv.high - iv.low) / 2, digits - 1)}[/]" if boot else mean)
        t.add_row(m, *cells, _fmt(r.coverage.get(k, float("nan")), 3))
    console.print(t)
    if stats.comparisons:
        h = stats.headline
        how = "paired bootstrap" if boot else "difference of means; --n-boot 0: no CI or p computed"
        # The CI is the percentile interval of d*, p the shifted-null test (significance.py), so
        # near the edge one can exclude 0 while the other is above 0.05.
        caption = "CI: percentile interval of the resampled differences; p: test of difference 0 (they may disagree near p = 0.05)"
        ct = Table(
            title=f"{column_label(h)}: each model minus '{stats.reference}' ({how})",
            title_justify="left",
            caption=caption if boot else None,
            caption_justify="left",
        )
        for col in ("model", "difference", f"{round(100 * stats.level)}% CI", "p"):
            ct.add_column(col, justify="right" if col != "model" else "left")
        for m, comp in stats.comparisons.items():
            c = comp[h]
            ct.add_row(m, _fmt_diff(c.diff), _fmt_ci(c), _fmt_p(c.p_value, stats.n_boot))
        console.print(ct)
    for title, header, rows in feedback_tables(result, stats.level, stats.n_boot):
        ft = Table(title=title, title_justify="left")
        for col in header:
            ft.add_column(col, justify="left" if col == "model" else "right")
        for r in rows:
            ft.add_row(*r)
        console.print(ft)
    for note in result.notes:
        console.print(f"[dim]{note}[/]")
    console.print("[dim]seconds: " + ", ".join(f"{m} {r.seconds:.1f}" for m, r in result.models.items()) + "[/]")


# ---------------------------------------------------------------------------------------------
# plots


def plot_metrics_vs_k(result: EvalResult) -> bytes:
    """PNG of every metric that has a K (and coverage) against K, one line per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["hr", "recall", "ndcg", "mrr", "poppct", "coverage"]
    ks = list(result.ks)
    fig, axes = plt.subplots(2, 3, figsize=(13, 7.5))
    summary = result.summary()
    for ax, name in zip(axes.ravel(), names, strict=True):
        for m in result.models:
            ys = [summary[m].get(f"{name}@{k}", float("nan")) for k in ks]
            ax.plot(ks, ys, marker="o", label=m)
        ax.set_title(f"{M.LABELS[name]}@K")
        ax.set_xlabel("K")
        if len(ks) > 1 and ks[-1] / ks[0] >= 10:
            ax.set_xscale("log")
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    fig.suptitle(f"{result.protocol} · split {result.split} ({result.part}) · {len(result.seq_ids)} queries")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------
# documents


def _tables(result: EvalResult, stats: Stats) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) for every table in the report; Markdown and HTML render the same list."""
    pct = round(100 * stats.level)
    summary = result.summary()
    out = []
    cols = headline_columns(result)
    rows = []
    for m in result.models:
        cells = [m]
        for c in cols:
            iv = stats.intervals[m][c]
            cells.append(f"{_fmt(iv.mean)} [{_fmt(iv.low)}, {_fmt(iv.high)}]")
        cells.append(_fmt(summary[m].get(f"coverage@{result.headline_k}", float("nan")), 3))
        cells.append(f"{result.models[m].seconds:.1f}")
        rows.append(cells)
    out.append(
        (
            f"Headline (K = {result.headline_k}): mean [{pct}% bootstrap CI]",
            ["model", *map(column_label, cols), f"Coverage@{result.headline_k}", "seconds"],
            rows,
        )
    )
    for name in [*M.AT_K, "coverage"]:
        keys = [f"{name}@{k}" for k in result.ks]
        if not any(keys[0] in summary[m] for m in summary):
            continue
        rows = [[m, *(_fmt(summary[m].get(k, float("nan"))) for k in keys)] for m in result.models]
        out.append((f"{M.LABELS[name]}@K", ["model", *(f"K={k}" for k in result.ks)], rows))
    if stats.comparisons:
        keys = [k for k in [stats.headline, *cols] if k in result.metric_keys]
        keys = list(dict.fromkeys(keys))
        rows = []
        for m, comp in stats.comparisons.items():
            for k in keys:
                c = comp[k]
                rows.append([m, column_label(k), _fmt_diff(c.diff), _fmt_ci(c), _fmt_p(c.p_value, stats.n_boot)])
        out.append(
            (
                f"Paired comparisons: model minus '{stats.reference}' (paired bootstrap, {stats.n_boot} resamples)",
                ["model", "metric", "difference", f"{pct}% CI", "p"],
                rows,
            )
        )
    out += feedback_tables(result, stats.level, stats.n_boot)
    cold = _cold_warm_table(result, stats)
    if cold is not None:
        out.append(cold)
    groups = result.group_summary()
    if groups:
        gcols = headline_columns(result)
        rows = [[g, m, *(_fmt(vals[c]) for c in gcols)] for g, per_model in groups.items() for m, vals in per_model.items()]
        n_in = {g: int((result.groups == g).sum()) for g in groups}
        out.append(
            (
                "Per group: " + ", ".join(f"{g} ({n} queries)" for g, n in n_in.items()),
                ["group", "model", *map(column_label, gcols)],
                rows,
            )
        )
    out += pipeline_tables(result.models)  # two-stage pipelines: pool recall, feature importance
    return out


def feedback_tables(result: EvalResult, level: float, n_boot: int) -> list[tuple[str, list[str], list[list[str]]]]:
    """PairAccuracy and rating-error tables (segue.evaluation.ratings.FeedbackReport), if any."""
    fb = result.feedback
    if fb is None:
        return []
    pct = round(100 * level)
    out = []
    pr = fb.pairs
    if pr is not None:
        rows = []
        for m, iv in pr.intervals.items():
            c = pr.comparisons.get(m)
            diff = "reference" if c is None else f"{_fmt_diff(c.diff)} {_fmt_ci(c)}"
            rows.append([m, f"{_fmt(iv.mean)} [{_fmt(iv.low)}, {_fmt(iv.high)}]", diff, "–" if c is None else _fmt_p(c.p_value, n_boot)])
        n_users = len(pr.users)
        out.append(
            (
                f"PairAccuracy (mean over {n_users} users of {pr.n_pairs} held-out pairs) [{pct}% CI]; "
                f"minus '{pr.reference}' (paired bootstrap)",
                ["model", "PairAccuracy", "difference", "p"],
                rows,
            )
        )
    er = fb.errors
    if er is not None:
        rows = []
        for m in er.rmse:
            c = er.rmse_diff.get(m)
            diff = "reference" if c is None else f"{_fmt_diff(c.diff)} {_fmt_ci(c)}"
            rows.append([m, f"{_fmt(er.rmse[m].mean)} [{_fmt(er.rmse[m].low)}, {_fmt(er.rmse[m].high)}]",
                         f"{_fmt(er.mae[m].mean)} [{_fmt(er.mae[m].low)}, {_fmt(er.mae[m].high)}]", diff])
        out.append(
            (
                f"Rating error on {er.n_ratings} held-out ratings [{pct}% CI]; RMSE minus '{er.reference}'",
                ["model", "RMSE", "MAE", "RMSE difference"],
                rows,
            )
        )
    return out


def _cold_warm_table(result: EvalResult, stats: Stats) -> tuple[str, list[str], list[list[str]]] | None:
    """Temporal protocol: hit rate and NDCG on cold (outside the training vocabulary) and warm
    targets separately, with CIs (segue.evaluation.cold)."""
    k = result.headline_k
    cols = [f"{p}_{m}@{k}" for p in ("cold", "warm") for m in ("hr", "ndcg")]
    if result.cold_share is None or not all(c in result.metric_keys for c in cols):
        return None
    rows = []
    for m in result.models:
        cells = [m]
        for c in cols:
            iv = stats.intervals[m][c]
            cells.append(f"{_fmt(iv.mean)} [{_fmt(iv.low)}, {_fmt(iv.high)}]")
        rows.append(cells)
    n_cold = int((~np.isnan(next(iter(result.models.values())).per_user[cols[0]])).sum())
    title = (
        f"Cold and warm targets (K = {k}): {100 * result.cold_share:.1f}% of relevant items are cold (outside the "
        f"training vocabulary; hittable only by models that compose unseen items from features); {n_cold} queries "
        f"have a cold target; mean [{round(100 * stats.level)}% CI] over the queries with such targets"
    )
    header = ["model", f"cold HitRate@{k}", f"cold NDCG@{k}", f"warm HitRate@{k}", f"warm NDCG@{k}"]
    return title, header, rows


def _header_lines(result: EvalResult, config: EvaluateConfig | None) -> list[tuple[str, str]]:
    info = result.split_info
    lines = [
        ("protocol", f"{result.protocol} ({result.part} part)"),
        ("store", f"{result.store_path} (content checksum {result.store_checksum})"),
        ("split", f"{result.split}: {info['kind']} {json.dumps(info['params'], sort_keys=True)}"),
        ("queries", f"{len(result.seq_ids)} from {len(np.unique(result.seq_ids))} sequences; "
                    f"{result.n_items} catalogue items; mean |relevant| {result.n_relevant.mean():.2f}"),
        ("K", ", ".join(map(str, result.ks))),
    ]
    if config is not None:
        lines.append(("bootstrap", f"{config.n_boot} resamples, seed {config.seed}, level {config.level}"))
    lines += [("note", n) for n in result.notes]
    if result.feedback is not None:
        fb = result.feedback
        lines += [("note", n) for n in [*(fb.pairs.notes if fb.pairs else []), *(fb.errors.notes if fb.errors else []), *fb.notes]]
    lines.append(
        (
            "rules",
            "full ranking over every catalogue item; "
            + ("history items are never recommended, so never hits; " if result.protocol_config.exclude_seen else "history items may be recommended; ")
            + "targets outside the training vocabulary stay relevant (unhittable, except by models that compose unseen "
            "items from their features); a repeated target counts once",
        )
    )
    return lines


def render_markdown(result: EvalResult, stats: Stats, config: EvaluateConfig | None = None) -> str:
    parts = [f"# Evaluation: {result.protocol} on '{result.split}'", ""]
    parts += [f"- **{k}**: {v}" for k, v in _header_lines(result, config)]
    for title, header, rows in _tables(result, stats):
        parts += ["", f"## {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        parts += ["| " + " | ".join(r) + " |" for r in rows]
    parts += ["", "![metrics against K](metrics_vs_k.png)", ""]
    return "\n".join(parts)


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2rem auto;max-width:1200px;color:#222;padding:0 1rem}
h1{font-size:1.5rem}h2{font-size:1.1rem;margin-top:2rem}
table{border-collapse:collapse;margin:.5rem 0;font-size:.9rem}
th,td{border:1px solid #ddd;padding:.3rem .6rem;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
tr.ref td{background:#eef8ee}
dl{display:grid;grid-template-columns:max-content 1fr;gap:.2rem 1rem;font-size:.9rem}
dt{font-weight:600}img{max-width:100%}
"""


def render_html(result: EvalResult, stats: Stats, png: bytes, config: EvaluateConfig | None = None) -> str:
    e = html.escape
    out = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>segue evaluation: {e(result.protocol)} on {e(result.split)}</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>Evaluation: {e(result.protocol)} on '{e(result.split)}'</h1><dl>",
    ]
    out += [f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in _header_lines(result, config)]
    out.append("</dl>")
    for title, header, rows in _tables(result, stats):
        out.append(f"<h2>{e(title)}</h2><table><thead><tr>")
        out += [f"<th>{e(h)}</th>" for h in header]
        out.append("</tr></thead><tbody>")
        for r in rows:
            cls = " class='ref'" if r[0] == stats.reference else ""
            out.append(f"<tr{cls}>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>")
        out.append("</tbody></table>")
    b64 = base64.b64encode(png).decode()
    out.append(f"<h2>Metrics against K</h2><img alt='metrics against K' src='data:image/png;base64,{b64}'>")
    out.append("</body></html>")
    return "\n".join(out)


def results_json(result: EvalResult, stats: Stats) -> dict[str, Any]:
    def clean(x: Any) -> Any:
        if isinstance(x, float) and math.isnan(x):
            return None
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, list | tuple):
            return [clean(v) for v in x]
        return x

    return clean(
        {
            "protocol": result.protocol,
            "protocol_config": result.protocol_config.model_dump(mode="json"),
            "split": result.split,
            "part": result.part,
            "ks": list(result.ks),
            "headline_k": result.headline_k,
            "store": {"path": str(Path(result.store_path).resolve()), "checksum": result.store_checksum},
            "n_queries": len(result.seq_ids),
            "n_items": result.n_items,
            "notes": result.notes,
            "cold_share": result.cold_share,
            "summary": result.summary(),
            "intervals": {m: {k: asdict(v) for k, v in d.items()} for m, d in stats.intervals.items()},
            "reference": stats.reference,
            "comparisons": {m: {k: asdict(v) for k, v in d.items()} for m, d in stats.comparisons.items()},
            "groups": result.group_summary(),
            "seconds": {m: r.seconds for m, r in result.models.items()},
            "models": {m: {k: v for k, v in r.info.items() if k != "model_toml"} for m, r in result.models.items()},
            "feedback": _feedback_json(result.feedback),
        }
    )


def _feedback_json(fb: Any) -> dict[str, Any] | None:
    if fb is None:
        return None
    out: dict[str, Any] = {"notes": fb.notes}
    if fb.pairs is not None:
        p = fb.pairs
        out["pair_accuracy"] = {
            "intervals": {m: asdict(v) for m, v in p.intervals.items()},
            "pooled": p.pooled,
            "reference": p.reference,
            "comparisons": {m: asdict(v) for m, v in p.comparisons.items()},
            "n_pairs": p.n_pairs,
            "n_users": len(p.users),
            "notes": p.notes,
        }
    if fb.errors is not None:
        e = fb.errors
        out["rating_error"] = {
            "rmse": {m: asdict(v) for m, v in e.rmse.items()},
            "mae": {m: asdict(v) for m, v in e.mae.items()},
            "reference": e.reference,
            "rmse_diff": {m: asdict(v) for m, v in e.rmse_diff.items()},
            "n_ratings": e.n_ratings,
        }
    return out


def check_report_path(out: str | Path, kind: str = "report", marker: str = REPORT_MARKER) -> bool:
    """Refuse an `out` that is neither new nor an earlier report (write_report replaces the whole
    path); True when an earlier report is there. Callers check before evaluating, to fail fast."""
    return check_output(out, kind, marker)


def write_report(
    result: EvalResult,
    out: str | Path,
    stats: Stats,
    config: EvaluateConfig | None = None,
    *,
    extra_files: Mapping[str, str] | None = None,
    kind: str = "report",
    marker: str = REPORT_MARKER,
) -> Path:
    """Write the report folder `out` atomically (see the module docstring for its files), with
    `extra_files` (name -> text) in the same folder, so they appear with the report or not at all."""
    out = Path(out)
    check_report_path(out, kind, marker)  # checked again: a library caller may not have
    png = plot_metrics_vs_k(result)
    with atomic_path(out, is_dir=True) as tmp:
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text, encoding="utf-8")
        (tmp / "metrics_vs_k.png").write_bytes(png)
        (tmp / "report.md").write_text(render_markdown(result, stats, config), encoding="utf-8")
        (tmp / "report.html").write_text(render_html(result, stats, png, config), encoding="utf-8")
        (tmp / "results.json").write_text(json.dumps(results_json(result, stats), indent=1, default=str))
        arrays = {"seq_ids": result.seq_ids, "n_relevant": result.n_relevant}
        if result.groups is not None:
            arrays["groups"] = result.groups.astype(str)
        for m, r in result.models.items():
            for k, v in r.per_user.items():
                arrays[f"{m}/{k}"] = v
        np.savez_compressed(tmp / "per_user.npz", **arrays)
        if config is not None:
            config.save(tmp / "evaluate.toml")
        store_info = {"path": str(Path(result.store_path).resolve()), "content_checksum": result.store_checksum, "split": result.split_info}
        (tmp / "store.json").write_text(json.dumps(store_info, indent=1, sort_keys=True))
        for m, r in result.models.items():
            text = r.info.get("model_toml")
            if text:
                folder = tmp / "models" / _safe_name(m)
                folder.mkdir(parents=True, exist_ok=True)
                (folder / "model.toml").write_text(text, encoding="utf-8")
    return out


def _safe_name(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name) or "model"

"""The last step of a tuning run: refit the best config and the defaults on the training part and
evaluate both on the test part, once, in one paired evaluation (segue.evaluation's harness, with
bootstrap CIs and the paired difference tuned - defaults)."""

from __future__ import annotations

import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

from segue.tuning.snapshot import pack_folder
from segue.tuning.space import SearchSpace, Value, family_config
from segue.tuning.trial import fit_family, measured


def test_best(space: SearchSpace, store: Any, params: dict[str, Value], *, n_boot: int = 1000) -> dict[str, Any]:
    """Fit `params` ("tuned") and the space's defaults ("defaults") and evaluate them on the test
    part. Returns {"test": means/CIs/comparison, "report_tar": the report folder as a tar,
    "model_tar": the tuned model folder as a tar, "best_toml": its config, "cost": fit cost}.

    Defaults the data cannot fit (a `[base]` no trial ran as is, e.g. max_items below the
    catalogue) do not fail the session: the tuned model is tested alone and test["defaults_error"]
    says why there is no comparison (the failure was deterministic, so a resume failed the same)."""
    from segue.data.arrays import SplitData
    from segue.evaluation.evaluator import evaluate
    from segue.evaluation.protocols import ProtocolConfig
    from segue.evaluation.report import (
        EvaluateConfig,
        compute_stats,
        headline_columns,
        write_report,
    )

    data = SplitData.load(store, space.split)
    tuned_cfg = family_config(space, params, source="the best trial")
    default_cfg = family_config(space, {}, source="the defaults")
    with measured() as cost:
        tuned = fit_family(space.family, tuned_cfg, data, metric=space.metric)
    models: dict[str, Any] = {"tuned": tuned}
    info = {"tuned": {"family": space.family, "model_toml": "[config]\n" + tuned_cfg.to_toml()}}
    defaults_error: str | None = None
    try:
        models["defaults"] = fit_family(space.family, default_cfg, data, metric=space.metric)
        info["defaults"] = {"family": space.family, "model_toml": "[config]\n" + default_cfg.to_toml()}
    except Exception as e:  # the tuned result stands without the comparison
        defaults_error = f"{type(e).__name__}: {e}"
    reference = "defaults" if "defaults" in models else None
    pcfg = ProtocolConfig(name=space.protocol, part="test")
    result = evaluate(models, store, space.split, pcfg, space.ks, model_info=info)
    stats = compute_stats(result, n_boot=n_boot, seed=space.seed, reference=reference or "tuned")
    cols = [c for c in dict.fromkeys([space.metric, *headline_columns(result)]) if c in result.metric_keys]
    test = {
        "part": result.part,
        "queries": len(result.seq_ids),
        "columns": cols,
        "reference": reference,
        "means": result.summary(),
        "intervals": {m: {c: asdict(stats.intervals[m][c]) for c in cols} for m in result.models},
        "comparisons": {m: {c: asdict(comp[c]) for c in cols} for m, comp in stats.comparisons.items()},
    }
    if defaults_error is not None:
        test["defaults_error"] = f"the defaults ([base] alone) could not be fitted, so tuned is tested alone: {defaults_error}"
    with tempfile.TemporaryDirectory(prefix="segue-best-") as tmp:
        report = Path(tmp) / "report"
        config = EvaluateConfig(models=list(models), store=str(store.path), split=space.split, protocol=pcfg,
                                ks=list(result.ks), n_boot=n_boot, seed=space.seed, reference=reference)
        write_report(result, report, stats, config)
        model = tuned.save(Path(tmp) / "model")
        return {
            "test": test,
            "report_tar": pack_folder(report),
            "model_tar": pack_folder(model),
            "best_toml": tuned_cfg.to_toml(),
            "cost": cost,
        }

"""The two-tower export of a pairwise fine-tuned transformer: its ranking score (a mix with the
feedback head) is no inner product, so the export says its vectors give the next-item logit."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from segue.cli import app
from segue.data.store import Store
from test_pairwise import _config, store  # noqa: F401  (the module-scoped store fixture)


def test_export_of_a_mix_ranked_model_says_its_vectors_are_the_logit_not_the_ranking(store: Path, tmp_path: Path) -> None:  # noqa: F811
    from segue.models.base import load_model
    from segue.serving.export import ranking_score, read_export, user_histories
    from segue.training.trainer import TrainConfig, train

    pre = train(TrainConfig.from_dict(_config(store, tmp_path, "pre", 4)))
    ft = train(TrainConfig.from_dict(_config(store, tmp_path, "ft", 6, {"init_from": str(pre), "score": "mix", "max_pairs": 16})))
    runner = CliRunner()
    for run, exact in ((pre, True), (ft, False)):
        out = tmp_path / f"exp-{run.name}"
        res = runner.invoke(app, ["export", str(run), "-o", str(out), "--part", "test"])
        assert res.exit_code == 0, res.output
        tt = read_export(out)
        assert tt.meta["exact"] is exact
        assert ("ranks by pairwise.score = 'mix'" in " ".join(res.output.split())) is not exact
        model = load_model(run)
        assert ranking_score(model) == (None if exact else "mix")
        with Store.open(store) as st:
            hist, nxt = user_histories(st, "holdout", "test", model.vocab)
        rows = tt.user_seq_ids[:10]
        dot = tt.users[:10] @ tt.items.T
        if exact:
            np.testing.assert_allclose(dot, model.score(hist, rows, next_events=nxt)[:, tt.item_tokens], rtol=1e-4, atol=1e-4)
        else:
            assert tt.meta["ranks_by"] == "mix" and "NOT its ranking score" in tt.meta["score"]
            assert json.loads((out / "export.json").read_text())["exact"] is False

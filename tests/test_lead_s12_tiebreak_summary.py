"""segue train under trainer.tiebreak says which checkpoint it kept and why (walk s12 profile F3):
the progress lines named the best metric seen, the closing line another value as "best", and
neither said a tiebreak chose it."""

from __future__ import annotations

import json
import re
from pathlib import Path

from typer.testing import CliRunner

from segue.cli import app
from test_autoencoder import store  # noqa: F401  (the module fixture)

runner = CliRunner()


def test_the_closing_line_names_the_kept_step_and_the_tiebreak(store: Path, tmp_path: Path) -> None:  # noqa: F811
    cfg = tmp_path / "ae.toml"
    cfg.write_text(
        f'family = "autoencoder"\nname = "tb"\nruns_dir = "{tmp_path / "runs"}"\n'
        f'[data]\nstore = "{store}"\nsplit = "strong"\n'
        '[model]\nhidden = [16]\nbottleneck = 8\ninput_dropout = 0.3\n'
        '[optim]\nlr = 1e-2\nwarmup_steps = 0\nschedule = "constant"\n'
        '[trainer]\nmax_steps = 60\neval_every = 10\nmetric = "ndcg@100"\ntiebreak = "rmse"\ntolerance = 1.0\n'
        '[trainer.loader]\nbatch_size = 16\n'
    )
    res = runner.invoke(app, ["train", "--config", str(cfg)])
    assert res.exit_code == 0, res.output
    out = " ".join(res.output.split())
    m = json.loads((tmp_path / "runs" / "tb" / "metrics.json").read_text())
    hist = m["history"]
    top = max(hist, key=lambda h: (h["ndcg@100"], -h["step"]))
    assert top["step"] != m["best_step"]  # tolerance 1.0: the lowest RMSE is kept, not the top NDCG
    assert f"kept step {m['best_step']}: ndcg@100 {m['best_metric']:.4f}, within 1 of the best {top['ndcg@100']:.4f} (step {top['step']})" in out
    assert "trainer.tiebreak" in out
    assert re.search(r"\(best \d\.\d{4}, kept step \d+ by rmse\)", out)  # the progress lines too

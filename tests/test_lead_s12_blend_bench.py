"""bench/autoencoder_blend.py on a run that carries its own wide part (the shipped configs' wide =
"ease", wide_mode = "score"): `a` is EASE's whole scale, so the row at the run's own scale is the
run as saved, and the folder --out-dir writes scores what the bench printed (walk s12 profile F2:
EASE was added twice and the written folder did not reproduce the printed figure)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from segue.data.arrays import SplitData
from segue.data.store import Store
from segue.evaluation.evaluator import evaluate
from segue.evaluation.protocols import ProtocolConfig
from segue.models.autoencoder import AutoencoderConfig, AutoencoderRecommender
from segue.models.base import load_model
from test_autoencoder import store  # noqa: F401  (the module fixture)

BENCH = Path(__file__).resolve().parents[1] / "bench" / "autoencoder_blend.py"


def _valid_ndcg(folder: Path, store_path: Path) -> float:
    with Store.open(store_path) as s:
        res = evaluate({"m": load_model(folder)}, s, "strong", ProtocolConfig(name="strong", part="valid"), [100])
    return float(res.models["m"].per_user["ndcg@100"].mean())


def test_blend_rows_and_written_folder_match_the_runs(store: Path, tmp_path: Path) -> None:  # noqa: F811
    cfg = AutoencoderConfig.from_dict(
        {
            "model": {"hidden": [16], "bottleneck": 8, "input_dropout": 0.3, "score": "presence",
                      "wide": "ease", "wide_mode": "score", "wide_scale": 30.0, "wide_l2": 50.0},
            "optim": {"lr": 1e-2, "warmup_steps": 0, "schedule": "constant"},
            "trainer": {"max_steps": 60, "eval_every": 30, "metric": "ndcg@100", "progress": False, "patience": None,
                        "loader": {"batch_size": 16}},
        }
    )
    with Store.open(store) as s:
        run = AutoencoderRecommender(cfg).fit(SplitData.load(s, "strong")).save(tmp_path / "run")
    out = subprocess.run(
        [sys.executable, str(BENCH), f"r={run}", "--store", str(store), "--part", "valid", "--l2", "50",
         "--scales", "0,30,60", "--alphas", "1", "--out-dir", str(tmp_path / "blend")],
        capture_output=True, text=True, timeout=240, cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    rows = {float(a): float(v) for a, v in re.findall(r"^\s+r\s+l2 50\s+a (\S+)\s+alpha 1\s+ndcg@100 (\S+)", out.stdout, re.M)}
    assert set(rows) == {0.0, 30.0, 60.0}, out.stdout
    own = _valid_ndcg(run, store)
    assert rows[30.0] == pytest.approx(own, abs=1e-4)  # the run as saved: its own scale, not twice it
    best = max(rows, key=lambda a: rows[a])
    assert _valid_ndcg(tmp_path / "blend" / "r", store) == pytest.approx(rows[best], abs=1e-4)

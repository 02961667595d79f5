"""Walk s12 (operations loop, walk-ops): the retrain loop and the registry under an operator's
hands: the warm-start reason, a read-only registry, two retrains at once, an interrupted training,
a promotion whose reload fails."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from segue.ops.registry import Registry
from segue.retrain.loop import Retrain, RetrainConfig
from test_retrain import _quiet, _setup, weeks  # noqa: F401 (weeks: the module's fixture)

TINY = """name = "retrain"
[data]
store = "unused.duckdb"
split = "temporal"
[model]
n_layers = 1
n_heads = 1
d_model = 8
d_ff = 16
context_length = 8
[trainer]
max_steps = {steps}
eval_every = {steps}
eval_max_users = 50
checkpoint_every = 1000
keep_checkpoints = 1
log_every = 1
progress = false
[trainer.loader]
batch_size = 16
context_length = 8
"""


def _transformer(cfg_path: Path, steps: int = 2) -> Path:
    """The retrain config of _setup, its candidate now a tiny transformer (`steps` steps)."""
    (cfg_path.parent / "train.toml").write_text(TINY.format(steps=steps))
    cfg_path.write_text(cfg_path.read_text().replace('family = "popularity"', 'train_config = "train.toml"'))
    return cfg_path


def test_from_scratch_is_recorded_as_asked_not_as_no_production_model(tmp_path: Path, weeks: Path) -> None:  # noqa: F811
    # F1: with production present, --from-scratch was reported and registered as "from scratch (no
    # production model)": the registry's record said production did not exist.
    cfg_path = _setup(tmp_path, weeks, 1)
    assert Retrain(RetrainConfig.load(cfg_path), console=_quiet()).run()["promoted"]  # v1 (popularity)
    shutil.copy(weeks / "normal" / "week-01.csv", tmp_path / "incoming")
    state = Retrain(RetrainConfig.load(_transformer(cfg_path)), from_scratch=True, force=True, console=_quiet()).run()
    assert state["production"] == "1"
    assert state["warm"] == {"warm_start": False, "why": "asked (--from-scratch)"}
    tags = Registry(tmp_path / "registry").version("m", state["version"]).tags
    assert json.loads(tags["warm_start"])["why"] == "asked (--from-scratch)"
    assert json.loads(Path(state["run"], "metrics.json").read_text())["why"] == "asked (--from-scratch)"

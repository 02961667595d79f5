"""Every config under configs/ loads through the typed config its command reads (a config edited by
hand, or left behind by a renamed field, fails here rather than in a user's first run)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from segue.ops.thresholds import load_thresholds
from segue.retrain.loop import load_config as load_retrain_config
from segue.training.pipeline_cli import PipelineRunConfig, pipeline_config
from segue.training.trainer import load_train_config
from segue.tuning.space import SearchSpace

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.toml"))


def kind(data: dict) -> str:
    if "pipeline" in data:
        return "pipeline"
    if "params" in data:
        return "tune"
    if "gate" in data:
        return "retrain"
    if "drift" in data:
        return "validation"
    return "train"


def test_configs_folder_is_not_empty() -> None:
    assert len(CONFIGS) >= 30, [p.name for p in CONFIGS]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_config_loads(path: Path) -> None:
    with path.open("rb") as f:
        data = tomllib.load(f)
    what = kind(data)
    if what == "pipeline":
        cfg = pipeline_config(PipelineRunConfig.load(path), path)
        assert len(cfg.generators) == len(data["pipeline"]["generators"]) > 0, path.name
    elif what == "tune":
        space = SearchSpace.load(path)
        assert space.params, path.name
    elif what == "retrain":
        assert load_retrain_config(path).name == data["name"]
    elif what == "validation":
        t = load_thresholds(path)
        assert t.drift is not None
    else:
        cfg = load_train_config(path)
        assert cfg.name == data["name"]
        # every key of the file's model section is a field of the typed config (extra fields are refused)
        assert set(data.get("model", {})) <= set(cfg.model.model_dump()), path.name

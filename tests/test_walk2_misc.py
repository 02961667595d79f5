"""Walk 2 leftovers (fixer M): retrain's gone files, splits, save guard, continue past the catalogue."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from segue.errors import SegueError
from segue.retrain.loop import Retrain, RetrainConfig
from test_retrain import _quiet, _setup, weeks  # noqa: F401 (weeks: the module's fixture)


def test_retrain_gone_batch_is_named_gone_not_blamed_on_pattern(tmp_path: Path, weeks: Path) -> None:  # noqa: F811
    # R5: a file production was trained on, archived away, was reported as one `pattern` "misses".
    cfg_path = _setup(tmp_path, weeks, 1)
    assert Retrain(RetrainConfig.load(cfg_path), console=_quiet()).run()["promoted"]
    inc = tmp_path / "incoming"
    shutil.move(inc / "week-00.csv", tmp_path / "week-00.csv.bak")
    shutil.copy(weeks / "normal" / "week-01.csv", inc)
    with pytest.raises(SegueError, match=r"files production was trained on are gone: .*week-00\.csv \(restore them"):
        Retrain(RetrainConfig.load(cfg_path), console=_quiet()).run()

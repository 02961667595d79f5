"""Model.save(folder) as a library call: it replaces only an earlier model folder or an empty one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from datahelp import make_store
from segue.data.arrays import SplitData
from segue.data.store import Store
from segue.errors import SegueError
from segue.models.base import load_model
from segue.models.popularity import Popularity


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Popularity:
    path = make_store(tmp_path_factory.mktemp("save") / "s.duckdb", [[0, 1, 2], [1, 2], [2, 3, 0]], [{"kind": "leave_last_out"}])
    with Store.open(path) as s:
        return Popularity().fit(SplitData.load(s, "loo"))


def test_save_refuses_a_folder_with_other_content(model: Popularity, tmp_path: Path) -> None:
    target = tmp_path / "mine"
    (target / "sub").mkdir(parents=True)
    (target / "notes.txt").write_text("keep me")
    with pytest.raises(SegueError, match=r"mine exists and is not a segue model folder"):
        model.save(target)
    assert (target / "notes.txt").read_text() == "keep me" and (target / "sub").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]  # no temporary left behind


def test_save_refuses_a_file(model: Popularity, tmp_path: Path) -> None:
    target = tmp_path / "afile.txt"
    target.write_text("my file")
    with pytest.raises(SegueError, match="afile.txt exists"):
        model.save(target)
    assert target.read_text() == "my file"


def test_save_replaces_an_earlier_model_or_an_empty_folder(model: Popularity, tmp_path: Path) -> None:
    target = tmp_path / "m"
    target.mkdir()
    model.save(target)  # empty folder
    model.save(target)  # earlier model folder
    assert np.array_equal(load_model(target).counts, model.counts)

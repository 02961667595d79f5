"""Loading damaged model folders: a SegueError naming the file and the field, at load time."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from datahelp import make_store
from segue.data.arrays import SequenceArrays, SplitData
from segue.data.store import Store
from segue.errors import ConfigError, SegueError
from segue.models.base import load_model
from segue.models.ease import EASE, EASEConfig
from segue.models.itemknn import ItemKNN

SEQS = [[0, 1, 2, 3], [1, 2, 3], [2, 3, 0, 4], [4, 5, 1], [5, 0, 2]]


@pytest.fixture(scope="module")
def ease_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("load")
    path = make_store(root / "s.duckdb", SEQS, [{"kind": "leave_last_out"}])
    with Store.open(path) as s:
        data = SplitData.load(s, "loo")
        EASE(EASEConfig(l2=5.0)).fit(data).save(root / "ease")
    return root / "ease"


def copy(folder: Path, tmp_path: Path, edit=None) -> Path:
    out = tmp_path / "m"
    shutil.copytree(folder, out)
    if edit is not None:
        (out / "model.toml").write_text(edit((out / "model.toml").read_text()))
    return out


def test_missing_family_names_the_file_and_field(ease_folder: Path, tmp_path: Path) -> None:
    g = copy(ease_folder, tmp_path, lambda t: t.replace('family = "ease"\n', ""))
    with pytest.raises(SegueError, match=r"m/model.toml: field 'family' is missing"):
        load_model(g)


def test_missing_config_table_is_an_error_not_defaults(ease_folder: Path, tmp_path: Path) -> None:
    g = copy(ease_folder, tmp_path, lambda t: t[: t.index("[config]")])
    with pytest.raises(SegueError, match=r"m/model.toml: table \[config\] is missing"):
        load_model(g)


def test_meta_without_a_needed_field_fails_at_load(ease_folder: Path, tmp_path: Path) -> None:
    g = copy(ease_folder, tmp_path, lambda t: "\n".join(x for x in t.splitlines() if not x.startswith("meta")) + "\n")
    with pytest.raises(SegueError, match=r"m/model.toml: field 'meta' lacks 'decay'"):
        load_model(g)


def test_unknown_config_key_is_placed_in_the_config_table(ease_folder: Path, tmp_path: Path) -> None:
    g = copy(ease_folder, tmp_path, lambda t: t + "bogus = 1\n")
    with pytest.raises(ConfigError, match=r"unknown key 'bogus' in \[config\]"):
        load_model(g)


def test_weights_of_another_size_fail_at_load(ease_folder: Path, tmp_path: Path) -> None:
    g = copy(ease_folder, tmp_path)
    n = np.load(g / "weights.npy").shape[0]
    np.save(g / "weights.npy", np.zeros((n + 3, n + 3), np.float32))
    with pytest.raises(SegueError, match=rf"m/weights.npy: shape \({n + 3}, {n + 3}\) does not fit .*vocab.json \({n} items"):
        load_model(g)


def test_intact_folder_still_loads_and_scores(ease_folder: Path) -> None:
    m = load_model(ease_folder)
    assert m.score(SequenceArrays.from_lists([[4, 5]])).shape == (1, len(m.vocab))
    assert isinstance(m, EASE) and not isinstance(m, ItemKNN)

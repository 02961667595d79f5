"""A negative seed (numpy's generators take none) and a run folder that cannot be written are
config errors before training, not tracebacks (walk winput, faults 24 and 26)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from segue.errors import ConfigError
from segue.training.trainer import TrainConfig
from test_trainer import _config, store  # noqa: F401  (the module-scoped store fixture)


def test_a_negative_trainer_or_loader_seed_is_a_config_error(store: Path) -> None:  # noqa: F811
    base = _config(store).model_dump(mode="json")
    for section in ({"seed": -1}, {"loader": {**base["trainer"]["loader"], "seed": -2}}):
        bad = {**base, "trainer": {**base["trainer"], **section}}
        with pytest.raises(ConfigError, match=r"seed"):
            TrainConfig.from_dict(bad)


@pytest.mark.skipif(sys.platform != "linux" or os.geteuid() != 0 or not Path("/usr/bin/setpriv").exists(), reason="needs root and setpriv")
def test_a_run_folder_that_cannot_be_written_is_one_line(store: Path, tmp_path: Path) -> None:  # noqa: F811
    ro = tmp_path / "ro"
    ro.mkdir()
    cfg = _config(store)
    cfg.trainer = cfg.trainer.model_copy(update={"max_steps": 2, "eval_every": 2, "checkpoint_every": 2})
    path = tmp_path / "t.toml"
    cfg.save(path)
    ro.chmod(0o555)
    code = f"from segue.training.trainer import train; train({str(path)!r}, run_dir={str(ro / 'run')!r})"
    res = subprocess.run(
        ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--inh-caps=-dac_override,-dac_read_search", sys.executable, "-c", code],
        capture_output=True, text=True, timeout=300,
    )
    assert res.returncode != 0
    assert f"{ro / 'run' / 'config.toml'}: cannot write here" in res.stderr, res.stderr[-2000:]
    assert "PermissionError" not in res.stderr


def test_a_damaged_vocab_json_is_named(tmp_path: Path) -> None:
    import numpy as np

    from segue.data.vocab import Vocabulary
    from segue.errors import SegueError

    v = Vocabulary(item_ids=np.array([-1, -1, -1, -1, 7, 9]), counts=np.array([0, 0, 0, 0, 3, 1]),
                   external_ids=[None] * 4 + ["a", "b"], split="loo")
    path = tmp_path / "vocab.json"
    v.save(path)
    assert Vocabulary.load(path).external_ids == v.external_ids
    text = path.read_text()
    path.write_text(text[: len(text) // 2])  # cut short
    with pytest.raises(SegueError, match=rf"{path}: line \d+: not valid JSON"):
        Vocabulary.load(path)
    path.write_text('{"item_ids": [1], "counts": [1]}')
    with pytest.raises(SegueError, match=rf"{path}: lacks 'external_ids', 'split'"):
        Vocabulary.load(path)

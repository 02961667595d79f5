"""`segue train` for a person: config mistakes caught before anything is written, the limit that
stops a run named, data that contradicts a setting warned about, and readable progress lines."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from datahelp import make_store
from segue.cli import app
from segue.errors import ConfigError
from segue.training.trainer import TrainConfig, train

runner = CliRunner()


def _cfg(store: Path, **trainer: object) -> dict:
    return {
        "name": "t",
        "data": {"store": str(store), "split": "loo"},
        "model": {"n_layers": 1, "n_heads": 2, "d_model": 8, "d_ff": 16, "dropout": 0.0, "context_length": 6},
        "loss": {"kind": "logq", "n_negatives": 6, "n_inbatch": 4},
        "optim": {"warmup_steps": 2},
        "trainer": {
            "max_steps": 8,
            "eval_every": 4,
            "checkpoint_every": 4,
            "log_every": 2,
            "patience": None,
            "loader": {"batch_size": 8, "bucketing": False, "prefetch_threads": 0},
        }
        | trainer,
    }


def _write(path: Path, cfg: dict) -> Path:
    TrainConfig.from_dict(cfg).save(path)
    return path


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(0)
    seqs = [[int(x) for x in (rng.integers(0, 10) + np.arange(rng.integers(4, 10))) % 24] for _ in range(40)]
    path = tmp_path_factory.mktemp("store") / "s.duckdb"
    return make_store(path, seqs, [{"kind": "leave_last_out", "name": "loo"}, {"kind": "random_sequence", "name": "rs"}])


@pytest.fixture(scope="module")
def repeats_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # every sequence plays its first two items again and again: most training events repeat
    seqs = [[i % 9, (i + 1) % 9] * 3 + [(i + 2) % 9, (i + 3) % 9] for i in range(12)]
    path = tmp_path_factory.mktemp("rep") / "r.duckdb"
    return make_store(path, seqs, [{"kind": "leave_last_out", "name": "loo"}])


def test_wrong_split_name_lists_the_splits_and_writes_nothing(store: Path, tmp_path: Path) -> None:
    cfg = _cfg(store)
    cfg["data"]["split"] = "leave_last_out"
    cfg_path = _write(tmp_path / "c.toml", cfg | {"runs_dir": str(tmp_path / "runs")})
    res = runner.invoke(app, ["train", "--config", str(cfg_path)])
    assert res.exit_code == 2, res.output
    out = " ".join(res.output.split())
    assert "no split 'leave_last_out'" in out and "'loo' (leave_last_out)" in out and "'rs' (random_sequence)" in out
    assert "Traceback" not in res.output
    assert not (tmp_path / "runs").exists()  # no run folder to hide the mistake on the next try
    # fixing the name then trains (no "holds a run with another config")
    cfg["data"]["split"] = "loo"
    _write(cfg_path, cfg | {"runs_dir": str(tmp_path / "runs")})
    res = runner.invoke(app, ["train", "--config", str(cfg_path)])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "runs" / "t" / "metrics.json").read_text())["steps"] == 8


def test_other_config_mistakes_write_nothing(store: Path, tmp_path: Path) -> None:
    cfg = TrainConfig.from_dict(_cfg(store) | {"trainer": _cfg(store)["trainer"] | {"metric": "ndcg@7"}})
    with pytest.raises(ConfigError, match="metric"):
        train(cfg, run_dir=tmp_path / "run")
    with pytest.raises(ConfigError, match="family"):
        from segue.training.trainer import parse_train_config

        parse_train_config(_cfg(store) | {"family": "ease"})


def test_resume_names_the_binding_limit_and_max_steps_raises_it(store: Path, tmp_path: Path) -> None:
    # 39 training rows at batch 8: 5 batches an epoch, so max_epochs 1 binds before max_steps 50
    cfg_path = _write(tmp_path / "c.toml", _cfg(store, max_steps=50, max_epochs=1.0) | {"runs_dir": str(tmp_path)})
    res = runner.invoke(app, ["train", "--config", str(cfg_path)])
    assert res.exit_code == 0, res.output
    m = json.loads((tmp_path / "t" / "metrics.json").read_text())
    steps = m["steps"]
    assert m["stop_reason"] == "max_epochs" and m["limit"] == "max_epochs" and steps < 50
    assert "stopped by max_epochs = 1.0" in " ".join(res.output.split())

    res = runner.invoke(app, ["train", "--config", str(cfg_path)])  # resume: nothing left to do
    assert res.exit_code == 0, res.output
    out = " ".join(res.output.split())
    assert f"nothing to train: the run already stopped at step {steps} by max_epochs = 1.0 (= {steps} steps" in out
    assert "nan" not in out

    res = runner.invoke(app, ["train", "--config", str(cfg_path), "--max-steps", str(steps + 4)])
    assert res.exit_code == 0, res.output
    assert "trainer.max_epochs = 1.0 is lifted" in " ".join(res.output.split())
    m = json.loads((tmp_path / "t" / "metrics.json").read_text())
    assert m["resumed_from"] == steps and m["steps"] == steps + 4 and m["stop_reason"] == "max_steps"


def test_min_epochs_lifts_max_steps_and_is_named(store: Path, tmp_path: Path) -> None:
    # 5 batches an epoch: min_epochs 2 lifts max_steps 3 to 10 steps
    cfg_path = _write(tmp_path / "c.toml", _cfg(store, max_steps=3, min_epochs=2.0) | {"runs_dir": str(tmp_path)})
    res = runner.invoke(app, ["train", "--config", str(cfg_path)])
    assert res.exit_code == 0, res.output
    m = json.loads((tmp_path / "t" / "metrics.json").read_text())
    assert m["steps"] == m["total_steps"] == 10 and m["stop_reason"] == "min_epochs"
    assert "stopped by min_epochs = 2.0 (= 10 steps, above max_steps = 3)" in " ".join(res.output.split())


def test_data_that_contradicts_a_setting_is_warned_about(store: Path, repeats_store: Path, tmp_path: Path) -> None:
    from rich.console import Console

    cfg = _cfg(store, max_steps=2)
    cfg["trainer"]["loader"]["batch_size"] = 64  # 40 sequences
    f = io.StringIO()
    train(TrainConfig.from_dict(cfg), run_dir=tmp_path / "a", console=Console(file=f, width=60))
    text = " ".join(f.getvalue().split())
    assert "batch_size is 64 but the training part has 40 sequences" in text
    assert "validated only at its last step" in text  # eval_every 4 > 2 steps

    cfg = _cfg(repeats_store, max_steps=2, eval_every=2)
    cfg["loss"] = {"kind": "full", "mask_seen": True}
    f2 = io.StringIO()
    train(TrainConfig.from_dict(cfg), run_dir=tmp_path / "b", console=Console(file=f2, width=60))
    text = " ".join(f2.getvalue().split())
    share = re.search(r"but (\d+)% of training events repeat", text)
    assert share is not None and int(share.group(1)) >= 25, text


def test_progress_lines_in_a_log_are_one_line_per_validation(store: Path, tmp_path: Path) -> None:
    from rich.console import Console

    f = io.StringIO()
    # not a terminal, and narrow: a rich console would wrap in the middle of a figure
    train(TrainConfig.from_dict(_cfg(store, progress=True)), run_dir=tmp_path / "r", console=Console(file=f, width=40))
    lines = [ln for ln in f.getvalue().splitlines() if ln.startswith("step ")]
    assert len(lines) == 2, f.getvalue()  # steps 4 and 8
    for ln, step in zip(lines, (4, 8), strict=True):
        assert ln.startswith(f"step {step}/8  loss ")
        assert re.search(r"valid ndcg@10 \d\.\d{4} \(best \d\.\d{4}\)", ln)
        assert re.search(r"[\d,]+ tokens/s", ln) and "ETA " in ln and "elapsed " in ln
    assert lines[-1].endswith("ETA 0:00")


def test_bar_total_and_eta_follow_the_limit_that_binds() -> None:
    from segue.training.trainer import Progress

    p = Progress(False, total=100_000, start=0, max_minutes=2.0, tty=False)
    # 400 steps in 60 s: the time limit ends the run near step 800, in 60 s, not 100,000 steps from now
    assert p.expected_total(400, 60.0) == 800
    assert p.eta_seconds(400, 60.0) == pytest.approx(60.0)
    q = Progress(False, total=1000, start=0, tty=False)
    assert q.expected_total(400, 60.0) == 1000 and q.eta_seconds(400, 60.0) == pytest.approx(90.0)


@pytest.mark.parametrize(
    ("limits", "note"),
    [
        # 5 batches an epoch: 4 epochs (20 steps) and 1 epoch (5) bind neither side of --max-steps 8
        ({"max_epochs": 4.0, "min_epochs": 1.0}, None),
        ({"max_epochs": 1.0}, "trainer.max_epochs = 1.0 is lifted: it would have stopped the run at step 5"),
        ({"min_epochs": 2.0}, "trainer.min_epochs = 2.0 is lifted: it would have kept the run going to step 10"),
    ],
)
def test_max_steps_says_it_lifts_an_epoch_limit_only_when_that_binds(
    store: Path, tmp_path: Path, limits: dict[str, float], note: str | None
) -> None:
    # `--max-steps 60` had said "max_epochs = 200.0 is lifted" although 200 epochs are ~3000 steps
    cfg_path = _write(tmp_path / "c.toml", _cfg(store, max_steps=50, **limits) | {"runs_dir": str(tmp_path)})
    res = runner.invoke(app, ["train", "--config", str(cfg_path), "--max-steps", "8"])
    assert res.exit_code == 0, res.output
    out = " ".join(res.output.split())
    m = json.loads((tmp_path / "t" / "metrics.json").read_text())
    assert m["steps"] == 8 and m["stop_reason"] == "max_steps", out
    if note is None:
        assert "lifted" not in out, out
    else:
        assert note in out and out.count("lifted") == 1, out


def test_metric_typo_is_refused_before_the_run_folder_is_written(store: Path, tmp_path: Path) -> None:
    # The metric was checked at the first validation, after config.toml, vocab.json and a
    # checkpoint folder were written: the corrected config was then refused as "another config".
    cfg = _cfg(store, metric="ndgc@10") | {"runs_dir": str(tmp_path / "runs")}
    cfg_path = _write(tmp_path / "c.toml", cfg)
    res = runner.invoke(app, ["train", "--config", str(cfg_path)])
    assert res.exit_code == 2, res.output
    out = " ".join(res.output.split())
    assert f"{cfg_path}: trainer: field 'metric' is 'ndgc@10'" in out and "ndcg@10" in out, out
    assert not (tmp_path / "runs").exists()
    _write(cfg_path, _cfg(store) | {"runs_dir": str(tmp_path / "runs")})
    res = runner.invoke(app, ["train", "--config", str(cfg_path)])
    assert res.exit_code == 0, res.output


def _rated_store(path: Path, bad_user: int | None) -> Path:
    rng = np.random.default_rng(0)
    seqs = [[int(i) for i in rng.choice(24, size=6, replace=False)] for _ in range(40)]
    ratings: list[list[float | None]] = [[4.0] * len(s) for s in seqs]
    if bad_user is not None:
        ratings[bad_user][:3] = [-40.0] * 3  # the fold-in input holds the first events
    return make_store(path, seqs, [{"kind": "strong", "name": "strong", "valid_users": 8, "test_users": 8}], rating=ratings)


def test_autoencoder_rating_outside_the_scale_names_store_user_and_item(tmp_path: Path) -> None:
    from segue.data.splits import Part
    from segue.data.store import Store

    with Store.open(_rated_store(tmp_path / "probe.duckdb", None)) as s:
        from segue.data.arrays import SplitData

        valid_user = int(SplitData.load(s, "strong").targets(Part.VALID).nonempty()[0])
    path = _rated_store(tmp_path / "s.duckdb", valid_user)  # the same split: the rating only differs
    cfg = {
        "family": "autoencoder",
        "name": "ae",
        "runs_dir": str(tmp_path / "runs"),
        "data": {"store": str(path), "split": "strong"},
        "model": {"hidden": [8], "bottleneck": 4, "rating_scale": [1, 5]},
        "trainer": {"max_steps": 2, "eval_every": 1, "metric": "ndcg@10", "progress": False, "loader": {"batch_size": 8}},
    }
    from segue.training.trainer import parse_train_config

    cfg_path = tmp_path / "ae.toml"
    parse_train_config(cfg).save(cfg_path)
    res = runner.invoke(app, ["train", "--config", str(cfg_path)])
    assert res.exit_code == 2, res.output
    out = " ".join(res.output.split())
    with Store.open(path) as s:
        items = s.items_table().to_pylist()
    assert f"store {path}" in out and f"user 'u{valid_user}'" in out, out
    assert re.search(r"rating -40 of user 'u\d+', item 'i\d+' is outside the rating scale \[1, 5\]", out), out
    assert any(f"item '{r['external_id']}'" in out for r in items)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("option", "value", "expected"),
    [("--max-steps", "-3", ">= 1"), ("--max-epochs", "-1", "> 0"), ("--max-minutes", "0", "> 0")],
)
def test_limit_overrides_out_of_range_are_usage_errors(store: Path, tmp_path: Path, option: str, value: str, expected: str) -> None:
    # these reached TrainerConfig's validation and ended in a pydantic ValidationError traceback
    cfg_path = _write(tmp_path / "c.toml", _cfg(store) | {"runs_dir": str(tmp_path / "runs")})
    res = runner.invoke(app, ["train", "--config", str(cfg_path), option, value])
    assert res.exit_code == 2, res.output
    out = " ".join(res.output.split())
    assert option in out and expected in out and "Traceback" not in out and "ValidationError" not in out
    assert not (tmp_path / "runs").exists()


def test_config_folder_and_run_file_are_named(store: Path, tmp_path: Path) -> None:
    res = runner.invoke(app, ["train", "--config", str(tmp_path)])  # IsADirectoryError before
    assert res.exit_code == 2, res.output
    assert f"{tmp_path}: is a folder (expected a train config .toml file)" in " ".join(res.output.split())
    cfg_path = _write(tmp_path / "c.toml", _cfg(store))
    (tmp_path / "runs_file").write_text("x")
    res = runner.invoke(app, ["train", "--config", str(cfg_path), "--run", str(tmp_path / "runs_file")])  # FileExistsError before
    assert res.exit_code == 2, res.output
    assert f"{tmp_path / 'runs_file'}: is a file (expected a run folder)" in " ".join(res.output.split())
    assert (tmp_path / "runs_file").read_text() == "x"


def test_a_misspelt_key_names_its_table_the_keys_it_takes_and_the_closest(store: Path, tmp_path: Path) -> None:
    # pydantic's "field 'model.d_modle': Extra inputs are not permitted" said neither
    cfg_path = _write(tmp_path / "c.toml", _cfg(store))
    cfg_path.write_text(cfg_path.read_text().replace("d_model =", "d_modle ="))
    res = runner.invoke(app, ["train", "--config", str(cfg_path)])
    assert res.exit_code == 2, res.output
    out = " ".join(res.output.split())
    assert f"{cfg_path}: unknown key 'd_modle' in [model] (expected one of: n_layers, n_heads, d_model," in out
    assert "did you mean 'd_model'?" in out and "Extra inputs" not in out
    # nested tables and other configs read the same way (one place: segue.config.Config.from_dict)
    from segue.ops.thresholds import Thresholds
    from segue.retrain.loop import RetrainConfig

    with pytest.raises(ConfigError, match=r"unknown key 'histroy_length' in \[drift\] \(expected one of: .*history_length.*; did you mean 'history_length'\?\)"):
        Thresholds.from_dict({"drift": {"histroy_length": 0.1}}, source="th.toml")
    with pytest.raises(ConfigError, match=r"r.toml: unknown key 'famly' at the top level \(.*did you mean 'family'\?\)"):
        RetrainConfig.from_dict({"famly": "ease"}, source="r.toml")
    with pytest.raises(ConfigError, match=r"unknown key 'batch_sise' in \[trainer.loader\] .*did you mean 'batch_size'\?"):
        TrainConfig.from_dict(_cfg(store, loader={"batch_sise": 8}))


@pytest.mark.parametrize(
    ("args", "option"),
    [(["-n", "0"], "'-n'"), (["-n", "501"], "'-n'"), (["--top-k", "0"], "'--top-k'"), (["--temperature", "0"], "'--temperature'")],
)
def test_continue_options_out_of_range_are_usage_errors(tmp_path: Path, args: list[str], option: str) -> None:
    """`segue continue -n 0` printed nothing and exited 0 (the HTTP API refuses n = 0 with a 422)."""
    res = CliRunner().invoke(app, ["continue", "--model", str(tmp_path / "none"), "--seed", "a", *args])
    assert res.exit_code == 2 and option in res.output, res.output

"""Walk s10 (operations loop): retrain knows its batch files by content (F9)."""

from __future__ import annotations

import json
from pathlib import Path

from segue.ops.registry import Registry
from segue.retrain.loop import Retrain, RetrainConfig
from test_retrain import _quiet, _setup, weeks  # noqa: F401 (weeks: the module's fixture)


def test_a_known_file_that_changed_is_new_again(tmp_path: Path, weeks: Path) -> None:  # noqa: F811
    # F9: a file production was trained on, changed later (corrected, re-delivered, or still being
    # copied when the cycle ran), read as "nothing new", and its new events later entered training
    # without ever being validated.
    cfg = RetrainConfig.load(_setup(tmp_path, weeks, 1))
    first = Retrain(cfg, console=_quiet()).run()
    assert first["promoted"]
    reg = Registry(tmp_path / "registry")
    week0 = str((tmp_path / "incoming" / "week-00.csv").resolve())
    recorded = json.loads(reg.version("m", "production").tags["file_sha256"])
    assert set(recorded) == {week0}
    # Unchanged: nothing new.
    assert Retrain(cfg, console=_quiet()).run()["stop"].startswith("nothing new")
    # More events appended to the known file: it is validated and trained on again.
    extra = (weeks / "normal" / "week-01.csv").read_text().splitlines()[1:300]
    with open(week0, "a") as f:
        f.write("\n".join(extra) + "\n")
    again = Retrain(cfg, console=_quiet(), force=True).run()
    assert again.get("stop") is None, again.get("stop")
    assert again["changed_files"] == [week0] and again["new_files"] == [week0]
    assert "week-00.csv" in again["validation"]  # validated, not taken unseen
    tags = reg.version("m", again["version"]).tags
    assert json.loads(tags["files"]) == [week0]
    assert json.loads(tags["file_sha256"])[week0] != recorded[week0]


def test_a_pattern_that_misses_the_batches_is_an_error_not_nothing_new(tmp_path: Path, weeks: Path) -> None:  # noqa: F811
    # F16: pattern "*.CSV" matched nothing: "nothing new", exit 0, the new batch hidden.
    import pytest

    from segue.errors import ConfigError

    cfg_path = _setup(tmp_path, weeks, 1)
    assert Retrain(RetrainConfig.load(cfg_path), console=_quiet()).run()["promoted"]
    text = cfg_path.read_text()
    cfg_path.write_text(text.replace('incoming = "incoming"', 'incoming = "incoming"\npattern = "*.CSV"'))
    with pytest.raises(ConfigError, match=r"field 'pattern': '\*\.CSV' .* misses week-00\.csv"):
        Retrain(RetrainConfig.load(cfg_path), console=_quiet()).run()
    # No production yet, a folder of files the pattern does not match: "nothing new" (a weekly
    # job must not fail until the first batch lands), with a note naming the files (walk2 note).
    other = tmp_path / "other"
    other_cfg = _setup(other, weeks, 1)
    other_cfg.write_text(other_cfg.read_text().replace('incoming = "incoming"', 'incoming = "incoming"\npattern = "*.tsv"'))
    state = Retrain(RetrainConfig.load(other_cfg), console=_quiet()).run()
    assert state["stop"].startswith("nothing new") and not state.get("promoted")
    assert "pattern '*.tsv' matches none of the 1 file(s)" in state["stop"] and "week-00.csv" in state["stop"]
    # A floor no rate can reach.
    cfg_path.write_text(text.replace("floor = 0.01", "floor = 2"))
    with pytest.raises(ConfigError, match="field 'gate.floor': 2.0 can never be reached"):
        RetrainConfig.load(cfg_path).check()


def test_retrain_json_records_the_error(tmp_path: Path, weeks: Path) -> None:  # noqa: F811
    # F15: the --json file of a failed cycle had no error: it read like a run still going.
    import shutil

    from typer.testing import CliRunner

    from segue.cli import app

    cfg_path = _setup(tmp_path, weeks, 1)
    assert Retrain(RetrainConfig.load(cfg_path), console=_quiet()).run()["promoted"]
    shutil.copy(weeks / "reversed" / "week-02.csv", tmp_path / "incoming")
    r = CliRunner().invoke(app, ["retrain", str(cfg_path), "--json", str(tmp_path / "out.json")])
    assert r.exit_code == 2, r.output
    state = json.loads((tmp_path / "out.json").read_text())
    assert state["error"].startswith("retrain aborted: week-02.csv failed validation") and "interrupted" not in state

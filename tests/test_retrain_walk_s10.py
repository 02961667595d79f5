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

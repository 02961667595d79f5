"""`segue retrain`: the gate as a pure function, warm start and vocabulary mapping, a real
retrain cycle on weekly synthetic batches (a baseline family keeps it fast), the drift abort, the
broken-candidate drill, and a crash at each step in a real subprocess (SIGKILL) leaving the
registry's production untouched."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from segue.data.arrays import SequenceArrays
from segue.data.vocab import N_SPECIAL, UNK, Vocabulary
from segue.ops.registry import Registry
from segue.retrain.evaluate import GateConfig, Revocabulary, gate
from segue.retrain.loop import STEPS, Retrain, RetrainAborted, RetrainConfig
from segue.retrain.train import row_map, warm_table

ROOT = Path(__file__).resolve().parents[1]


# --- the gate ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cand", "prod", "promote"),
    [
        (0.20, 0.20, True),  # equal
        (0.196, 0.20, True),  # within the tolerance (0.005)
        (0.194, 0.20, False),  # beyond it
        (0.30, None, True),  # first version: the floor only
        (0.04, None, False),  # below the floor (0.05)
        (0.04, 0.03, False),  # better than production but below the floor
        (float("nan"), 0.1, False),  # nothing scored
        (0.10, float("nan"), True),  # production unmeasurable: counts as none
    ],
)
def test_gate(cand: float, prod: float | None, promote: bool) -> None:
    d = gate(cand, prod, GateConfig(metric="ndcg@10", tolerance=0.005, floor=0.05))
    assert d.promote is promote
    assert d.verdict == ("promote" if promote else "keep")
    assert d.reasons  # always says why
    if not promote and prod is not None and cand == cand and cand >= 0.05:
        assert "tolerance" in d.reasons[0]


# --- vocabulary mapping and warm start -----------------------------------------------------


def _vocab(ids: list[str], split: str = "s") -> Vocabulary:
    n = len(ids)
    return Vocabulary(
        item_ids=np.array([-1] * N_SPECIAL + list(range(n)), dtype=np.int64),
        counts=np.array([0] * N_SPECIAL + [1] * n, dtype=np.int64),
        external_ids=[None] * N_SPECIAL + ids,
        split=split,
    )


def test_row_map_and_warm_table() -> None:
    old, new = _vocab(["a", "b", "c"]), _vocab(["c", "d", "a"])
    m = row_map(old, new)
    assert m.tolist() == list(range(N_SPECIAL)) + [N_SPECIAL + 2, -1, N_SPECIAL + 0]
    old_t = np.arange(len(old) * 2, dtype=np.float32).reshape(len(old), 2)
    fresh = -np.ones((len(new), 2), np.float32)
    t = warm_table(old_t, fresh, m)
    np.testing.assert_array_equal(t[N_SPECIAL], old_t[N_SPECIAL + 2])  # c
    np.testing.assert_array_equal(t[N_SPECIAL + 1], fresh[N_SPECIAL + 1])  # d is new: fresh row
    np.testing.assert_array_equal(t[N_SPECIAL + 2], old_t[N_SPECIAL])  # a
    np.testing.assert_array_equal(t[:N_SPECIAL], old_t[:N_SPECIAL])


def test_warm_start_network_copies_shared_rows_and_weights(tmp_path: Path) -> None:
    from flax import nnx

    from segue.models.transformer import ModelConfig, SequenceTransformer, save_weights
    from segue.retrain.train import warm_start_network

    cfg = ModelConfig(n_layers=1, n_heads=1, d_model=8, d_ff=16, context_length=8)
    old, new = _vocab(["a", "b", "c", "gone"]), _vocab(["c", "new", "a"])
    prod = SequenceTransformer(cfg, len(old), nnx.Rngs(1))
    save_weights(prod, tmp_path / "w.npz")
    cand = SequenceTransformer(cfg, len(new), nnx.Rngs(2))
    fresh_new_row = np.asarray(cand.item_emb[...][N_SPECIAL + 1]).copy()
    report = warm_start_network(cand, tmp_path / "w.npz", old, new)
    assert (report.rows_copied, report.rows_fresh, report.rows_dropped) == (2, 1, 2)
    assert report.params_skipped == []
    pe, ce = np.asarray(prod.item_emb[...]), np.asarray(cand.item_emb[...])
    np.testing.assert_array_equal(ce[N_SPECIAL], pe[N_SPECIAL + 2])  # c
    np.testing.assert_array_equal(ce[N_SPECIAL + 2], pe[N_SPECIAL])  # a
    np.testing.assert_array_equal(ce[N_SPECIAL + 1], fresh_new_row)
    np.testing.assert_array_equal(np.asarray(cand.blocks[0].qkv.kernel[...]), np.asarray(prod.blocks[0].qkv.kernel[...]))


class _Fixed:
    """A model whose score of item token t is t + 100 * (number of <unk> history events)."""

    def __init__(self, vocab: Vocabulary) -> None:
        self.vocab = vocab

    def score(self, h: SequenceArrays, rows: np.ndarray | None = None) -> np.ndarray:
        rows = np.arange(len(h)) if rows is None else rows
        base = np.arange(len(self.vocab), dtype=np.float32)[None, :]
        n_unk = np.array([(h.row(r) == UNK).sum() for r in rows], dtype=np.float32)[:, None]
        return base + 100 * n_unk


def test_revocabulary_moves_scores_to_the_new_tokens() -> None:
    old, new = _vocab(["a", "b", "c"]), _vocab(["c", "d", "a"])
    r = Revocabulary(_Fixed(old), new)
    # history [d, c] in new tokens: d is unknown to the old model (<unk>), c is its old token + 2
    h = SequenceArrays.from_lists([[N_SPECIAL + 1, N_SPECIAL]])
    s = r.score(h)
    assert s.shape == (1, len(new))
    assert s[0, N_SPECIAL] == N_SPECIAL + 2 + 100  # c keeps its old score
    assert s[0, N_SPECIAL + 2] == N_SPECIAL + 100  # a
    assert np.isneginf(s[0, N_SPECIAL + 1])  # d: never seen by production


# --- a retrain cycle on weekly batches -------------------------------------------------------


@pytest.fixture(scope="module")
def weeks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from segue.data.sources.synthetic import SyntheticConfig, write_weekly_batches

    tmp = tmp_path_factory.mktemp("weeks")
    cfg = SyntheticConfig(n_playlists=300, n_items=300, mean_length=24, n_genres=3)
    write_weekly_batches(cfg, tmp / "normal", 3)
    write_weekly_batches(cfg, tmp / "reversed", 3, reverse_week=2)
    return tmp


def _setup(root: Path, weeks: Path, n: int) -> Path:
    (root / "incoming").mkdir(parents=True)
    for w in range(n):
        shutil.copy(weeks / "normal" / f"week-{w:02d}.csv", root / "incoming")
    cfg = root / "retrain.toml"
    cfg.write_text(
        f'''name = "m"
registry = "registry"
work_dir = "work"
incoming = "incoming"
source_options = {{ user = "user", item = "item", timestamp = "ts" }}
thresholds = "{ROOT / 'configs' / 'validation-weekly.toml'}"
family = "popularity"
[gate]
tolerance = 0.005
floor = 0.01
'''
    )
    return cfg


def _quiet() -> object:
    from rich.console import Console

    return Console(quiet=True)


def test_retrain_cycle_drift_abort_and_broken_candidate(tmp_path: Path, weeks: Path) -> None:
    cfg_path = _setup(tmp_path, weeks, 1)
    cfg = RetrainConfig.load(cfg_path)
    first = Retrain(cfg, console=_quiet()).run()
    assert first["promoted"] and first["version"] == "1" and first["production"] is None
    assert first["validation"] == {}  # nothing to compare with yet
    reg = Registry(tmp_path / "registry")
    assert reg.alias("m", "production") == "1"

    # nothing new: no attempt
    assert Retrain(cfg, console=_quiet()).run()["stop"].startswith("nothing new")

    # week 1: validated against week 0, trained, evaluated against production on week 1
    shutil.copy(weeks / "normal" / "week-01.csv", tmp_path / "incoming")
    second = Retrain(cfg, console=_quiet()).run()
    assert second["validation"]["week-01.csv"]["passed"]
    assert set(second["figures"]) >= {"candidate", "production", "_comparison"}
    assert second["decision"]["production"] == pytest.approx(second["figures"]["production"]["ndcg@10"][0])
    v2 = reg.version("m", second["version"])
    assert v2.parent == "1" and "candidate" in v2.aliases
    assert v2.tags["store_checksum"] == second["store_checksum"]
    assert reg.alias("m", "production") == ("2" if second["promoted"] else "1")
    prod_before = reg.alias("m", "production")

    # week 2 with popularity reversed: the retrain aborts, naming the feature; nothing registered
    shutil.copy(weeks / "reversed" / "week-02.csv", tmp_path / "incoming")
    with pytest.raises(RetrainAborted, match="popularity"):
        Retrain(cfg, console=_quiet()).run()
    assert reg.alias("m", "production") == prod_before and len(reg.versions("m")) == 2

    # the true week 2, with a deliberately broken candidate (training item ids shuffled): it is
    # registered with the gate's refusal, and production stays
    shutil.copy(weeks / "normal" / "week-02.csv", tmp_path / "incoming")
    broken = Retrain(cfg, drill="shuffle_items", console=_quiet()).run()
    assert broken["decision"]["verdict"] == "keep" and not broken["promoted"]
    assert broken["figures"]["candidate"]["ndcg@10"][0] < broken["figures"]["production"]["ndcg@10"][0] - 0.005
    assert reg.alias("m", "production") == prod_before
    assert '"verdict": "keep"' in reg.version("m", broken["version"]).tags["decision"]


def test_each_week_is_validated_against_the_week_before_so_a_gradual_shift_does_not_add_up(
    tmp_path: Path, weeks: Path
) -> None:
    """Weeks 1 and 2 arrive while production was trained on week 0 only (as after a week whose
    candidate was not promoted): week 2 is compared with week 1, not week 0, and passes; against
    week 0 the two weeks' gradual shift adds up past the popularity threshold."""
    from segue.ops.eventset import Spec
    from segue.ops.thresholds import load_thresholds
    from segue.ops.validation import validate

    cfg = RetrainConfig.load(_setup(tmp_path, weeks, 3))
    files = [str((tmp_path / "incoming" / f"week-{w:02d}.csv").resolve()) for w in range(3)]
    # What gather finds when production (version 1) was trained on week 0 alone; the validate step
    # itself runs as in a retrain (no registry needed: the state names production's files).
    state = {"attempt": str(tmp_path / "attempt"), "seconds": {}, "steps_done": [], "production": "1",
             "known_files": files[:1], "new_files": files[1:]}
    r = Retrain(cfg, console=_quiet(), state=state)
    r.run_step("validate")
    v = r.state["validation"]
    assert v["week-01.csv"]["reference"] == "week-00.csv" and v["week-01.csv"]["passed"]
    assert v["week-02.csv"]["reference"] == "week-01.csv" and v["week-02.csv"]["passed"], v["week-02.csv"]
    csv = {"user": "user", "item": "item", "timestamp": "ts"}
    week0, week2 = (Spec(kind="csv", path=str(weeks / "normal" / f"week-{w:02d}.csv"), options=csv) for w in (0, 2))
    accumulated = validate(week0, week2, load_thresholds(ROOT / "configs" / "validation-weekly.toml"))
    assert [f.name for f in accumulated.failures()] == ["popularity"]  # what the old reference did


@pytest.fixture(scope="module")
def crash_setup(tmp_path_factory: pytest.TempPathFactory, weeks: Path) -> Path:
    root = tmp_path_factory.mktemp("crash")
    cfg = _setup(root, weeks, 1)
    Retrain(RetrainConfig.load(cfg), console=_quiet()).run()  # production v1
    shutil.copy(weeks / "normal" / "week-01.csv", root / "incoming")
    return cfg


# Every step, each in a real subprocess killed (SIGKILL) as the step starts. Up to `register`
# only the attempt folder is written; `register` creates the candidate version in one call and
# `promote` moves the alias in one call, so a crash at or before `promote` leaves production at 1.
# `reload` comes after the promotion (it only confirms what the server serves): killed there,
# production is the new, complete version. It runs last, as it moves this module's production.
CRASH_STEPS = STEPS
assert CRASH_STEPS[-1] == "reload"


@pytest.mark.parametrize("step", CRASH_STEPS)
def test_crash_at_each_step_leaves_production_untouched(crash_setup: Path, step: str) -> None:
    import json

    reg = Registry(crash_setup.parent / "registry")
    before = {v.version: v.aliases for v in reg.versions("m")}
    env = dict(os.environ, SEGUE_RETRAIN_CRASH_AT=step, PYTHONPATH=str(ROOT / "src"))
    proc = subprocess.run(
        [sys.executable, "-c", "from segue.cli import app; app()", "retrain", str(crash_setup)],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == -9, proc.stdout + proc.stderr  # killed by the hook
    after = {v.version: v.aliases for v in reg.versions("m")}
    if STEPS.index(step) <= STEPS.index("register"):
        assert after == before  # not even a candidate version
        assert reg.alias("m", "production") == "1"
        return
    new = set(after) - set(before)  # the candidate was registered, complete, with its decision
    assert len(new) == 1
    version = new.pop()
    decision = json.loads(reg.version("m", version).tags["decision"])
    if step == "promote":
        assert reg.alias("m", "production") == "1"
    else:  # reload: the promotion was made before the crash
        assert reg.alias("m", "production") == (version if decision["promote"] else "1")


def test_weekly_batches_continue_users_with_drift() -> None:
    from segue.data.sources.synthetic import WEEK, WEEKS_START, SyntheticConfig, weekly_batches

    cfg = SyntheticConfig(n_playlists=200, n_items=300, mean_length=24, n_genres=3)
    plain = [t.to_pydict() for t in weekly_batches(cfg, 3)]
    again = [t.to_pydict() for t in weekly_batches(cfg, 3)]
    assert plain == again  # deterministic by seed
    for w, t in enumerate(plain):
        assert all(WEEKS_START + w * WEEK <= x < WEEKS_START + (w + 1) * WEEK for x in t["ts"])
        for u in set(t["user"][:50]):  # each user's events are in time order
            ts = [x for x, v in zip(t["ts"], t["user"], strict=True) if v == u]
            assert ts == sorted(ts)
    assert len(set(plain[0]["user"]) & set(plain[2]["user"])) > 150  # the same users, week after week
    ids = [{int(i.rsplit(":", 1)[1]) for i in t["item"]} for t in plain]
    assert max(ids[0]) < 300 and max(ids[1]) >= 300 and max(ids[2]) >= 306  # new items from week 1 on
    rev = [t.to_pydict() for t in weekly_batches(cfg, 3, reverse_week=2)]
    assert rev[:2] == plain[:2] and rev[2]["user"] == plain[2]["user"] and rev[2]["item"] != plain[2]["item"]


# --- the command's report and its input --------------------------------------------------------


def test_cli_names_the_version_production_keeps_when_the_gate_refuses(tmp_path: Path, weeks: Path) -> None:
    """The gate refuses the drill's broken candidate (version 2): the last line names production's
    version 1, which stays served, and the candidate separately (it used to say 'kept production:
    version 2', the refused one)."""
    from typer.testing import CliRunner

    from segue.cli import app

    cfg_path = _setup(tmp_path, weeks, 1)
    Retrain(RetrainConfig.load(cfg_path), console=_quiet()).run()  # production: version 1
    shutil.copy(weeks / "normal" / "week-01.csv", tmp_path / "incoming")
    r = CliRunner().invoke(app, ["retrain", str(cfg_path), "--drill", "shuffle_items"])
    assert r.exit_code == 0, r.output
    last = r.output.strip().splitlines()[-1]
    assert "promote: production stays at version 1" in r.output
    assert last.startswith("kept production: version 1 (candidate version 2 not promoted);"), last
    assert Registry(tmp_path / "registry").alias("m", "production") == "1"


def test_a_missing_incoming_folder_is_an_error_naming_the_field(tmp_path: Path, weeks: Path) -> None:
    """A mistyped `incoming` used to read as "nothing new" (exit 0); an empty folder still does."""
    from typer.testing import CliRunner

    from segue.cli import app
    from segue.errors import ConfigError

    cfg_path = _setup(tmp_path, weeks, 0)  # incoming/ exists, empty
    assert Retrain(RetrainConfig.load(cfg_path), console=_quiet()).run()["stop"].startswith("nothing new")

    cfg_path.write_text(cfg_path.read_text().replace('incoming = "incoming"', 'incoming = "incomming"'))
    missing = tmp_path / "incomming"
    with pytest.raises(ConfigError, match=rf"retrain\.toml: field 'incoming': {re.escape(str(missing))} does not exist"):
        Retrain(RetrainConfig.load(cfg_path), console=_quiet()).run()
    r = CliRunner().invoke(app, ["retrain", str(cfg_path)])
    assert r.exit_code == 2 and "field 'incoming'" in r.output and "nothing new" not in r.output, r.output

    (tmp_path / "incomming").write_text("not a folder")
    with pytest.raises(ConfigError, match="field 'incoming': .* is not a folder"):
        Retrain(RetrainConfig.load(cfg_path), console=_quiet()).run()


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("[gate]\n", '[gate]\nmetric = "ndgc@10"\n', "field 'gate.metric': 'ndgc@10' is not measured (expected e.g. ndcg@10, hr@10"),
        ('family = "popularity"', 'family = "eas"', "field 'family': 'eas' is not a model family (expected one of: "),
        ("name = \"m\"\n", 'name = "m"\nsource_kind = "excel"\n', "field 'source_kind': unknown source kind 'excel'"),
        ('timestamp = "ts"', 'timestmp = "ts"', "field 'source_options': unknown key 'timestmp' for source 'csv' (expected one of: "),
        ("thresholds = \"", 'thresholds = "nosuch.toml"\n# was "', "field 'thresholds': "),
    ],
)
def test_config_mistakes_are_named_before_any_work(tmp_path: Path, weeks: Path, old: str, new: str, expected: str) -> None:
    """These surfaced after gathering, building and training (gate.metric: a KeyError traceback), or
    never (thresholds are read only once a production version exists)."""
    from typer.testing import CliRunner

    from segue.cli import app

    cfg_path = _setup(tmp_path, weeks, 1)
    text = cfg_path.read_text()
    assert old in text
    cfg_path.write_text(text.replace(old, new, 1))
    r = CliRunner().invoke(app, ["retrain", str(cfg_path)])
    out = " ".join(r.output.split())
    assert r.exit_code == 2, r.output
    assert f"retrain.toml: {expected}" in out, out
    if "timestmp" in new:
        assert "did you mean 'timestamp'?" in out and "--option" not in out
    assert "gather:" not in out and "train:" not in out
    assert not (tmp_path / "work").exists() and not (tmp_path / "registry").exists()

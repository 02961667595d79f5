"""Search spaces: parsing, conditions, and the configs grid, random and TPE draw (pure, fast)."""

from __future__ import annotations

import pytest

from segue.errors import ConfigError
from segue.tuning.space import (
    SearchSpace,
    check_space,
    family_config,
    grid_configs,
    grid_size,
    random_configs,
)
from segue.tuning.study import median_pruner, propose, tpe_ask

SPACE = """
family = "transformer"
store = "s.duckdb"
split = "loo"
strategy = "{strategy}"
seed = 3
[budget]
trials = {trials}
parallel = 3
[base]
trainer.max_steps = 10
[params."loss.kind"]
choices = ["full", "sampled", "logq"]
[params."loss.n_negatives"]
type = "int"
low = 16
high = 32
log = true
when = {{ "loss.kind" = ["sampled", "logq"] }}
[params."optim.lr"]
type = "float"
low = 1e-4
high = 1e-2
log = true
grid_points = 2
[params."model.d_model"]
choices = [32, 64]
"""


def space(strategy: str = "tpe", trials: int = 12) -> SearchSpace:
    return SearchSpace.parse(SPACE.format(strategy=strategy, trials=trials))


def check_valid(s: SearchSpace, configs: list[dict]) -> None:
    for i, params in enumerate(configs):
        assert s.valid(params), params
        conditional = "loss.n_negatives" in params
        assert conditional == (params["loss.kind"] in ("sampled", "logq")), params
        if i % 10:
            continue  # the typed config of every tenth (pydantic is slow on 100s of nested configs)
        cfg = family_config(s, params)  # the family accepts it
        assert cfg.trainer.max_steps == 10
        assert cfg.loss.kind == params["loss.kind"]
        if conditional:
            assert 16 <= cfg.loss.n_negatives <= 32
            assert cfg.loss.n_negatives == params["loss.n_negatives"]
        assert 1e-4 <= cfg.optim.lr <= 1e-2


def test_grid_covers_every_combination_once_with_conditions() -> None:
    s = space("grid", trials=1000)
    configs = grid_configs(s)
    check_valid(s, configs)
    # full: 2 lr x 2 d = 4; sampled/logq: 17 n_negatives x 2 x 2 each
    assert len(configs) == 4 + 2 * 17 * 4 == grid_size(s)
    assert len({tuple(sorted(c.items())) for c in configs}) == len(configs)
    assert {c["optim.lr"] for c in configs} == {1e-4, 1e-2}
    assert len(grid_configs(space("grid", trials=7))) == 7


def test_random_is_seeded_and_respects_conditions() -> None:
    s = space("random", trials=40)
    a, b = random_configs(s), random_configs(s)
    assert a == b and len(a) == 40
    assert random_configs(s, seed=4) != a
    check_valid(s, a)
    assert {c["loss.kind"] for c in a} == {"full", "sampled", "logq"}


def test_tpe_rounds_ask_parallel_configs_and_learn_from_told_results() -> None:
    s = space("tpe", trials=30)
    records: list[dict] = []
    for r in range(10):
        batch = propose(s, records, r)
        assert len(batch) == (3 if r < 10 else 0)
        check_valid(s, batch)
        for p in batch:  # the objective rewards a high learning rate
            records.append({"number": len(records), "params": p, "status": "ok", "value": p["optim.lr"]})
    assert propose(s, records, 10) == []
    late = [r["params"]["optim.lr"] for r in records[-9:]]
    early = [r["params"]["optim.lr"] for r in records[:9]]
    assert sum(late) / 9 > sum(early) / 9  # TPE moved towards the better region
    assert tpe_ask(s, records[:12], 3, round_index=4) == tpe_ask(s, records[:12], 3, round_index=4)  # seeded


def test_failed_and_pruned_records_are_told_too() -> None:
    s = space("tpe")
    records = [
        {"number": 0, "params": {"loss.kind": "full", "optim.lr": 1e-3, "model.d_model": 32}, "status": "failed", "value": None},
        {"number": 1, "params": {"loss.kind": "logq", "loss.n_negatives": 24, "optim.lr": 1e-3, "model.d_model": 64},
         "status": "pruned", "value": None, "intermediate": {"5": 0.1}},
        {"number": 2, "params": {"loss.kind": "full", "optim.lr": 2e-3, "model.d_model": 32}, "status": "skipped", "value": None},
    ]
    check_valid(s, propose(s, records, 1))


def test_median_pruner_stops_a_trial_below_the_median_of_finished_ones() -> None:
    s = space("tpe").model_copy(update={"pruning": space().pruning.model_copy(update={"startup_trials": 2})})
    finished = [
        {"number": i, "params": {"loss.kind": "full", "optim.lr": 1e-3, "model.d_model": 32}, "status": "ok",
         "value": v, "intermediate": {"10": v, "20": v}}
        for i, v in enumerate([0.2, 0.3, 0.4])
    ]
    assert median_pruner(s, finished)(10, 0.1) is True
    assert median_pruner(s, finished)(10, 0.35) is False
    assert median_pruner(s, finished[:1])(10, 0.0) is False  # fewer finished trials than startup_trials
    random = s.model_copy(update={"strategy": "random"})
    assert median_pruner(random, finished)(10, 0.0) is False  # only TPE rounds prune


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        ('[params.x]\nchoices = []', "non-empty"),
        ('[params.x]\ntype = "int"\nlow = 5\nhigh = 1', "above"),
        ('[params.x]\nlow = 0.0\nhigh = 1.0\nlog = true', "low` > 0"),
        ('[params.x]\nchoices = [1]\nwhen = { later = [1] }\n[params.later]\nchoices = [1]', "listed before"),
        ('[params.x]\nchoices = [1]\n[params.y]\nchoices = [2]\nwhen = { x = [7] }', "not a value"),
    ],
)
def test_bad_spaces_name_the_field(edit: str, expected: str) -> None:
    text = 'family = "ease"\nstore = "s"\nsplit = "loo"\n' + edit
    with pytest.raises(ConfigError, match=expected):
        SearchSpace.parse(text, source="space.toml")


def test_unknown_setting_is_named() -> None:
    s = SearchSpace.parse('family = "ease"\nstore = "s"\nsplit = "loo"\n[params.lambda]\nchoices = [1.0]')
    with pytest.raises(ConfigError, match="'lambda' is not a setting of ease"):
        check_space(s)
    check_space(SearchSpace.parse('family = "ease"\nstore = "s"\nsplit = "loo"\n[params.l2]\nlow = 1.0\nhigh = 9.0'))


@pytest.mark.parametrize(
    ("metric", "expected"),
    [("ndcg@15", r"'ndcg@15' is not measured: 15 is not in ks = \[5, 10, 20\]"), ("ndgc@10", "'ndgc@10' is not measured: 'ndgc' is not a ranking metric")],
)
def test_a_metric_validation_never_measures_is_refused(metric: str, expected: str) -> None:
    # every trial failed on it and the session still exited 0
    text = f'family = "ease"\nstore = "s"\nsplit = "loo"\nmetric = "{metric}"\nks = [5, 10, 20]\n[params.l2]\nlow = 1.0\nhigh = 9.0'
    with pytest.raises(ConfigError, match=f"^space.toml: field 'metric': {expected}"):
        check_space(SearchSpace.parse(text, source="space.toml"))
    check_space(SearchSpace.parse(text.replace(metric, "ndcg@20")))


def test_max_workers_below_one_is_refused(tmp_path: object) -> None:
    # Metaflow waited forever for a free worker
    from pathlib import Path

    from typer.testing import CliRunner

    from segue.cli import app
    from segue.tuning.launch import tune

    res = CliRunner().invoke(app, ["tune", "space.toml", "--max-workers", "0"])
    assert res.exit_code == 2 and "--max-workers" in res.output, res.output
    with pytest.raises(ConfigError, match="max_workers is 0 .expected at least 1"):
        tune(Path("space.toml"), Path(str(tmp_path)), max_workers=0)

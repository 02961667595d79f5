"""Protocols: which histories and targets each one builds, and the exclusion rules, on real stores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from evalhelp import FnModel, eval_store, history_lover
from segue.data.arrays import SequenceArrays, SplitData
from segue.data.store import Store
from segue.data.vocab import N_SPECIAL
from segue.errors import ConfigError, StoreError
from segue.evaluation.evaluator import evaluate_task, rank_task
from segue.evaluation.protocols import ProtocolConfig, Task, build_task, resolve_split


@pytest.fixture(scope="module")
def store_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return eval_store(tmp_path_factory.mktemp("protocols") / "p.duckdb")


@pytest.fixture(scope="module")
def store(store_path: Path):  # noqa: ANN201
    with Store.open(store_path) as s:
        yield s


def task_for(store: Store, split: str, protocol: str, **kw: object) -> Task:
    return build_task(SplitData.load(store, split), ProtocolConfig(name=protocol, **kw))


def events(store: Store) -> dict[int, list[tuple[int, int, int]]]:
    """seq_id -> [(position, item_id, ts)] straight from the events table."""
    out: dict[int, list[tuple[int, int, int]]] = {}
    for s, p, i, t in store.con.execute("SELECT seq_id, position, item_id, ts FROM events ORDER BY seq_id, position").fetchall():
        out.setdefault(s, []).append((p, i, t))
    return out


def parts(store: Store, split: str) -> dict[tuple[int, int], int]:
    return {
        (s, p): part
        for s, p, part in store.con.execute("SELECT seq_id, position, part FROM split_events WHERE split = ?", [split]).fetchall()
    }


def relevant_items(task: Task, q: int) -> set[int]:
    """Relevant set of query q as store item ids (unknown items are stored as -(1 + item id))."""
    keys = task.rel_keys[task.rel_offsets[q] : task.rel_offsets[q + 1]]
    return {int(task.vocab.item_ids[k]) if k >= 0 else int(-k - 1) for k in keys}


def history_items(task: Task, q: int) -> list[int]:
    return [int(i) for i in task.histories.row_items(int(task.rows[q]))]


def oracle(task: Task) -> FnModel:
    """Knows every query's relevant tokens (scores them 1, the rest 0): the best any model can do."""
    by_row = {int(r): task.rel_keys[task.rel_offsets[q] : task.rel_offsets[q + 1]] for q, r in enumerate(task.rows)}

    def fn(h: SequenceArrays, rows: np.ndarray) -> np.ndarray:
        s = np.zeros((len(rows), len(task.vocab)), np.float32)
        for b, r in enumerate(rows):
            keys = by_row[int(r)]
            s[b, keys[keys >= 0]] = 1.0
        return s

    return FnModel(task.vocab, fn)


def test_leave_last_out_queries(store: Store) -> None:
    task = task_for(store, "loo", "leave_last_out")
    ev = events(store)
    long_enough = sorted(s for s, e in ev.items() if len(e) >= 3)
    assert task.seq_ids.tolist() == long_enough
    for q, s in enumerate(task.seq_ids):
        items = [i for _, i, _ in ev[int(s)]]
        assert relevant_items(task, q) == {items[-1]}
        assert history_items(task, q) == items[:-1]  # train + valid: everything before the last


def test_history_items_and_special_tokens_are_never_recommended(store: Store) -> None:
    task = task_for(store, "loo", "leave_last_out")
    ranked = rank_task("lover", history_lover(task.vocab), task, 20)
    assert (ranked[ranked >= 0] >= N_SPECIAL).all()
    for q in range(len(task)):
        hist = set(task.histories.row(int(task.rows[q])).tolist())
        assert not hist & set(ranked[q].tolist())


def test_a_history_item_never_counts_as_a_hit(store: Store) -> None:
    task = task_for(store, "loo", "leave_last_out")
    res = evaluate_task({"oracle": oracle(task)}, task, [1, 10])["oracle"]
    vocab = task.vocab
    n_target_in_history = n_unk = 0
    for q in range(len(task)):
        (target,) = relevant_items(task, q)
        in_hist = target in history_items(task, q)
        unknown = vocab.token_of_item(target) < N_SPECIAL
        n_target_in_history += in_hist
        n_unk += unknown
        # The oracle scores the target highest, yet cannot hit it when it is a history item or <unk>.
        assert res.per_user["hr@1"][q] == (0.0 if in_hist or unknown else 1.0)
    assert n_target_in_history > 0 and n_unk > 0  # both rules were exercised
    # Without exclusion a repeated target can be hit.
    free = task_for(store, "loo", "leave_last_out", exclude_seen=False)
    res_free = evaluate_task({"oracle": oracle(free)}, free, [1])["oracle"]
    assert res_free.per_user["hr@1"].sum() == len(task) - n_unk


def test_temporal_history_before_cut_targets_after(store: Store) -> None:
    task = task_for(store, "temporal", "temporal")
    cut = store.split_info("temporal")["params"]["test_cut"]
    ev = events(store)
    for q, s in enumerate(task.seq_ids):
        hist_ts = np.asarray(task.histories.ts[task.histories.offsets[s] : task.histories.offsets[s + 1]])
        assert len(hist_ts) >= 1 and (hist_ts < cut).all()
        assert relevant_items(task, q) == {i for _, i, t in ev[int(s)] if t >= cut}
    # users whose every event is after the cut are cold: left out with min_history=1, kept with 0
    cold = [s for s, e in ev.items() if e[0][2] >= cut]
    all_task = task_for(store, "temporal", "temporal", min_history=0)
    assert len(all_task) == len(task) + len(cold)


def test_strong_generalization_fold_in(store: Store) -> None:
    task = task_for(store, "strong", "strong")
    p = parts(store, "strong")
    ev = events(store)
    test_users = sorted({s for (s, _), part in p.items() if part == 2})
    assert task.seq_ids.tolist() == test_users
    for q, s in enumerate(task.seq_ids):
        fold = [i for pos, i, _ in ev[int(s)] if p[(int(s), pos)] == 4]
        scored = {i for pos, i, _ in ev[int(s)] if p[(int(s), pos)] == 2}
        assert history_items(task, q) == fold
        assert relevant_items(task, q) == scored


def test_playlist_continuation(store: Store) -> None:
    task = task_for(store, "random", "playlist_continuation", continuation_ks=[1, 5, 10])
    p = parts(store, "random")
    ev = events(store)
    held = sorted({s for (s, _), part in p.items() if part == 2})
    assert task.headline_k == 500 and 500 in task.default_ks
    for k in (1, 5, 10):
        sel = np.flatnonzero(task.groups == f"K={k}")
        assert task.seq_ids[sel].tolist() == [s for s in held if len(ev[s]) >= k + 1]
        for q in sel:
            items = [i for _, i, _ in ev[int(task.seq_ids[q])]]
            assert history_items(task, q) == items[:k]
            assert relevant_items(task, q) == set(items[k:])
    # the oracle finds every known relevant track that is not among the given ones
    res = evaluate_task({"oracle": oracle(task)}, task)["oracle"]
    assert np.nanmean(res.per_user["rprec"]) > 0.5


def test_wrong_split_kind_names_split_and_kinds(store: Store) -> None:
    with pytest.raises(ConfigError) as e:
        task_for(store, "random", "leave_last_out")
    msg = str(e.value)
    assert "'random'" in msg and "random_sequence" in msg and "leave_last_out" in msg and "loo" in msg


def test_missing_split_and_unknown_protocol(store: Store, store_path: Path) -> None:
    with pytest.raises(StoreError, match="no split 'nope'.*loo"):
        resolve_split(store_path, "leave_last_out", "nope")
    with pytest.raises(ConfigError, match="unknown protocol 'sasrec'"):
        resolve_split(store_path, "sasrec", None)
    assert resolve_split(store_path, "loo", None) == "loo"


def test_random_holdout_split_is_added_when_missing(tmp_path: Path) -> None:
    path = eval_store(tmp_path / "h.duckdb", n_seq=40, splits=[{"kind": "leave_last_out", "name": "loo"}])
    with pytest.raises(ConfigError, match="random_holdout"), Store.open(path) as s:
        task_for(s, "loo", "random_holdout")
    name = resolve_split(path, "random_holdout", None)
    with Store.open(path) as s:
        assert s.split_info(name)["kind"] == "random_holdout"
        task = task_for(s, name, "random_holdout")
        p = parts(s, name)
        ev = events(s)
        for q, seq in enumerate(task.seq_ids):
            # history = train + valid events; targets = test events; they never share an event
            hist = [i for pos, i, _ in ev[int(seq)] if p[(int(seq), pos)] in (0, 1)]
            assert history_items(task, q) == hist
            assert relevant_items(task, q) == {i for pos, i, _ in ev[int(seq)] if p[(int(seq), pos)] == 2}
    assert resolve_split(path, "random_holdout", None) == name  # found, not added twice


@pytest.mark.parametrize(
    ("split", "protocol"),
    [("loo", "leave_last_out"), ("temporal", "temporal"), ("strong", "strong"), ("random", "playlist_continuation")],
)
def test_exclusion_rules_in_every_protocol(store: Store, split: str, protocol: str) -> None:
    task = task_for(store, split, protocol)
    n = 60  # long enough to hold every relevant item of these small sequences
    lover = rank_task("lover", history_lover(task.vocab), task, n)
    found = rank_task("oracle", oracle(task), task, n)
    for q in range(len(task)):
        hist = set(task.histories.row(int(task.rows[q])).tolist())
        assert not hist & set(lover[q].tolist())  # history items are never recommended
        assert (lover[q][lover[q] >= 0] >= N_SPECIAL).all()  # nor special tokens
        keys = task.rel_keys[task.rel_offsets[q] : task.rel_offsets[q + 1]]
        hittable = {int(k) for k in keys if k >= N_SPECIAL} - hist
        # The oracle ranks every relevant token first, yet only the hittable ones come out.
        assert set(found[q][: len(hittable)].tolist()) == hittable

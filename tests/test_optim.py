"""Lazy row-sparse Adam against optax's dense Adam, schedules, plateau, and the training step's
sparse path against its dense path (one real step), and skipping of non-finite steps."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from segue.models.transformer import ModelConfig
from segue.training import optim as O
from segue.training.losses import LossConfig
from segue.training.step import StepSpec, init_state, make_train_step, table_of

CFG = O.OptimConfig(lr=0.01, b1=0.9, b2=0.98, eps=1e-8, weight_decay=0.0)


def test_lazy_adam_equals_dense_adam_on_touched_rows() -> None:
    rng = np.random.default_rng(0)
    v, d = 10, 4
    table = jnp.asarray(rng.standard_normal((v, d)), jnp.float32)
    g1 = jnp.asarray(rng.standard_normal((v, d)), jnp.float32)  # step 1 touches every row
    touched = np.array([1, 3, 7])
    g2 = np.zeros((v, d), np.float32)
    g2[touched] = rng.standard_normal((len(touched), d))
    g2 = jnp.asarray(g2)

    tx = optax.adam(CFG.lr, b1=CFG.b1, b2=CFG.b2, eps=CFG.eps)
    st = tx.init(table)
    dense = table
    for g in (g1, g2):
        up, st = tx.update(g, st, dense)
        dense = optax.apply_updates(dense, up)

    # lazy: step 1 on all rows, step 2 on the touched rows only (gathered, updated, scattered)
    m, v_ = jnp.zeros_like(table), jnp.zeros_like(table)
    rows, m, v_ = O.row_adam_update(table, g1, m, v_, 1, CFG.lr, CFG)
    unique, local = O.gather_unique(jnp.asarray(np.array([7, 1, 3, 3, 1])), 8, v)  # duplicates, padding
    assert sorted(np.asarray(unique)[:3].tolist()) == [1, 3, 7] and np.all(np.asarray(unique)[3:] == v)
    r2, m2, v2 = O.row_adam_update(
        O.take_rows(rows, unique), O.take_rows(g2, unique), O.take_rows(m, unique), O.take_rows(v_, unique), 2, CFG.lr, CFG
    )
    lazy = O.put_rows(rows, unique, r2)
    np.testing.assert_allclose(np.asarray(lazy)[touched], np.asarray(dense)[touched], rtol=1e-6, atol=1e-7)
    untouched = np.setdiff1d(np.arange(v), touched)
    # rows outside the batch keep their values (dense Adam still moves them by their momentum)
    np.testing.assert_array_equal(np.asarray(lazy)[untouched], np.asarray(rows)[untouched])
    assert not np.allclose(np.asarray(dense)[untouched], np.asarray(rows)[untouched])
    # padding slots (id == v) gather zeros and are dropped on scatter
    assert np.all(np.asarray(O.take_rows(rows, unique))[3:] == 0)


def test_schedule_warmup_cosine_and_constant() -> None:
    cfg = O.OptimConfig(lr=1.0, warmup_steps=10, schedule="cosine", min_lr_ratio=0.1)
    assert float(O.lr_at(cfg, 0, 110)) == pytest.approx(0.1)
    assert float(O.lr_at(cfg, 9, 110)) == pytest.approx(1.0)
    assert float(O.lr_at(cfg, 60, 110)) == pytest.approx(0.1 + 0.9 * 0.5, rel=1e-5)  # half way
    assert float(O.lr_at(cfg, 110, 110)) == pytest.approx(0.1, rel=1e-5)
    const = cfg.model_copy(update={"schedule": "constant"})
    assert float(O.lr_at(const, 100, 110)) == pytest.approx(1.0)


def test_reduce_on_plateau() -> None:
    cfg = O.OptimConfig(plateau_patience=2, plateau_factor=0.5)
    s = O.PlateauState(-np.inf, 0, 1.0)
    s = O.plateau_update(s, 0.3, cfg)
    s = O.plateau_update(s, 0.2, cfg)
    assert s.scale == 1.0
    s = O.plateau_update(s, 0.25, cfg)
    assert s.scale == 0.5 and s.best == 0.3
    s = O.plateau_update(s, 0.4, cfg)
    assert s.best == 0.4 and s.bad == 0


def test_decay_mask_spares_norms_biases_and_tables() -> None:
    params = {"qkv": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}, "item_emb": jnp.ones((3, 2)), "ln": {"scale": jnp.ones(2)}}
    mask = O.decay_mask(params)
    assert mask == {"qkv": {"kernel": True, "bias": False}, "item_emb": False, "ln": {"scale": False}}


# --- the real training step ------------------------------------------------------------------

TINY = ModelConfig(n_layers=1, n_heads=2, d_model=8, d_ff=16, dropout=0.0, context_length=6)


def _batch() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    seq = rng.integers(4, 24, (3, 7)).astype(np.int32)
    mask = np.ones((3, 6), bool)
    mask[2, 4:] = False
    return seq[:, :-1], seq[:, 1:], mask


@pytest.mark.parametrize("kind", ["label_in_denominator"])
def test_sparse_step_equals_dense_step(kind: str) -> None:
    """One step from the same state: the row-sparse update and the dense one give the same table
    (Adam moments start at zero, so untouched rows do not move under dense Adam either)."""
    loss = LossConfig(kind=kind, n_negatives=5)
    out = {}
    for mode in ("on", "off"):
        spec = StepSpec(TINY, loss, O.OptimConfig(sparse_items=mode, warmup_steps=0), vocab_size=24, total_steps=10)
        graphdef, state = init_state(spec, 0)
        step = make_train_step(spec, graphdef)
        state, met = step(state, *_batch(), jnp.float32(1.0))
        out[mode] = (np.asarray(table_of(state["items"])), float(met["loss"]), np.asarray(state["item_m"]))
        if mode == "on":
            # a non-finite step is skipped: parameters and moments stay, the step counter moves on
            bad = dict(state)
            bad["rest"] = jax.tree_util.tree_map(lambda x: x, state["rest"])
            bad["rest"]["ln_f"]["scale"][...] = jnp.full_like(state["rest"]["ln_f"]["scale"][...], jnp.nan)
            before = jax.tree_util.tree_map(np.array, bad)
            after, met2 = step(bad, *_batch(), jnp.float32(1.0))
            assert bool(met2["skipped"])
            np.testing.assert_array_equal(np.asarray(table_of(after["items"])), table_of(before["items"]))
            np.testing.assert_array_equal(np.asarray(after["item_m"]), before["item_m"])
            assert int(after["applied"]) == int(before["applied"]) and int(after["step"]) == int(before["step"]) + 1
    assert out["on"][1] == pytest.approx(out["off"][1], rel=1e-6)
    np.testing.assert_allclose(out["on"][0], out["off"][0], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(out["on"][2], out["off"][2], rtol=1e-5, atol=1e-9)
    assert np.any(out["on"][2] != 0)  # the step did update something


def test_moving_average_of_weights() -> None:
    """With ema_decay the step keeps a_t = d_t a_{t-1} + (1 - d_t) x_t, d_t = min(decay, (1+t)/(10+t)),
    over the dense parameters and the item table, and the averaged network is built from it."""
    spec = StepSpec(TINY, LossConfig(kind="full"), O.OptimConfig(ema_decay=0.9, warmup_steps=0), vocab_size=24, total_steps=10)
    graphdef, state = init_state(spec, 0)
    step = make_train_step(spec, graphdef)
    avg = jax.tree_util.tree_map(np.array, (state["ema_rest"], state["ema_items"]))
    for t in (1, 2, 3):
        state, _ = step(state, *_batch(), jnp.float32(1.0))
        d = min(0.9, (1 + t) / (10 + t))
        now = jax.tree_util.tree_map(np.array, (state["rest"], state["items"]))
        avg = jax.tree_util.tree_map(lambda a, x, d=d: d * a + (1 - d) * x, avg, now)
        got = jax.tree_util.tree_map(np.array, (state["ema_rest"], state["ema_items"]))
        for a, g in zip(jax.tree_util.tree_leaves(avg), jax.tree_util.tree_leaves(got), strict=True):
            np.testing.assert_allclose(g, a, rtol=1e-5, atol=1e-7)
    # the average lags the weights, and the averaged network is the one built from it
    from segue.training.step import network_of

    x = np.asarray(table_of(state["items"]))
    a = np.asarray(table_of(state["ema_items"]))
    assert not np.allclose(x, a)
    np.testing.assert_array_equal(np.asarray(network_of(graphdef, state, average=True).item_emb[...]), a)
    np.testing.assert_array_equal(np.asarray(network_of(graphdef, state).item_emb[...]), x)


def test_moving_average_is_refused_with_row_sparse_tables() -> None:
    from segue.models.transformer import TransformerConfig

    with pytest.raises(ValueError, match="ema_decay"):
        TransformerConfig(loss=LossConfig(kind="logq"), optim=O.OptimConfig(ema_decay=0.99))
    TransformerConfig(loss=LossConfig(kind="logq"), optim=O.OptimConfig(ema_decay=0.99, sparse_items="off"))
    # a train config file is refused at load, before a run folder is made
    from segue.errors import ConfigError
    from segue.training.trainer import TrainConfig

    with pytest.raises((ConfigError, ValueError), match="ema_decay"):
        TrainConfig.from_dict({"data": {"store": "s.duckdb"}, "loss": {"kind": "logq"}, "optim": {"ema_decay": 0.99}})


def test_step_with_mask_seen_leaves_earlier_inputs_out_of_the_softmax() -> None:
    """The step's loss with mask_seen equals the full softmax computed here with each position's
    earlier inputs (but not its target) removed from the partition function, and differs from the
    plain full softmax."""
    from segue.training.step import network_of

    inputs, targets, mask = _batch()
    inputs[0, 3] = targets[0, 4]  # a repeat: an earlier input that is a later target stays in
    losses = {}
    for seen in (False, True):
        spec = StepSpec(TINY, LossConfig(kind="full", mask_seen=seen), O.OptimConfig(warmup_steps=0), vocab_size=24, total_steps=10)
        graphdef, state = init_state(spec, 0)
        net = network_of(graphdef, state)
        h = np.asarray(net.hidden(jnp.asarray(inputs)), dtype=np.float64)  # [B, T, D]
        logits = h @ np.asarray(table_of(state["items"]), dtype=np.float64).T  # [B, T, V]
        valid = np.asarray(spec.class_mask())
        per = []
        for b in range(inputs.shape[0]):
            for t in range(inputs.shape[1]):
                keep = valid.copy()
                if seen:
                    keep[[int(x) for x in inputs[b, : t + 1] if x != targets[b, t]]] = False
                s = logits[b, t]
                per.append(np.log(np.exp(s[keep]).sum()) - s[targets[b, t]])
        expect = float(np.sum(np.array(per) * mask.reshape(-1)) / mask.sum())
        step = make_train_step(spec, graphdef)
        _, met = step(state, inputs, targets, mask, jnp.float32(1.0))
        assert float(met["loss"]) == pytest.approx(expect, rel=1e-5)
        losses[seen] = expect
    assert losses[True] < losses[False]


def test_step_limit_between_min_and_max_epochs() -> None:
    from pydantic import ValidationError

    from segue.models.train_config import TrainerConfig
    from segue.training.task import total_steps

    # 175 batches an epoch (Beauty at batch 128): 40 epochs lift 5,000 steps to 7,000
    assert total_steps(TrainerConfig(max_steps=5000, min_epochs=40, max_epochs=200), 175) == (7000, "min_epochs")
    # 8 batches an epoch (ml-100k): min_epochs asks for fewer than max_steps, max_epochs caps
    assert total_steps(TrainerConfig(max_steps=5000, min_epochs=40, max_epochs=200), 8) == (1600, "max_epochs")
    assert total_steps(TrainerConfig(max_steps=5000, min_epochs=40), 100) == (5000, "max_steps")
    # a fractional epoch rounds up to whole steps; max_epochs still caps a lifted limit
    assert total_steps(TrainerConfig(max_steps=10, min_epochs=2.5, max_epochs=3), 7) == (18, "min_epochs")
    assert total_steps(TrainerConfig(max_steps=10, min_epochs=2.5, max_epochs=2.5), 7) == (18, "min_epochs")
    with pytest.raises(ValidationError, match="min_epochs"):
        TrainerConfig(min_epochs=5, max_epochs=4)

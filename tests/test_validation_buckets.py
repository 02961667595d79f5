"""In-training validation pads each batch to a power-of-two width, not the context: same metrics."""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx

from segue.data.arrays import SequenceArrays
from segue.data.loader import pad_histories
from segue.models.transformer import ModelConfig, SequenceTransformer
from segue.training.evaluate import ValidationSet, _eval_batch, evaluate


def test_bucketed_validation_equals_scoring_at_the_full_context() -> None:
    rng = np.random.default_rng(0)
    vocab, ctx, batch = 40, 20, 16
    # lengths from 1 to 30: short rows (width 8, 16), long ones cropped to the context
    lists = [rng.integers(4, vocab, size=int(n)) for n in rng.integers(1, 31, size=37)]
    targets = rng.integers(4, vocab, size=len(lists))
    vset = ValidationSet(SequenceArrays.from_lists(lists), targets)
    net = SequenceTransformer(ModelConfig(n_layers=1, n_heads=2, d_model=16, d_ff=32, context_length=ctx), vocab, nnx.Rngs(0))
    graphdef, state = nnx.split(net)
    got = evaluate(graphdef, state, vset, context_length=ctx, batch_size=batch, n_negatives=8, eop_class=False)

    # by hand: every row in one batch padded to the full context (what validation did before)
    n = len(lists)
    ev = pad_histories(vset.histories, np.arange(n), context_length=ctx, pad_to=ctx)
    out = jax.device_get(
        _eval_batch(graphdef, 10, 8, False, state, ev.inputs, ev.positions, ev.last, vset.targets, jax.random.key(0))
    )
    assert got["hr@10"] == np.mean(out["hr"])
    np.testing.assert_allclose(got["ndcg@10"], np.mean(out["ndcg"]), rtol=1e-6)
    np.testing.assert_allclose(got["exact_ce"], np.mean(out["exact_ce"]), rtol=1e-5)
    assert got["hr@10"] > 0  # the comparison is not between two empty results

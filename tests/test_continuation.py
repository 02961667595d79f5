"""Playlist continuation: masking of special tokens and playlist items, greedy/top-k, unknown seeds."""

from __future__ import annotations

import numpy as np
import pytest

from segue.data.vocab import EOP, N_SPECIAL, PAD, START, UNK, Vocabulary
from segue.errors import InputError
from segue.models.transformer import ModelConfig, TransformerConfig, TransformerRecommender
from segue.training.continuation import (
    continue_playlist,
    continue_tokens,
    describe,
    mask_logits,
    pick_next,
)

V = 16


def test_mask_logits_hides_specials_and_playlist_items() -> None:
    logits = np.arange(V, dtype=np.float32)[::-1].copy()  # specials have the highest logits
    out = mask_logits(logits, np.array([5, 9]))
    assert np.all(np.isneginf(out[[PAD, START, EOP, UNK, 5, 9]]))
    assert np.isfinite(out[[4, 6, 7, 8, 10]]).all()
    assert logits[0] == V - 1  # the input is not modified


def test_pick_next_greedy_and_top_k() -> None:
    rng = np.random.default_rng(0)
    logits = mask_logits(np.array([9, 9, 9, 9, 1.0, 3.0, 2.0, 0.5] + [0.0] * 8), np.array([5]))
    tok, p = pick_next(logits, rng, top_k=3, temperature=1.0, greedy=True)
    assert tok == 6  # item 5 is in the playlist; 6 is the best remaining
    draws = {pick_next(logits, rng, top_k=2, temperature=1.0, greedy=False)[0] for _ in range(200)}
    assert draws == {6, 4}  # only the two best candidates are ever drawn
    # a tiny temperature makes sampling greedy
    assert {pick_next(logits, rng, top_k=5, temperature=1e-3, greedy=False)[0] for _ in range(20)} == {6}


def _rec() -> TransformerRecommender:
    vocab = Vocabulary(
        item_ids=np.array([-1] * N_SPECIAL + list(range(V - N_SPECIAL))),
        counts=np.zeros(V, np.int64),
        external_ids=[None] * N_SPECIAL + [f"spotify:track:{i}" for i in range(V - N_SPECIAL)],
        split="s",
    )
    cfg = TransformerConfig(model=ModelConfig(n_layers=1, n_heads=2, d_model=8, d_ff=16, context_length=6))
    rec = TransformerRecommender(cfg, vocab)
    rec.network = rec.build(V, seed=0)
    return rec


def test_continuation_never_repeats_and_never_emits_specials() -> None:
    rec = _rec()
    res = continue_tokens(rec, [5, 6, 7], n=V - N_SPECIAL - 3, top_k=4, seed=1)
    assert len(res.tokens) == V - N_SPECIAL - 3
    assert len(set(res.tokens)) == len(res.tokens)  # no item twice
    assert not set(res.tokens) & {5, 6, 7}  # never a seed item
    assert min(res.tokens) >= N_SPECIAL  # never <pad>, <start>, <eop>, <unk>
    assert sorted(res.tokens + [5, 6, 7]) == list(range(N_SPECIAL, V))  # exhausts the catalogue exactly
    assert all(0 < p <= 1 for p in res.probabilities)
    # greedy is deterministic, and the same seed gives the same sample
    assert continue_tokens(rec, [5], n=3, greedy=True).tokens == continue_tokens(rec, [5], n=3, greedy=True, seed=9).tokens
    assert continue_tokens(rec, [5], n=4, seed=3).tokens == continue_tokens(rec, [5], n=4, seed=3).tokens


def test_unknown_seed_items_become_unk_and_are_reported() -> None:
    rec = _rec()
    res = continue_playlist(rec, ["spotify:track:1", "spotify:track:nope"], n=3, greedy=True)
    assert res.unknown_seeds == ["spotify:track:nope"]
    assert res.seed_tokens == [N_SPECIAL + 1, UNK]
    assert N_SPECIAL + 1 not in res.tokens
    assert describe(res.tokens[0], rec.vocab, None).startswith("spotify:track:")
    names = [None] * V
    names[res.tokens[0]] = ["Song", "Artist"]
    assert describe(res.tokens[0], rec.vocab, names).startswith("Song — Artist (")


def test_bad_arguments() -> None:
    rec = _rec()
    with pytest.raises(InputError, match="temperature"):
        continue_tokens(rec, [5], n=2, temperature=0)
    with pytest.raises(InputError, match="top_k"):
        continue_tokens(rec, [5], n=2, top_k=0)

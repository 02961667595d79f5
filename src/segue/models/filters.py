"""Score filters usable by every family (pure functions on score arrays).

Niche boost (Sprout's niche_boost_factor): divide each item's score by its popularity to the
power b >= 0, popularity = training events of the item + 1 (so an unseen item is defined).
Scores of the families are not all positive (inner products, log probabilities), so the
division is applied to the positive transform exp(s), which keeps every family's ranking:
    exp(s') = exp(s) / pop^b   <=>   s' = s - b log(pop)
i.e. the boost is a subtraction on the log scale; -inf (masked) stays -inf and b = 0 changes
nothing. Larger b pushes rarely-seen items up.
"""

from __future__ import annotations

import numpy as np

from segue.data.vocab import N_SPECIAL
from segue.errors import InputError


def niche_boost(scores: np.ndarray, counts: np.ndarray, b: float) -> np.ndarray:
    """s' = s - b log(counts + 1) for scores [..., n] and training counts [n] in the same item order.

    b must be a finite number >= 0 and counts finite and >= 0 (else an InputError naming them).
    Returns float32 [..., n]: a new array for b > 0; for b = 0 the scores unchanged (the input
    itself when it already is float32).
    """
    b = check_boost(b)
    counts = np.asarray(counts, dtype=np.float64)
    n = np.shape(scores)[-1]
    if counts.shape != (n,):
        raise InputError(f"counts has shape {counts.shape} but the scores {n} items", field="counts", expected=f"one count per item, shape ({n},)")
    if not (np.isfinite(counts) & (counts >= 0)).all():
        raise InputError("counts holds a negative or non-finite value", field="counts", expected="training counts >= 0")
    if b == 0:
        return np.asarray(scores, dtype=np.float32)
    return (np.asarray(scores, dtype=np.float64) - b * np.log1p(counts)).astype(np.float32)


def check_boost(b: object) -> float:
    """The niche boost b as a float, or an InputError: b must be a finite number >= 0 (NaN or inf
    would turn scores into NaN)."""
    if isinstance(b, bool) or not isinstance(b, int | float | np.integer | np.floating) or not np.isfinite(b) or b < 0:
        raise InputError(f"b = {b!r}", field="niche_boost", expected="a finite number >= 0")
    return float(b)


def niche_boost_tokens(scores: np.ndarray, token_counts: np.ndarray, b: float) -> np.ndarray:
    """niche_boost on token-space scores [B, V] with counts per token [V]; special tokens keep their scores."""
    token_counts = np.asarray(token_counts)
    v = np.shape(scores)[-1]
    if token_counts.shape != (v,):  # checked here: niche_boost sees the items only (V - N_SPECIAL)
        raise InputError(f"token_counts has shape {token_counts.shape} but the scores {v} tokens", field="token_counts", expected=f"one count per token, shape ({v},)")
    # the subtraction reads the scores as given (float64 ones exactly), then rounds once to float32
    out = np.array(scores, dtype=np.result_type(np.asarray(scores).dtype, np.float32), copy=True)
    out[..., N_SPECIAL:] = niche_boost(out[..., N_SPECIAL:], token_counts[N_SPECIAL:], b)
    return out.astype(np.float32, copy=False)

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


def niche_boost(scores: np.ndarray, counts: np.ndarray, b: float) -> np.ndarray:
    """s' = s - b log(counts + 1) for scores [..., n] and training counts [n] in the same item order."""
    if b < 0:
        raise ValueError(f"niche boost b must be >= 0, got {b}")
    counts = np.asarray(counts, dtype=np.float64)
    if counts.shape[-1] != np.shape(scores)[-1]:
        raise ValueError(f"counts has {counts.shape[-1]} items but the scores {np.shape(scores)[-1]}")
    if b == 0:
        return np.asarray(scores)
    return (np.asarray(scores, dtype=np.float64) - b * np.log1p(counts)).astype(np.float32)


def niche_boost_tokens(scores: np.ndarray, token_counts: np.ndarray, b: float) -> np.ndarray:
    """niche_boost on token-space scores [B, V] with counts per token [V]; special tokens keep their scores."""
    out = np.array(scores, dtype=np.float32, copy=True)
    out[..., N_SPECIAL:] = niche_boost(out[..., N_SPECIAL:], np.asarray(token_counts)[N_SPECIAL:], b)
    return out

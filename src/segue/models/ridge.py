"""Small ridge regressions solved in a batch: the user step of biased MF at scoring time.

Two fold-ins fit one per request row: the transformer's rating-ridge head (events.ridge_fold, a
user bias and vector over the history's rated events) and the profile autoencoder's rating
correction (autoencoder.rating_correction, over the head's errors). Both gather each row's
features into a padded [G, m, k] block and call `stacked_ridge`. biasedmf.ridge_by_group solves
the same system for training's thousands of users by a sparse product instead (see there).
"""

from __future__ import annotations

import numpy as np


def stacked_ridge(f: np.ndarray, e: np.ndarray, penalty: np.ndarray) -> np.ndarray:
    """x_g = argmin_x sum_j (e_gj - f_gj . x)^2 + sum_k penalty_k x_k^2 for every row g.

    f [G, m, k] the features of each row's m entries, e [G, m] their targets; a padded entry has
    f = 0 (and then adds nothing, whatever its e). Returns float64 [G, k]:
        x_g = (F_g' F_g + P)^-1 F_g' e_g,  P = diag(penalty) (every penalty > 0)
    With fewer entries than features (m < k) the same x comes from the m x m system, by the
    push-through identity (F'F + P)^-1 F' = P^-1 F' (F P^-1 F' + I)^-1: O(m^2 k) work instead
    of O(m k^2), which halved /v1/explain's solves on anime (k = 201, m ~ 80)."""
    penalty = np.asarray(penalty, np.float64)
    if np.any(penalty <= 0):
        raise ValueError(f"stacked_ridge needs every penalty > 0, got {penalty.min()}")
    f = np.asarray(f, np.float64)
    e = np.asarray(e, np.float64)
    m, k = f.shape[1], f.shape[2]
    if m < k:
        fp = f / penalty  # (P^-1 F')' [G, m, k]
        alpha = np.linalg.solve(fp @ np.swapaxes(f, 1, 2) + np.eye(m), e[:, :, None])  # [G, m, 1]
        return (np.swapaxes(alpha, 1, 2) @ fp)[:, 0, :]
    gram = np.swapaxes(f, 1, 2) @ f  # [G, k, k]
    diag = np.arange(k)
    gram[:, diag, diag] += penalty
    return np.linalg.solve(gram, np.einsum("gmk,gm->gk", f, e)[:, :, None])[:, :, 0]

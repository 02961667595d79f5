"""Small ridge regressions solved in a batch: the user step of biased MF at scoring time.

Two fold-ins fit one per request row: the transformer's rating-ridge head (events.ridge_fold, a
user bias and vector over the history's rated events) and the profile autoencoder's rating
correction (autoencoder.rating_correction, over the head's errors). Both gather each row's
features into a padded [G, m, k] block and call `stacked_ridge`; rows that share one entry set
less at most one entry each (/v1/explain's leave-one-out rows) share one factored system in
`ridge_all_but_one`. biasedmf.ridge_by_group solves the same system for training's thousands of
users by a sparse product instead (see there).
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


def ridge_all_but_one(f: np.ndarray, e: np.ndarray, drop: np.ndarray, penalty: np.ndarray) -> np.ndarray:
    """stacked_ridge for rows that share one entry set, each leaving out at most one entry.

    f [m, k] the shared entries' features, e [G, m] each row's targets on them, drop [G] the entry
    row g leaves out (-1: none). Returns float64 [G, k], row g the ridge solution over the entries
    except drop_g. One system is factored for all rows (leave-one-out explanations score a profile
    and each of its leave-one-out copies: 81 systems of 80 entries become one):
    - m < k (dual form): with K = F P^-1 F' + I and A = K^-1, row g's alpha solves K alpha = e~
      where e~ equals e_g except at j = drop_g, chosen so that alpha_j = 0; then the other entries'
      equations are exactly K_{-j} alpha_{-j} = e_{-j}, and x = alpha' F P^-1.
    - m >= k (primal): B = (F'F + P)^-1 and Sherman-Morrison for the removed row f_j:
      x = B b + (B f_j) (f_j' B b) / (1 - f_j' B f_j), b = F' e with e_j zeroed."""
    penalty = np.asarray(penalty, np.float64)
    if np.any(penalty <= 0):
        raise ValueError(f"ridge_all_but_one needs every penalty > 0, got {penalty.min()}")
    f = np.asarray(f, np.float64)
    e = np.array(e, np.float64)  # a copy: the dropped targets are zeroed below
    drop = np.asarray(drop, np.int64)
    m, k = f.shape
    rows = np.flatnonzero(drop >= 0)
    j = drop[rows]
    e[rows, j] = 0.0
    if m < k:
        fp = f / penalty  # (P^-1 F')' [m, k]
        a = np.linalg.inv(fp @ f.T + np.eye(m))  # [m, m], symmetric
        alpha = e @ a  # [G, m]
        t = -alpha[rows, j] / a[j, j]  # the dropped entry's target that makes alpha_j = 0
        alpha[rows] += t[:, None] * a[j]
        alpha[rows, j] = 0.0  # exactly 0 (it is, up to rounding)
        return alpha @ fp
    gram = f.T @ f
    gram[np.arange(k), np.arange(k)] += penalty
    b_inv = np.linalg.inv(gram)  # [k, k], symmetric
    x = (e @ f) @ b_inv  # [G, k]
    u = f[j] @ b_inv  # B f_j [R, k]
    b = e[rows] @ f  # [R, k]
    x[rows] += u * (np.sum(u * b, axis=1) / (1.0 - np.sum(u * f[j], axis=1)))[:, None]
    return x

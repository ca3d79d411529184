"""SLIST: session-aware linear item similarity/transition model (Choi et al., WWW 2021).

A closed-form linear item-item model B (n_items x n_items): the scores of the next item are
a position-weighted sum of the rows of B of the items clicked so far. Two training matrices
share one least-squares problem:

* SLIS (similarity): one row per training session; input X = the session's distinct items
  (binary, rows L1-normalised), target Y = the same binary row — reconstruct the session;
* SLIT (transition), ``direction='sr'``: one row per click t < L of a session; input = the
  item c_t (weight 1), target = every later item c_u, u > t, with weight
  exp(-(u - t - 1) / train_weight); ``direction='part'``: input = c_1..c_t with weights
  exp(-(t - v) / train_weight) (rows L1-normalised), target as for 'sr';
* every row of a session gets the weight exp(-(t_max - t_s) / session_weight): t_s the time of
  the session's last event, t_max the last training time (days of ``Time`` read as seconds).

With W the row weights, B minimises alpha ||W^1/2 (Y1 - X1 B)||^2 + (1 - alpha)
||W^1/2 (Y2 - X2 B)||^2 + reg ||B||^2:

    B = (G + reg I)^-1 R,  G = alpha X1' W X1 + (1 - alpha) X2' W X2,
                           R = alpha X1' W Y1 + (1 - alpha) X2' W Y2

(float32: the inverse by Cholesky, then a product with the sparse R). Prediction after clicks c_1..c_L:
score = sum_j exp(-(L - j) / predict_weight) B[c_j]. Memory and time grow as n_items^2 and
n_items^3: about 3 n_items^2 * 4 bytes (G, R/B and the solver's copy): 3.6 GB at 17,000 items,
22 GB at 43,000.
"""
from __future__ import annotations

import logging
import time

import numpy as np
from numba import njit, prange

from .base import SessionModel
from .baselines import HistoryScorer, _check_fitted_attr, _check_real

logger = logging.getLogger("gru_engine")
_DAY_S = 86400.0


def _training_matrices(sessions, n_items, direction, train_weight, session_weight_days):
    """``(X1, Y1, X2, Y2, w1, w2)``: SLIS and SLIT inputs/targets (CSR float64) and row weights."""
    import scipy.sparse as sp

    lengths = sessions.lengths
    n_s = sessions.n_sessions
    last_time = sessions.times[sessions.offsets[1:] - 1]
    if session_weight_days > 0 and n_s:
        sw = np.exp(-(last_time.max() - last_time) / (session_weight_days * _DAY_S))
    else:
        sw = np.ones(n_s)
    # SLIS: binary session rows
    sess_of = np.repeat(np.arange(n_s), lengths)
    X1 = sp.csr_matrix((np.ones(sessions.n_events), (sess_of, sessions.items)), shape=(n_s, n_items))
    X1.sum_duplicates()
    X1.data[:] = 1.0
    Y1 = X1.copy()
    X1 = sp.diags(1.0 / np.maximum(np.asarray(X1.sum(axis=1)).ravel(), 1e-300)) @ X1
    # SLIT: one row per click but the last
    rows_in, cols_in, val_in, rows_out, cols_out, val_out, w2 = [], [], [], [], [], [], []
    r = 0
    items = sessions.items
    for s in range(n_s):
        a, b = sessions.offsets[s], sessions.offsets[s + 1]
        seq = items[a:b]
        L = b - a
        for t in range(L - 1):
            if direction == "sr":
                rows_in.append(np.array([r]))
                cols_in.append(seq[t:t + 1])
                val_in.append(np.ones(1))
            else:
                rows_in.append(np.full(t + 1, r))
                cols_in.append(seq[:t + 1])
                val_in.append(np.exp(-(t - np.arange(t + 1)) / train_weight))
            later = np.arange(t + 1, L)
            rows_out.append(np.full(len(later), r))
            cols_out.append(seq[later])
            val_out.append(np.exp(-(later - t - 1) / train_weight))
            w2.append(sw[s])
            r += 1
    cat = lambda parts, dt: np.concatenate(parts).astype(dt) if parts else np.zeros(0, dt)
    X2 = sp.csr_matrix((cat(val_in, np.float64), (cat(rows_in, np.int64), cat(cols_in, np.int64))),
                       shape=(r, n_items))
    Y2 = sp.csr_matrix((cat(val_out, np.float64), (cat(rows_out, np.int64),
                                                    cat(cols_out, np.int64))), shape=(r, n_items))
    # repeated items in a row: summed by the constructor (the official code sums them too)
    X2 = sp.diags(1.0 / np.maximum(np.asarray(X2.sum(axis=1)).ravel(), 1e-300)) @ X2
    return X1.tocsr(), Y1, X2.tocsr(), Y2.tocsr(), sw, np.asarray(w2, dtype=np.float64)


@njit(cache=True, parallel=True)
def _slist_scores(out, rows, hist_items, hist_len, B, predict_weight):
    for i in prange(rows.shape[0]):
        r = rows[i]
        L = hist_len[r]
        out[i, :] = 0.0
        for j in range(L):
            w = np.float32(np.exp(-(L - 1 - j) / predict_weight)) if predict_weight > 0 else np.float32(1.0)
            row = B[hist_items[r, j]]
            for c in range(B.shape[1]):
                out[i, c] += w * row[c]


class _SLISTScorer(HistoryScorer):
    def __init__(self, B, predict_weight):
        self.B, self.predict_weight = B, float(predict_weight)
        self.n_items = B.shape[0]

    def _scores(self, out, rows):
        _slist_scores(out, rows, self.history.items, self.history.length, self.B,
                      self.predict_weight)


def _spd_inverse(A: np.ndarray) -> np.ndarray:
    """Inverse of a symmetric positive definite float32 matrix (overwrites ``A``)."""
    from scipy.linalg import lapack
    c, info = lapack.spotrf(A, lower=False, overwrite_a=True, clean=False)
    if info != 0:
        raise ValueError(f"SLIST: G + reg*I is not positive definite (LAPACK info {info}); "
                         "raise reg")
    inv, info = lapack.spotri(c, lower=False, overwrite_c=True)
    if info != 0:
        raise ValueError(f"SLIST: inverting G + reg*I failed (LAPACK info {info}); raise reg")
    # spotri fills the upper triangle only; mirror it block by block (no n^2 index arrays)
    n, step = inv.shape[0], 1024
    for a in range(0, n, step):
        b = min(a + step, n)
        inv[a:b, :a] = inv[:a, a:b].T
        block = inv[a:b, a:b]
        low = np.tril_indices(b - a, -1)
        block[low] = block.T[low]
    return inv


class SLIST(SessionModel):
    """SLIST (Choi et al., WWW 2021): closed-form linear item-item model; see the module doc.

    Parameters
    ----------
    alpha : float in [0, 1), default 0.8 — weight of SLIS against SLIT (alpha = 1, SLIS alone,
        needs the paper's diagonal constraint, which is not implemented: ValueError).
    reg : float > 0, default 10 — L2 regularisation (lambda).
    train_weight : float > 0, default 1 — position decay of the SLIT targets (delta_pos).
    predict_weight : float > 0 or None, default 2 — position decay of the clicks at prediction
        (delta_inf); None weights every click 1.
    session_weight : float > 0 or None, default 256 — recency decay of training sessions in
        days of ``Time`` read as seconds (delta_time); None: every session weighs 1.
    direction : 'sr' or 'part', default 'sr' — SLIT inputs: the current click only, or the
        whole prefix (see the module docstring).

    Defaults: the authors' configuration for Diginetica (their ``5fold_digi_slist.yml``:
    alpha 0.8, reg 10, train_weight 1, predict_weight 2, session_weight 256, direction 'sr').

    Fitted: ``weights_`` (n_items, n_items) float32 B, row = clicked item.
    """

    def __init__(self, alpha: float = 0.8, reg: float = 10.0, train_weight: float = 1.0,
                 predict_weight: float | None = 2.0, session_weight: float | None = 256.0,
                 direction: str = "sr"):
        self.alpha = alpha
        self.reg = reg
        self.train_weight = train_weight
        self.predict_weight = predict_weight
        self.session_weight = session_weight
        self.direction = direction

    def _validated(self):
        alpha = _check_real("alpha", self.alpha, low=0.0, high=1.0)
        if alpha == 1.0:
            raise ValueError("alpha must be < 1 (alpha = 1 is SLIS alone, which needs the "
                             "diagonal constraint of the paper, not implemented)")
        reg = _check_real("reg", self.reg, low=0.0, low_open=True)
        tw = _check_real("train_weight", self.train_weight, low=0.0, low_open=True)
        pw = (0.0 if self.predict_weight is None
              else _check_real("predict_weight", self.predict_weight, low=0.0, low_open=True))
        sw = (0.0 if self.session_weight is None
              else _check_real("session_weight", self.session_weight, low=0.0, low_open=True))
        if self.direction not in ("sr", "part"):
            raise ValueError(f"direction must be 'sr' or 'part', got {self.direction!r}")
        return alpha, reg, tw, pw, sw

    def _fit(self, sessions):
        import scipy.sparse as sp

        alpha, reg, tw, _, sw = self._validated()
        n = self.n_items_
        t0 = time.perf_counter()
        X1, Y1, X2, Y2, w1, w2 = _training_matrices(sessions, n, self.direction, tw, sw)
        W1 = sp.diags(alpha * w1)
        W2 = sp.diags((1.0 - alpha) * w2)
        G = (X1.T @ W1 @ X1 + X2.T @ W2 @ X2).astype(np.float32).toarray()
        G[np.diag_indices(n)] += np.float32(reg)
        R = (X1.T @ W1 @ Y1 + X2.T @ W2 @ Y2).astype(np.float32).tocsr()
        t1 = time.perf_counter()
        # P = (G + reg I)^-1 by Cholesky (n^3 flops in all, against 7n^3/3 for a solve with n
        # dense right-hand sides), then B = P R = (R' P)' with R sparse (nnz(R) * n flops).
        P = _spd_inverse(G)
        del G
        B = np.asarray((R.T @ P).T, dtype=np.float32)
        self.weights_ = np.ascontiguousarray(B)
        logger.info("SLIST: %d items, matrices %.1f s, solve %.1f s", n, t1 - t0,
                    time.perf_counter() - t1)

    def scorer(self):
        _check_fitted_attr(self, "weights_")
        return _SLISTScorer(self.weights_, self._validated()[3])

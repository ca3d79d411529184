"""Non-recurrent baselines of the GRU4Rec paper: POP, S-POP, Item-KNN and BPR-MF.

Every model follows the :class:`~gru_engine.base.SessionModel` contract (``fit`` on an event
table, ``evaluate``, ``recommend``) and scores the next item over ALL training items through a
:class:`~gru_engine.evaluation.SessionScorer`, so the same evaluator ranks them and GRU4Rec.

* :class:`Pop` — global popularity: score(j) = number of training events of j.
* :class:`SessionPop` — S-POP: how often j was clicked in the current session so far, ties
  broken by global popularity.
* :class:`ItemKNN` — items similar to the last clicked item (regularised cosine over session
  occurrence; Hidasi et al., ICLR 2016).
* :class:`BPRMF` — matrix factorisation trained with BPR (Rendle et al., UAI 2009), sessions
  as users; a session is represented by the average latent vector of its items so far.

The nearest-neighbour family (SKNN, V-SKNN, STAN, VSTAN: :mod:`gru_engine.neighbors`) and SLIST
(:mod:`gru_engine.slist`) can be imported from here too (``from gru_engine.baselines import
VSTAN``).
"""
from __future__ import annotations

import logging
import numbers
import time

import numpy as np
from numba import njit

from .base import SessionModel
from .exceptions import ModelFitError, NotFittedError

logger = logging.getLogger("gru_engine")


# ---------------------------------------------------------------------------------------------
# validation helpers
# ---------------------------------------------------------------------------------------------
def _check_real(name, value, low=None, high=None, low_open=False):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value):
        raise ValueError(f"{name} must be a finite real number, got {value!r}")
    if low is not None and (value < low or (low_open and value == low)):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low}, got {value!r}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be <= {high}, got {value!r}")
    return float(value)


def _check_int(name, value, low):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def _check_fitted_attr(model, attr):
    """NotFittedError unless ``fit`` completed (a failed ``_fit`` leaves ``attr`` unset)."""
    model._check_fitted()
    if not hasattr(model, attr):
        raise NotFittedError(f"this {type(model).__name__} is not fitted yet; call fit() first")


def _session_of_event(sessions) -> np.ndarray:
    """(n_events,) int64 session number of every event."""
    return np.repeat(np.arange(sessions.n_sessions, dtype=np.int64), sessions.lengths)


# ---------------------------------------------------------------------------------------------
# per-row click history shared by the stateful scorers
# ---------------------------------------------------------------------------------------------
class _History:
    """Items clicked so far by each of ``n_rows`` concurrent sessions.

    items: (n_rows, capacity) int32, row r's clicks are ``items[r, :length[r]]``;
    length: (n_rows,) int64. Capacity doubles when a row fills up.
    """

    def __init__(self, n_rows: int):
        if not (isinstance(n_rows, numbers.Integral) and n_rows >= 1):
            raise ValueError(f"n_rows must be a positive integer, got {n_rows!r}")
        self.items = np.zeros((int(n_rows), 16), dtype=np.int32)
        self.length = np.zeros(int(n_rows), dtype=np.int64)

    def push(self, rows, items, new_session):
        self.length[rows[new_session]] = 0
        if np.any(self.length[rows] >= self.items.shape[1]):
            grown = np.zeros((self.items.shape[0], 2 * self.items.shape[1]), dtype=np.int32)
            grown[:, :self.items.shape[1]] = self.items
            self.items = grown
        self.items[rows, self.length[rows]] = items
        self.length[rows] += 1


def _check_batch(n_items, rows, items, new_session, n_rows=None):
    """Validated ``(rows int64, items int32, new_session bool)`` of one ``score`` call."""
    rows = np.asarray(rows)
    items = np.asarray(items)
    new_session = np.asarray(new_session, dtype=bool)
    if not (rows.shape == items.shape == new_session.shape and rows.ndim == 1):
        raise ValueError(f"rows, items and new_session must be 1-D of equal length, got shapes "
                         f"{rows.shape}, {items.shape}, {new_session.shape}")
    if rows.dtype.kind not in "iu" or items.dtype.kind not in "iu":
        raise ValueError(f"rows and items must be integer arrays, got {rows.dtype} and {items.dtype}")
    if items.size and (items.min() < 0 or items.max() >= n_items):
        raise ValueError(f"item indices must be in [0, {n_items}), got range "
                         f"[{items.min()}, {items.max()}]")
    if n_rows is not None and rows.size and (rows.min() < 0 or rows.max() >= n_rows):
        raise ValueError(f"rows must be in [0, {n_rows}) (the n_rows given to begin), got range "
                         f"[{rows.min()}, {rows.max()}]")
    return rows.astype(np.int64, copy=False), items.astype(np.int32, copy=False), new_session


def _out_buffer(scorer, n_rows):
    """(n_rows, n_items) float32 view of a buffer kept by ``scorer`` across calls.

    Reusing it avoids allocating (and page-faulting) a fresh score block at every step; the
    protocol allows returning an internal buffer that is valid until the next call.
    """
    buf = getattr(scorer, "_buf", None)
    if buf is None or buf.shape[0] < n_rows:
        buf = np.empty((max(n_rows, 1), scorer.n_items), dtype=np.float32)
        scorer._buf = buf
    return buf[:n_rows]


class HistoryScorer:
    """Base of the scorers that score from each slot's click history (S-POP and the
    neighbourhood and linear models): ``begin`` makes the :class:`_History`; ``score`` checks
    the batch, records the clicks and fills an (R, n_items) float32 buffer through
    :meth:`_scores`. Subclasses set ``n_items`` and implement ``_scores(out, rows)``."""

    n_items: int
    history = None

    def begin(self, n_rows: int):
        self.history = _History(n_rows)

    def score(self, rows, items, new_session):
        if self.history is None:
            raise ValueError("call begin(n_rows) before score()")
        rows, items, new_session = _check_batch(self.n_items, rows, items, new_session,
                                                len(self.history.length))
        self.history.push(rows, items, new_session)
        out = _out_buffer(self, len(rows))
        self._scores(out, rows)
        return out

    def _scores(self, out, rows):
        raise NotImplementedError


# ---------------------------------------------------------------------------------------------
# POP
# ---------------------------------------------------------------------------------------------
class _PopScorer:
    """Same popularity row for every session; stateless."""

    def __init__(self, popularity: np.ndarray):
        self.scores = popularity.astype(np.float32)
        self.n_items = len(popularity)

    def begin(self, n_rows: int):
        pass

    def score(self, rows, items, new_session):
        rows, items, new_session = _check_batch(self.n_items, rows, items, new_session)
        out = _out_buffer(self, len(rows))
        out[:] = self.scores
        return out


class Pop(SessionModel):
    """POP: recommend the items with the most training events, whatever the session.

    Fitted: ``popularity_`` (n_items,) int64 training events per item.
    Items with equal popularity tie (the conservative rank mode counts ties against the target).
    """

    def __init__(self):
        pass

    def _fit(self, sessions):
        self.popularity_ = sessions.item_support(self.n_items_)

    def scorer(self):
        _check_fitted_attr(self, "popularity_")
        return _PopScorer(self.popularity_)


# ---------------------------------------------------------------------------------------------
# S-POP
# ---------------------------------------------------------------------------------------------
@njit(cache=True)
def _spop_scores(out, base, hist_items, hist_len, rows):
    for i in range(rows.shape[0]):
        out[i, :] = base
        r = rows[i]
        for t in range(hist_len[r]):
            out[i, hist_items[r, t]] += 1.0


class _SessionPopScorer(HistoryScorer):
    def __init__(self, popularity: np.ndarray):
        # Popularity squeezed into [0, 1): a tie-break below one session click.
        self.base = (popularity / (popularity.max() + 1.0)).astype(np.float32)
        self.n_items = len(popularity)

    def _scores(self, out, rows):
        _spop_scores(out, self.base, self.history.items, self.history.length, rows)


class SessionPop(Pop):
    """S-POP: the items clicked most often in the current session so far.

    score(j) = c_s(j) + pop(j) / (max_pop + 1), where c_s(j) is the number of clicks on j in the
    session so far (including the current one) and pop(j) its number of training events; the
    popularity term is < 1, so it only breaks ties between equal counts. Scores are float32: for
    long sessions (large counts) popularity differences below float32 resolution at that
    magnitude tie. Fitted (as :class:`Pop`): ``popularity_`` (n_items,) int64.
    """

    def scorer(self):
        _check_fitted_attr(self, "popularity_")
        return _SessionPopScorer(self.popularity_)


# ---------------------------------------------------------------------------------------------
# Item-KNN
# ---------------------------------------------------------------------------------------------
def _top_n_per_row(indptr, indices, data, n):
    """Keep the ``n`` largest entries of each CSR row (ties: lower column index first).

    Column indices must be sorted within rows; they stay sorted in the output. NumPy only (a
    Numba version cost the first run ~4.6 s of compilation, mostly its sorts).
    """
    lengths = np.diff(indptr)
    row = np.repeat(np.arange(len(lengths)), lengths)
    order = np.lexsort((indices, -data, row))  # by row, then value descending, then column
    rank_in_row = np.arange(len(order)) - indptr[:-1][row[order]]
    keep = np.sort(order[rank_in_row < n])  # back to row-major, columns sorted
    new_indptr = np.zeros(len(indptr), dtype=np.int64)
    np.cumsum(np.minimum(lengths, n), out=new_indptr[1:])
    return new_indptr, indices[keep].astype(np.int32), data[keep].astype(np.float32)


@njit(cache=True)
def _knn_scores(out, indptr, indices, data, items):
    for i in range(items.shape[0]):
        out[i, :] = 0.0
        it = items[i]
        for p in range(indptr[it], indptr[it + 1]):
            out[i, indices[p]] = data[p]


class _ItemKNNScorer:
    """Scores = the similarity row of the last clicked item; needs no per-session state."""

    def __init__(self, sims):
        self.indptr, self.indices, self.data = sims.indptr, sims.indices, sims.data
        self.n_items = sims.shape[0]

    def begin(self, n_rows: int):
        pass

    def score(self, rows, items, new_session):
        rows, items, new_session = _check_batch(self.n_items, rows, items, new_session)
        out = _out_buffer(self, len(rows))
        _knn_scores(out, self.indptr, self.indices, self.data, items)
        return out


class ItemKNN(SessionModel):
    """Item-KNN (GRU4Rec paper baseline): recommend the items most similar to the last click.

    With S_i the set of training sessions containing item i (repeats within a session count
    once) the similarity of candidate j to the last clicked item i is

        sim(i, j) = |S_i ∩ S_j| / ((|S_i| + lambda_) ** alpha * (|S_j| + lambda_) ** (1 - alpha))

    i.e. the cosine of the items' binary session-occurrence vectors for ``lambda_=0,
    alpha=0.5``; ``lambda_`` damps coincidental high similarities of rarely seen items. As in the
    paper the clicked item itself is not a neighbour: sim(i, i) = 0, like every item that never
    co-occurs with i (all of those tie at score 0).

    Parameters
    ----------
    lambda_ : float >= 0, default 20 — support regularisation.
    alpha : float in [0, 1], default 0.5 — exponent split between the two supports.
    n_neighbors : int >= 1 or None, default 100 — neighbours kept per item (the largest
        similarities, ties to the lower item index); the others score 0. ``None`` keeps all.
        Any value >= k gives the same Recall@k / MRR@k up to ties at the cut.

    Fitted: ``similarity_`` (n_items, n_items) ``scipy.sparse.csr_matrix`` float32, row = last
    clicked item, columns sorted; ``support_`` (n_items,) int64 |S_i|.
    """

    def __init__(self, lambda_: float = 20.0, alpha: float = 0.5, n_neighbors: int | None = 100):
        self.lambda_ = lambda_
        self.alpha = alpha
        self.n_neighbors = n_neighbors

    def _fit(self, sessions):
        import scipy.sparse as sp

        lam = _check_real("lambda_", self.lambda_, low=0.0)
        alpha = _check_real("alpha", self.alpha, low=0.0, high=1.0)
        if self.n_neighbors is not None:
            _check_int("n_neighbors", self.n_neighbors, 1)
        t0 = time.perf_counter()
        n_items = self.n_items_
        x = sp.csr_matrix((np.ones(sessions.n_events, dtype=np.float64),
                           (_session_of_event(sessions), sessions.items.astype(np.int64))),
                          shape=(sessions.n_sessions, n_items))
        x.sum_duplicates()
        x.data[:] = 1.0  # binary: a session counts once per item
        co = (x.T @ x).tocsr()  # |S_i ∩ S_j|, float64 (exact integers)
        support = np.asarray(x.sum(axis=0)).ravel()
        co.setdiag(0.0)
        co.eliminate_zeros()
        co.sort_indices()
        base = support + lam
        # With lambda_ = 0 an item of no session has base 0, but it has no co-occurrence either,
        # so no stored entry divides by it.
        left = base ** alpha
        right = base ** (1.0 - alpha)
        row = np.repeat(np.arange(n_items), np.diff(co.indptr))
        data = (co.data / (left[row] * right[co.indices])).astype(np.float32)
        indptr = co.indptr.astype(np.int64)
        indices = co.indices.astype(np.int32)
        if self.n_neighbors is not None:
            indptr, indices, data = _top_n_per_row(indptr, indices, data, int(self.n_neighbors))
        self.similarity_ = sp.csr_matrix((data, indices, indptr), shape=(n_items, n_items))
        self.support_ = support.astype(np.int64)
        logger.info("ItemKNN: %d items, %d similarities kept, %.2f s", n_items,
                    self.similarity_.nnz, time.perf_counter() - t0)

    def scorer(self):
        _check_fitted_attr(self, "similarity_")
        return _ItemKNNScorer(self.similarity_)


# ---------------------------------------------------------------------------------------------
# BPR-MF
# ---------------------------------------------------------------------------------------------
@njit(cache=True)
def _bpr_epoch(U, V, b, sess, pos, neg, lr, lam_u, lam_i):
    """One SGD pass over the (session, positive, negative) triples; returns the summed loss.

    U: (n_sessions, k) float32, V: (n_items, k) float32, b: (n_items,) float32, updated in place.
    Loss per triple: -log sigmoid(x), x = U[s]·(V[p] - V[n]) + b[p] - b[n].
    """
    k = U.shape[1]
    total = 0.0
    for t in range(sess.shape[0]):
        s, p, q = sess[t], pos[t], neg[t]
        if p == q:
            continue
        x = b[p] - b[q]
        for f in range(k):
            x += U[s, f] * (V[p, f] - V[q, f])
        if x > 0:
            total += np.log1p(np.exp(-x))
            g = np.exp(-x) / (1.0 + np.exp(-x))  # sigmoid(-x) = d(-loss)/dx
        else:
            total += -x + np.log1p(np.exp(x))
            g = 1.0 / (1.0 + np.exp(x))
        for f in range(k):
            u, vp, vq = U[s, f], V[p, f], V[q, f]
            U[s, f] = u + lr * (g * (vp - vq) - lam_u * u)
            V[p, f] = vp + lr * (g * u - lam_i * vp)
            V[q, f] = vq + lr * (-g * u - lam_i * vq)
        b[p] += lr * (g - lam_i * b[p])
        b[q] += lr * (-g - lam_i * b[q])
    return total


class _BPRMFScorer:
    """Session vector = mean of the item factors clicked so far; scores = mean @ V.T + b."""

    def __init__(self, item_factors, item_bias):
        self.V, self.b = item_factors, item_bias
        self.n_items = item_factors.shape[0]
        self.sums = None

    def begin(self, n_rows: int):
        if not (isinstance(n_rows, numbers.Integral) and n_rows >= 1):
            raise ValueError(f"n_rows must be a positive integer, got {n_rows!r}")
        self.sums = np.zeros((int(n_rows), self.V.shape[1]), dtype=np.float32)
        self.counts = np.zeros(int(n_rows), dtype=np.float32)

    def score(self, rows, items, new_session):
        if self.sums is None:
            raise ValueError("call begin(n_rows) before score()")
        rows, items, new_session = _check_batch(self.n_items, rows, items, new_session,
                                                len(self.counts))
        reset = rows[new_session]
        self.sums[reset] = 0.0
        self.counts[reset] = 0.0
        self.sums[rows] += self.V[items]
        self.counts[rows] += 1.0
        mean = self.sums[rows] / self.counts[rows, None]
        out = _out_buffer(self, len(rows))
        np.matmul(mean, self.V.T, out=out)
        out += self.b
        return out


class BPRMF(SessionModel):
    """BPR-MF with sessions as users (GRU4Rec paper's session adaptation).

    Training: SGD on the BPR criterion (Rendle et al. 2009). Each epoch visits every training
    event (session s, item p) once in random order with one negative item q drawn uniformly from
    all items, and maximises log sigmoid(U[s]·(V[p] - V[q]) + b[p] - b[q]) with L2 penalties
    ``lambda_session`` on U and ``lambda_item`` on V and b. Prediction: the session vector is the
    AVERAGE of V over the items clicked in the session so far (U of unseen test sessions does not
    exist); score(j) = mean·V[j] + b[j].

    Parameters
    ----------
    n_factors : int >= 1, default 100.
    n_epochs : int >= 1, default 20.
    learning_rate : float > 0, default 0.2 (plain SGD step).
    lambda_session, lambda_item : float >= 0, default 0.001 — L2 regularisation.
    init_std : float > 0, default 0.05 — factors start as Normal(0, init_std); biases start at 0.
    random_state : int or None — seeds initialisation, event order and negatives.

    The defaults were chosen on validation splits (rsc15-100k train_tr -> train_valid and the
    last 10% of the diginetica training sessions): with factors this small at the start, a
    learning rate of 0.01-0.05 for 10 epochs barely moves them (Recall@20 0.01-0.15 on
    diginetica), 0.2 for 20 epochs reaches ~0.38-0.40 there.

    Fitted: ``item_factors_`` (n_items, n_factors) float32, ``item_bias_`` (n_items,) float32,
    ``loss_history_`` list of mean BPR loss per epoch.
    """

    def __init__(self, n_factors: int = 100, n_epochs: int = 20, learning_rate: float = 0.2,
                 lambda_session: float = 0.001, lambda_item: float = 0.001, init_std: float = 0.05,
                 random_state: int | None = None):
        self.n_factors = n_factors
        self.n_epochs = n_epochs
        self.learning_rate = learning_rate
        self.lambda_session = lambda_session
        self.lambda_item = lambda_item
        self.init_std = init_std
        self.random_state = random_state

    def _fit(self, sessions):
        k = _check_int("n_factors", self.n_factors, 1)
        n_epochs = _check_int("n_epochs", self.n_epochs, 1)
        lr = _check_real("learning_rate", self.learning_rate, low=0.0, low_open=True)
        lam_u = _check_real("lambda_session", self.lambda_session, low=0.0)
        lam_i = _check_real("lambda_item", self.lambda_item, low=0.0)
        std = _check_real("init_std", self.init_std, low=0.0, low_open=True)
        if self.random_state is not None:
            _check_int("random_state", self.random_state, 0)
        rng = np.random.default_rng(self.random_state)
        n_items = self.n_items_
        U = (rng.standard_normal((sessions.n_sessions, k)) * std).astype(np.float32)
        V = (rng.standard_normal((n_items, k)) * std).astype(np.float32)
        b = np.zeros(n_items, dtype=np.float32)
        event_session = _session_of_event(sessions)
        self.loss_history_ = []
        for epoch in range(n_epochs):
            t0 = time.perf_counter()
            order = rng.permutation(sessions.n_events)
            neg = rng.integers(0, n_items, size=sessions.n_events, dtype=np.int64).astype(np.int32)
            total = _bpr_epoch(U, V, b, event_session[order], sessions.items[order], neg,
                               np.float32(lr), np.float32(lam_u), np.float32(lam_i))
            loss = total / sessions.n_events
            if not (np.isfinite(loss) and np.isfinite(V).all() and np.isfinite(b).all()):
                raise ModelFitError(f"BPRMF diverged in epoch {epoch + 1} (loss {loss}); "
                                    f"lower learning_rate or raise the regularisation")
            self.loss_history_.append(float(loss))
            dt = time.perf_counter() - t0
            logger.info("BPRMF epoch %d/%d: loss %.4f, %.0f events/s", epoch + 1, n_epochs,
                        loss, sessions.n_events / max(dt, 1e-9))
        self.item_factors_ = V
        self.item_bias_ = b

    def scorer(self):
        _check_fitted_attr(self, "item_factors_")
        return _BPRMFScorer(self.item_factors_, self.item_bias_)


# ---------------------------------------------------------------------------------------------
# the stronger non-neural peers live in their own modules; importable from here as well
# ---------------------------------------------------------------------------------------------
_SIBLINGS = {"SKNN": "neighbors", "VSKNN": "neighbors", "STAN": "neighbors", "VSTAN": "neighbors",
             "SLIST": "slist"}


def __getattr__(name):
    # Lazy: gru_engine.neighbors / gru_engine.slist import helpers from this module.
    if name in _SIBLINGS:
        import importlib
        return getattr(importlib.import_module(f".{_SIBLINGS[name]}", __package__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

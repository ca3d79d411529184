"""Session-based nearest-neighbour recommenders: SKNN, V-SKNN, STAN and VSTAN.

Every model follows the :class:`~gru_engine.base.SessionModel` contract (``fit``, ``evaluate``,
``recommend``) and scores ALL training items through a
:class:`~gru_engine.evaluation.SessionScorer`, so the one evaluator ranks them, the baselines
of :mod:`gru_engine.baselines` and GRU4Rec alike.

The common scheme (Jannach & Ludewig, RecSys 2017; Ludewig & Jannach, UMUAI 2018): for the
current session s = (c_1, ..., c_L) (repeats included; S = its set of distinct items),

1. candidates N(s): the ``sample_size`` MOST RECENT training sessions (by the time of their last
   event) that contain at least one item of S; all of them with ``sample_size=0``;
2. a similarity sim(s, n) for every candidate; the ``k`` most similar (ties: the more recent
   session) with sim > 0 are the neighbours;
3. score(i) = sum over neighbours n containing i of sim(s, n) * (model-specific item weight).

Position weights of the current session use, for an item clicked several times, its LAST
position p (1-based) in s. Scoring one session touches only the posting lists (item -> training
sessions, sorted by recency, built in ``fit``) of the session's items and the candidates' items:
it does not grow with the number of training sessions beyond ``sample_size``. The hot loop is one
Numba kernel (``parallel=True``: the rows of a ``score`` call run on Numba's threads).

Time: the recency weight of STAN/VSTAN is exp(-(t_now - t_n) / lambda_snh). ``score`` receives
no timestamps (the scorer protocol has none), so t_now is the last training time: t_now is the
same for every candidate of a prediction, so it multiplies all of its scores by one common
factor and changes no ranking (exactly so for any t_now). ``lambda_snh`` is in days of the
``Time`` column read as seconds; on datasets whose ``Time`` is an ordinal counter it is not a
time constant any more (say so when reporting).
"""
from __future__ import annotations

import logging
import time

import numpy as np
from numba import njit, prange

from .base import SessionModel
from .baselines import HistoryScorer, _check_fitted_attr, _check_int, _check_real

logger = logging.getLogger("gru_engine")

#: Position-weighting functions of V-SKNN (Ludewig & Jannach 2018), for the click at 1-based
#: position p of a session of length L: same 1; div p/L; linear max(0, 1 - 0.1 (L - p));
#: quadratic (p/L)^2; log 1/log10(L - p + 1.7).
WEIGHTINGS = ("same", "div", "linear", "quadratic", "log")
#: Decay of a neighbour's item scores by ``step`` = 1 + number of the most recent clicks of s
#: before the most recent one whose item is in the neighbour: same 1; div 1/step;
#: linear max(0, 1 - 0.1 step); quadratic 1/step^2; log 1/log10(step + 1.7).
SCORE_WEIGHTINGS = WEIGHTINGS

# Layout of the float64 configuration record passed to the kernel.
_C_K, _C_M, _C_SIM, _C_WKIND, _C_LSPW, _C_LSNH, _C_SCORE, _C_SKIND, _C_LINH, _C_LIPW, \
    _C_LIDF, _C_REMIND, _C_SIZE = range(13)
_SIM_COSINE, _SIM_VEC = 0, 1
_W_SAME, _W_DIV, _W_LINEAR, _W_QUADRATIC, _W_LOG, _W_EXP = 0, 1, 2, 3, 4, 5
_SCORE_PLAIN, _SCORE_STEP, _SCORE_INH = 0, 1, 2
_DAY_S = 86400.0


@njit(cache=True)
def _position_weight(kind, p, L, lam):
    """Weight of the click at 1-based position ``p`` of a session of length ``L``."""
    if kind == _W_SAME:
        return 1.0
    if kind == _W_DIV:
        return p / L
    if kind == _W_LINEAR:
        return max(0.0, 1.0 - 0.1 * (L - p))
    if kind == _W_QUADRATIC:
        return (p / L) ** 2
    if kind == _W_LOG:
        return 1.0 / np.log10(L - p + 1.7)
    return np.exp((p - L) / lam)  # _W_EXP: STAN's exp(-(L - p) / lambda_spw)


@njit(cache=True)
def _step_weight(kind, step):
    if kind == _W_SAME:
        return 1.0
    if kind == _W_DIV:
        return 1.0 / step
    if kind == _W_LINEAR:
        return max(0.0, 1.0 - 0.1 * step)
    if kind == _W_QUADRATIC:
        return 1.0 / (step * step)
    return 1.0 / np.log10(step + 1.7)


@njit(cache=True)
def _row_scores(out, hist, L, cfg, item_ptr, item_sessions, sess_ptr, sess_items, sess_lastpos,
                sess_age, idf):
    """Scores of every item for one current session; ``out`` (n_items,) float32 is overwritten.

    hist: (>= L,) int32 the session's clicks; item_ptr/item_sessions: CSR item -> training
    sessions by recency rank (ascending = most recent first); sess_ptr/sess_items/sess_lastpos:
    CSR session (by rank) -> its distinct items (sorted) and each one's last 1-based position;
    sess_age: (n_sessions,) float64 seconds between the session's last event and the last
    training time; idf: (n_items,) float64. cfg: the configuration record (``_C_*``).
    """
    out[:] = 0.0
    k = int(cfg[_C_K])
    m = int(cfg[_C_M])
    # distinct items of s (sorted) with their last positions
    order = np.argsort(hist[:L], kind="mergesort")
    cur = np.empty(L, np.int64)
    cur_pos = np.empty(L, np.int64)
    n_cur = 0
    for t in range(L):
        it = hist[order[t]]
        if n_cur > 0 and cur[n_cur - 1] == it:
            cur_pos[n_cur - 1] = max(cur_pos[n_cur - 1], order[t] + 1)
        else:
            cur[n_cur] = it
            cur_pos[n_cur] = order[t] + 1
            n_cur += 1
    cur = cur[:n_cur]
    cur_pos = cur_pos[:n_cur]
    wkind = int(cfg[_C_WKIND])
    w = np.empty(n_cur)
    w2 = 0.0
    for d in range(n_cur):
        w[d] = _position_weight(wkind, cur_pos[d], L, cfg[_C_LSPW])
        w2 += w[d] * w[d]

    # candidates: merge of the posting lists, smallest recency rank first, deduplicated
    total = 0
    for d in range(n_cur):
        total += item_ptr[cur[d] + 1] - item_ptr[cur[d]]
    cap = total if m == 0 else min(m, total)
    cand = np.empty(cap, np.int64)
    ptr = np.empty(n_cur, np.int64)
    for d in range(n_cur):
        ptr[d] = item_ptr[cur[d]]
    n_cand = 0
    last = -1
    while n_cand < cap:
        best = -1
        best_rank = 0
        for d in range(n_cur):
            if ptr[d] < item_ptr[cur[d] + 1]:
                r = item_sessions[ptr[d]]
                if best < 0 or r < best_rank:
                    best = d
                    best_rank = r
        if best < 0:
            break
        ptr[best] += 1
        if best_rank != last:
            cand[n_cand] = best_rank
            n_cand += 1
            last = best_rank

    # similarity of every candidate; pmax = most recent click of s in n, pstar = its position in n
    sim = np.empty(n_cand)
    pmax = np.zeros(n_cand, np.int64)
    pstar = np.zeros(n_cand, np.int64)
    sim_kind = int(cfg[_C_SIM])
    lsnh = cfg[_C_LSNH]
    for c in range(n_cand):
        sess = cand[c]
        a, b = sess_ptr[sess], sess_ptr[sess + 1]
        dot = 0.0
        for p in range(a, b):
            d = np.searchsorted(cur, sess_items[p])
            if d < n_cur and cur[d] == sess_items[p]:
                dot += w[d]
                if cur_pos[d] > pmax[c]:
                    pmax[c] = cur_pos[d]
                    pstar[c] = sess_lastpos[p]
        if sim_kind == _SIM_VEC:
            s = dot / n_cur
        else:
            s = dot / (np.sqrt(w2) * np.sqrt(b - a)) if w2 > 0 else 0.0
        if lsnh > 0:
            s *= np.exp(-sess_age[sess] / lsnh)
        sim[c] = s

    # the k most similar with sim > 0 (stable: ties keep the more recent session)
    top = np.argsort(-sim, kind="mergesort")
    score_kind = int(cfg[_C_SCORE])
    skind = int(cfg[_C_SKIND])
    linh, lipw, lidf = cfg[_C_LINH], cfg[_C_LIPW], cfg[_C_LIDF]
    remind = cfg[_C_REMIND] > 0
    for t in range(min(k, n_cand)):
        c = top[t]
        if not sim[c] > 0:
            break
        base = sim[c]
        if score_kind == _SCORE_STEP:
            base *= _step_weight(skind, L - pmax[c] + 1)
        if lipw > 0:
            base *= np.exp((pmax[c] - L) / lipw)
        sess = cand[c]
        for p in range(sess_ptr[sess], sess_ptr[sess + 1]):
            it = sess_items[p]
            if not remind:
                d = np.searchsorted(cur, it)
                if d < n_cur and cur[d] == it:
                    continue
            v = base
            if score_kind == _SCORE_INH:
                v *= np.exp(-abs(sess_lastpos[p] - pstar[c]) / linh)
            if lidf > 0:
                v += v * idf[it] * lidf
            out[it] += v


@njit(cache=True, parallel=True)
def _knn_scores(out, rows, hist_items, hist_len, cfg, item_ptr, item_sessions, sess_ptr,
                sess_items, sess_lastpos, sess_age, idf):
    """``out[i] = scores of the session in slot rows[i]`` for every i, rows in parallel."""
    for i in prange(rows.shape[0]):
        r = rows[i]
        _row_scores(out[i], hist_items[r], hist_len[r], cfg, item_ptr, item_sessions, sess_ptr,
                    sess_items, sess_lastpos, sess_age, idf)


class _NeighborIndex:
    """What ``fit`` builds once: the training sessions by recency and the inverted index.

    Sessions are renumbered by recency rank (0 = the session whose last event is latest; ties:
    the later session in the table first). ``sess_ptr``/``sess_items``/``sess_lastpos``: CSR
    rank -> distinct items (sorted, int32) and the last 1-based position of each in the
    session (int64); ``item_ptr``/``item_sessions``: CSR item -> ranks (ascending, int64);
    ``sess_age``: (n_sessions,) float64 seconds from the session's last event to the last
    training event; ``idf``: (n_items,) float64 log(n_sessions / n_events(i)), 0 for unseen items.
    """

    def __init__(self, sessions, n_items: int):
        n_s = sessions.n_sessions
        last_time = sessions.times[sessions.offsets[1:] - 1]
        rank_of = np.empty(n_s, np.int64)
        by_recency = np.lexsort((-np.arange(n_s), -last_time))
        rank_of[by_recency] = np.arange(n_s)
        sess_of_event = np.repeat(rank_of, sessions.lengths)
        pos = sessions.positions().astype(np.int64) + 1
        items = sessions.items.astype(np.int64)
        # one entry per (session, distinct item) with the item's last position
        key = sess_of_event * n_items + items
        order = np.lexsort((pos, key))
        key_sorted = key[order]
        is_last = np.r_[key_sorted[1:] != key_sorted[:-1], True]
        pairs = order[is_last]
        s_rank = sess_of_event[pairs]
        self.sess_items = items[pairs].astype(np.int32)
        self.sess_lastpos = pos[pairs]
        self.sess_ptr = np.zeros(n_s + 1, np.int64)
        np.cumsum(np.bincount(s_rank, minlength=n_s), out=self.sess_ptr[1:])
        by_item = np.lexsort((s_rank, self.sess_items))
        self.item_sessions = s_rank[by_item]
        self.item_ptr = np.zeros(n_items + 1, np.int64)
        np.cumsum(np.bincount(self.sess_items, minlength=n_items), out=self.item_ptr[1:])
        age = last_time.max() - last_time if n_s else last_time
        self.sess_age = np.ascontiguousarray(age[by_recency], dtype=np.float64)
        n_ev = np.bincount(sessions.items, minlength=n_items).astype(np.float64)
        with np.errstate(divide="ignore"):
            self.idf = np.where(n_ev > 0, np.log(max(n_s, 1) / np.maximum(n_ev, 1.0)), 0.0)
        self.n_items = n_items
        self.n_sessions = n_s


class _KNNScorer(HistoryScorer):
    """Per-slot click history; scores by :func:`_knn_scores` over the rows."""

    def __init__(self, index: _NeighborIndex, cfg: np.ndarray):
        self.index, self.cfg = index, cfg
        self.n_items = index.n_items

    def _scores(self, out, rows):
        ix = self.index
        _knn_scores(out, rows, self.history.items, self.history.length, self.cfg, ix.item_ptr,
                    ix.item_sessions, ix.sess_ptr, ix.sess_items, ix.sess_lastpos, ix.sess_age,
                    ix.idf)


class _KNNBase(SessionModel):
    """Shared ``fit``/``scorer`` of the neighbourhood models; subclasses fill :meth:`_config`.

    Fitted: ``index_`` (the recency-ordered sessions and the inverted index, see
    ``_NeighborIndex``), ``n_train_sessions_``.
    """

    def _check_common(self):
        _check_int("k", self.k, 1)
        _check_int("sample_size", self.sample_size, 0)

    def _config(self) -> np.ndarray:
        raise NotImplementedError

    def _fit(self, sessions):
        self._config()  # validates the parameters before any work
        t0 = time.perf_counter()
        self.index_ = _NeighborIndex(sessions, self.n_items_)
        self.n_train_sessions_ = sessions.n_sessions
        logger.info("%s: %d sessions, %d items indexed in %.2f s", type(self).__name__,
                    sessions.n_sessions, self.n_items_, time.perf_counter() - t0)

    def scorer(self):
        _check_fitted_attr(self, "index_")
        return _KNNScorer(self.index_, self._config())

    @staticmethod
    def _record(k, m, sim, wkind, lspw=1.0, lsnh_days=0.0, score=_SCORE_PLAIN, skind=_W_SAME,
                linh=1.0, lipw=0.0, lidf=0.0, remind=True):
        cfg = np.zeros(_C_SIZE, np.float64)
        cfg[[_C_K, _C_M, _C_SIM, _C_WKIND, _C_LSPW, _C_LSNH, _C_SCORE, _C_SKIND, _C_LINH,
             _C_LIPW, _C_LIDF, _C_REMIND]] = [k, m, sim, wkind, lspw, lsnh_days * _DAY_S,
                                             score, skind, linh, lipw, lidf, float(remind)]
        return cfg


def _check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
    return choices.index(value)


def _check_optional_positive(name, value):
    """None (off) or a real number > 0."""
    if value is None:
        return 0.0
    return _check_real(name, value, low=0.0, low_open=True)


class SKNN(_KNNBase):
    """SKNN (session-based kNN, Jannach & Ludewig 2017; Ludewig & Jannach 2018).

    sim(s, n) = |S ∩ N| / sqrt(|S| |N|) (cosine of the binary item sets); the ``k`` most similar
    of the ``sample_size`` most recent sessions sharing an item with s are the neighbours, and
    score(i) = sum of sim(s, n) over the neighbours n that contain i (items of s included).

    Parameters
    ----------
    k : int >= 1, default 100 — number of neighbours.
    sample_size : int >= 0, default 500 — candidate sessions (the most recent ones sharing an
        item with s); 0 = all sessions sharing an item. The defaults are the values
        Ludewig & Jannach (2018) report as best for their e-commerce datasets.
    """

    def __init__(self, k: int = 100, sample_size: int = 500):
        self.k = k
        self.sample_size = sample_size

    def _config(self):
        self._check_common()
        return self._record(self.k, self.sample_size, _SIM_COSINE, _W_SAME)


class VSKNN(_KNNBase):
    """V-SKNN (vector-based SKNN, Ludewig & Jannach 2018; session-rec's ``VMContextKNN``).

    The current session is a vector with weight w(p) at each item's last position p
    (``weighting``); sim(s, n) = sum over i in S ∩ N of w(p_i) / |S|. The ``k`` most similar of
    the ``sample_size`` most recent sessions sharing an item with s are the neighbours, and

        score(i) = sum_n sim(s, n) * d(step_n) * (1 + idf_weighting * idf(i))  over n containing i,

    where step_n - 1 is the number of the most recent clicks of s before the most recent one
    whose item is in n, d = ``weighting_score``, and idf(i) = log(n_train_sessions / n_events(i)).

    Parameters
    ----------
    k : int >= 1, default 100 — number of neighbours.
    sample_size : int >= 0, default 500 — candidate sessions; 0 = all sharing an item.
    weighting : str, default 'div' — position weights of the current session, one of
        :data:`WEIGHTINGS`.
    weighting_score : str, default 'div' — decay d by step, one of :data:`SCORE_WEIGHTINGS`.
    idf_weighting : float >= 0, default 0 — weight of the IDF boost (0 = off).
    remind : bool, default True — False never recommends items already in the session.

    Defaults: session-rec's constructor defaults for ``VMContextKNN`` with the k and
    sample_size of Ludewig & Jannach (2018); per-dataset tuned values are not in that paper.
    """

    def __init__(self, k: int = 100, sample_size: int = 500, weighting: str = "div",
                 weighting_score: str = "div", idf_weighting: float = 0.0, remind: bool = True):
        self.k = k
        self.sample_size = sample_size
        self.weighting = weighting
        self.weighting_score = weighting_score
        self.idf_weighting = idf_weighting
        self.remind = remind

    def _config(self):
        self._check_common()
        wk = _check_choice("weighting", self.weighting, WEIGHTINGS)
        sk = _check_choice("weighting_score", self.weighting_score, SCORE_WEIGHTINGS)
        idf = _check_real("idf_weighting", self.idf_weighting, low=0.0)
        if not isinstance(self.remind, (bool, np.bool_)):
            raise ValueError(f"remind must be a bool, got {self.remind!r}")
        return self._record(self.k, self.sample_size, _SIM_VEC, wk, score=_SCORE_STEP, skind=sk,
                            lidf=idf, remind=bool(self.remind))


class STAN(_KNNBase):
    """STAN (sequence and time aware neighbourhood, Garg et al., SIGIR 2019).

    With p the last position of an item in s (length L):

    * w1(i) = exp(-(L - p_i) / lambda_spw): recent clicks of s weigh more; sim(s, n) =
      sum_{i in S ∩ N} w1(i) / (sqrt(sum_{i in S} w1(i)^2) * sqrt(|N|));
    * w2(n) = exp(-(t_now - t_n) / lambda_snh): recent neighbour sessions weigh more
      (sim is multiplied by it, before choosing the ``k`` neighbours);
    * w3(i, n) = exp(-|p_n(i) - p_n(i*)| / lambda_inh), where i* is the most recent item of s
      that is in n and p_n the last position of an item in n: items of n close to i* weigh more;

    score(i) = sum over neighbours n containing i of sim(s, n) * w2(n) * w3(i, n).
    (session-rec's implementation takes p_n(i*) as the last position in n of ANY item of s; we
    follow the paper.)

    Parameters
    ----------
    k : int >= 1, default 100 — number of neighbours.
    sample_size : int >= 0, default 5000 — candidate sessions; 0 = all sharing an item.
    lambda_spw : float > 0 or None, default 1.02 — current-session position decay (None: w1 = 1).
    lambda_snh : float > 0 or None, default 5 — neighbour-recency decay in days of the ``Time``
        column read as seconds (None: w2 = 1). See the module docstring on the reference time.
    lambda_inh : float > 0 or None, default 2.05 — neighbour-item position decay (None: w3 = 1).
    remind : bool, default True — False never recommends items already in the session.

    Defaults: session-rec's STAN defaults (the framework of Ludewig et al., UMUAI 2021).
    """

    def __init__(self, k: int = 100, sample_size: int = 5000, lambda_spw: float | None = 1.02,
                 lambda_snh: float | None = 5.0, lambda_inh: float | None = 2.05,
                 remind: bool = True):
        self.k = k
        self.sample_size = sample_size
        self.lambda_spw = lambda_spw
        self.lambda_snh = lambda_snh
        self.lambda_inh = lambda_inh
        self.remind = remind

    def _stan_parts(self):
        self._check_common()
        spw = _check_optional_positive("lambda_spw", self.lambda_spw)
        snh = _check_optional_positive("lambda_snh", self.lambda_snh)
        inh = _check_optional_positive("lambda_inh", self.lambda_inh)
        if not isinstance(self.remind, (bool, np.bool_)):
            raise ValueError(f"remind must be a bool, got {self.remind!r}")
        return dict(sim=_SIM_COSINE, wkind=_W_EXP if spw else _W_SAME, lspw=spw or 1.0,
                    lsnh_days=snh, score=_SCORE_INH if inh else _SCORE_PLAIN, linh=inh or 1.0,
                    remind=bool(self.remind))

    def _config(self):
        return self._record(self.k, self.sample_size, **self._stan_parts())


class VSTAN(STAN):
    """VSTAN (Ludewig, Latifi, Jannach et al., UMUAI 2021): STAN plus V-SKNN's ideas.

    STAN's w1, w2 and w3 (see :class:`STAN`), and in the item scores two more factors:

    * w4(n) = exp(-(L - p_s(i*)) / lambda_ipw), p_s(i*) the position in s of the most recent
      click whose item is in n (V-SKNN's decay of neighbours matched only by old clicks);
    * (1 + lambda_idf * idf(i)), idf(i) = log(n_train_sessions / n_events(i)).

    score(i) = sum_n sim(s, n) * w2(n) * w3(i, n) * w4(n) * (1 + lambda_idf * idf(i)).

    Parameters: those of :class:`STAN` plus
    lambda_ipw : float > 0 or None, default 1.02 — None: w4 = 1.
    lambda_idf : float >= 0 or None, default 5 — 0/None: no IDF factor.

    Defaults: session-rec's VSTAN (``VSKNN_STAN``) defaults.
    """

    def __init__(self, k: int = 100, sample_size: int = 5000, lambda_spw: float | None = 1.02,
                 lambda_snh: float | None = 5.0, lambda_inh: float | None = 2.05,
                 lambda_ipw: float | None = 1.02, lambda_idf: float | None = 5.0,
                 remind: bool = True):
        super().__init__(k=k, sample_size=sample_size, lambda_spw=lambda_spw,
                         lambda_snh=lambda_snh, lambda_inh=lambda_inh, remind=remind)
        self.lambda_ipw = lambda_ipw
        self.lambda_idf = lambda_idf

    def _config(self):
        parts = self._stan_parts()
        parts["lipw"] = _check_optional_positive("lambda_ipw", self.lambda_ipw)
        parts["lidf"] = (0.0 if self.lambda_idf is None
                         else _check_real("lambda_idf", self.lambda_idf, low=0.0))
        return self._record(self.k, self.sample_size, **parts)

"""Next-item evaluation (GRU4Rec protocol): one evaluator for every model.

* :class:`SessionScorer` — the small protocol a model exposes (``SessionModel.scorer()``) so that
  one evaluator and one ``recommend`` serve every model.
* :func:`evaluate_sessions` — session-parallel replay of test sessions; after every click but
  the last of a session the true next item is ranked against all items; Recall@k and MRR@k.

The ranking itself (:func:`~gru_engine.ranking.rank_targets`, tie modes, threads) is
:mod:`gru_engine.ranking`.
"""
from __future__ import annotations

import heapq
import logging
import time
from typing import Callable, Protocol, runtime_checkable

import numpy as np

from .exceptions import ModelFitError
from .data import show_id
from .ranking import _check_threads, check_rank_mode, rank_targets
from .session_aware import UserSessions

logger = logging.getLogger("gru_engine")

#: Predictions at this position (1-based) and later share the last ``by_position`` bucket.
LAST_POSITION_BUCKET = 20
_LOG_EVERY_S = 10.0


# ---------------------------------------------------------------------------------------------
# the scorer protocol
# ---------------------------------------------------------------------------------------------
@runtime_checkable
class SessionScorer(Protocol):
    """What a model hands the evaluator and ``recommend``: next-item scores for many sessions.

    The caller keeps up to ``n_rows`` sessions alive at once, each in a *slot* (row number);
    the scorer holds the per-slot state (e.g. the GRU hidden states).

    ``n_items``: int, number of items; scores cover item indices ``0..n_items-1``.

    ``begin(n_rows)``: allocate and zero the state of slots ``0..n_rows-1``; forgets any
    earlier state. Called once before a replay.

    ``score(rows, items, new_session)`` with
      rows:        (R,) int64 distinct slot numbers in ``[0, n_rows)``,
      items:       (R,) int32 the item clicked in each of those sessions,
      new_session: (R,) bool, True where this click starts a new session in the slot;
    for each entry ``i``: reset slot ``rows[i]`` to the empty-session state first if
    ``new_session[i]``, then consume click ``items[i]``. Returns (R, n_items) float32,
    C-contiguous: row ``i`` scores every item as the next click of slot ``rows[i]``'s session.
    The result may be an internal buffer, valid until the next call; the input arrays may be
    views the scorer must not modify. Slots not in ``rows`` keep their state.

    Optional: a scorer whose scores live elsewhere (a GPU) may also define
    ``rank(rows, items, new_session, targets, mode)`` — the same state update as ``score``, then
    the (R,) rank of item ``targets[i]`` (int64) in row ``i`` under tie mode ``mode``, as
    :func:`rank_targets` computes it, and NaN as the rank of a row whose scores hold NaN.
    :func:`evaluate_sessions` then calls ``rank`` instead of ``score``, so that the score block
    never leaves the device.

    Optional (the GRU scorers, used by ``recommend`` and the session store): ``advance(rows,
    items, new_session)`` — the state update of ``score`` without scoring; ``topk(rows, items,
    new_session, k, exclude=None)`` — the state update, then each row's ``k`` best items,
    best first, ties to the lower index, as :func:`~gru_engine.ranking.top_k` of ``score``'s
    rows: ``(indices (R, k) int, values (R, k) float32)``; ``exclude``: a
    :class:`~gru_engine.ranking.Exclusions` of R rows, items scored ``-inf``.
    """

    n_items: int

    def begin(self, n_rows: int) -> None: ...

    def score(self, rows: np.ndarray, items: np.ndarray, new_session: np.ndarray) -> np.ndarray: ...


# ---------------------------------------------------------------------------------------------
# session-parallel replay
# ---------------------------------------------------------------------------------------------
def _check_cutoffs(cutoffs) -> tuple:
    try:
        values = list(cutoffs)
    except TypeError:
        values = [cutoffs]
    if not values:
        raise ValueError("cutoffs is empty; give at least one positive integer, e.g. (5, 20)")
    for c in values:
        if isinstance(c, bool) or not isinstance(c, (int, np.integer)) or c < 1:
            raise ValueError(f"cutoffs must be positive integers, got {c!r} in {cutoffs!r}")
    return tuple(sorted({int(c) for c in values}))


def _schedule(sessions, batch_size: int):
    """The replay as flat arrays of predictions, ordered by (step, slot).

    Sessions with at least two events are visited in order of their first event's time; a slot
    takes the next session as soon as its current one has no next event, lower slots first
    (the official GRU4Rec order). Returns ``(step_bounds, rows, inputs, targets, new_session,
    position, is_last, n_slots, canonical, events)``: predictions of step ``s`` are
    ``step_bounds[s]:step_bounds[s+1]``; ``position`` is 1-based (the prediction follows the
    ``position``-th click); ``canonical[i]`` is where the ``i``-th prediction in (session,
    position) order sits, an order independent of ``batch_size`` so that the summed metrics are
    bit-identical for every batch size; ``events`` the index of each prediction's input click
    in ``sessions``.
    """
    order = sessions.order_by_start_time()
    lengths = sessions.lengths
    order = order[lengths[order] >= 2]
    n_sess = len(order)
    if n_sess == 0:
        raise ValueError("no session with at least 2 events to evaluate")
    n_pred = (lengths[order] - 1).astype(np.int64)
    n_slots = min(batch_size, n_sess)
    slot = np.empty(n_sess, dtype=np.int64)
    start = np.empty(n_sess, dtype=np.int64)
    slot[:n_slots] = np.arange(n_slots)
    start[:n_slots] = 0
    free_at = [(int(n_pred[s]), s) for s in range(n_slots)]  # (step the slot frees up, slot)
    heapq.heapify(free_at)
    steps = n_pred.tolist()
    for s in range(n_slots, n_sess):
        t, r = free_at[0]
        slot[s] = r
        start[s] = t
        heapq.heapreplace(free_at, (t + steps[s], r))

    total = int(n_pred.sum())
    first = np.zeros(n_sess, dtype=np.int64)
    np.cumsum(n_pred[:-1], out=first[1:])
    owner = np.repeat(np.arange(n_sess), n_pred)
    pos0 = np.arange(total, dtype=np.int64) - first[owner]
    step = start[owner] + pos0
    rows = slot[owner]
    perm = np.argsort(step * n_slots + rows, kind="stable")
    owner, pos0, step, rows = owner[perm], pos0[perm], step[perm], rows[perm]
    event = sessions.offsets[order][owner] + pos0
    items = np.ascontiguousarray(sessions.items[event], dtype=np.int32)
    targets = sessions.items[event + 1].astype(np.int64)
    n_steps = int(step[-1]) + 1
    bounds = np.searchsorted(step, np.arange(n_steps + 1)).astype(np.int64)
    canonical = np.empty(total, dtype=np.int64)
    canonical[perm] = np.arange(total)
    return (bounds, np.ascontiguousarray(rows), items, targets, pos0 == 0, pos0 + 1,
            pos0 == n_pred[owner] - 1, n_slots, canonical, event)


def _checked_ranks(ranks, n_rows: int, n_items: int) -> np.ndarray:
    """Ranks from a scorer's own ``rank`` method, checked: NaN or a rank below 1 (what a
    counting kernel gives for a NaN target score) refuse the model."""
    ranks = np.asarray(ranks, dtype=np.float64)
    if ranks.shape != (n_rows,):
        raise ValueError(f"scorer.rank returned shape {ranks.shape} for {n_rows} rows")
    bad = ~((ranks >= 1) & (ranks <= n_items))
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise ModelFitError(f"scorer.rank returned {int(bad.sum())} invalid ranks (e.g. "
                            f"{ranks[first]} in row {first}; valid: 1..{n_items}); the model "
                            "produced NaN scores and is refused")
    return ranks


def _metrics(ranks: np.ndarray, cutoffs: tuple) -> dict:
    out = {}
    for k in cutoffs:
        hit = ranks <= k
        out[f"recall@{k}"] = float(hit.mean())
        out[f"mrr@{k}"] = float(np.where(hit, 1.0 / ranks, 0.0).mean())
    return out


def _by_position(ranks: np.ndarray, position: np.ndarray, cutoffs: tuple) -> list:
    bucket = np.minimum(position, LAST_POSITION_BUCKET)
    counts = np.bincount(bucket, minlength=LAST_POSITION_BUCKET + 1)
    sums = {}
    for k in cutoffs:
        hit = ranks <= k
        sums[f"recall@{k}"] = np.bincount(bucket, weights=hit, minlength=LAST_POSITION_BUCKET + 1)
        sums[f"mrr@{k}"] = np.bincount(bucket, weights=np.where(hit, 1.0 / ranks, 0.0),
                                       minlength=LAST_POSITION_BUCKET + 1)
    out = []
    for p in range(1, LAST_POSITION_BUCKET + 1):
        n = int(counts[p])
        if n == 0:
            continue
        entry = {"position": p if p < LAST_POSITION_BUCKET else f"{LAST_POSITION_BUCKET}+", "n": n}
        for k in cutoffs:
            entry[f"recall@{k}"] = float(sums[f"recall@{k}"][p] / n)
            entry[f"mrr@{k}"] = float(sums[f"mrr@{k}"][p] / n)
        out.append(entry)
    return out


def evaluate_sessions(scorer: SessionScorer, sessions, cutoffs=(1, 5, 10, 20),
                      mode: str = "conservative", batch_size: int = 512, by_position: bool = True,
                      targets: str = "all", progress: Callable[[int, int], None] | None = None,
                      n_threads: int = 1) -> dict:
    """Replay test sessions through ``scorer`` and rank every true next item (GRU4Rec protocol).

    scorer:   a :class:`SessionScorer` (``n_items`` must cover every item in ``sessions``);
              its optional ``rank`` method is used instead of ``score`` when it has one; an
              optional ``set_events(events)`` is told before each step the indices of the
              step's input clicks in ``sessions`` (context-aware scorers).
    sessions: :class:`gru_engine.data.Sessions`; sessions shorter than 2 events are skipped.
    cutoffs:  positive ints k for Recall@k and MRR@k (deduplicated, sorted).
    mode:     tie mode of :func:`rank_targets`.
    batch_size: number of slots (sessions replayed in parallel); the results do not depend on it.
    by_position: also report metrics per position of the prediction in its session.
    targets:  ``'all'`` ranks the next item after every click but the last; ``'last'`` ranks only
              the last event of each session (leave-last-out), still feeding every earlier click.
    progress: optional ``progress(n_done, n_total)`` called after every step, counted in scored
              clicks (``n_total`` = number of ``score`` rows of the whole replay).
    n_threads: OpenMP threads of the rank kernel (:mod:`gru_engine.ranking`, *Threads*);
              0 = OpenMP's default.

    Each of ``batch_size`` slots walks one session (sessions taken in order of their first
    event's time); after a session's second-to-last click the slot takes the next session with
    ``new_session=True``; when none are left the batch shrinks and only active slots are passed.

    Returns a dict: ``'recall@k'`` and ``'mrr@k'`` (MRR@k = mean of 1/rank if rank <= k else 0)
    per cutoff, ``'n_events'`` (number of ranked predictions), ``'n_sessions'`` (sessions
    replayed), ``'seconds'`` (wall time of the replay) and, with ``by_position``,
    ``'by_position'``: one dict per position p = 1, 2, ... of the prediction (made after the
    p-th click) that has predictions, with ``'position'``, ``'n'`` and the metrics; positions
    >= 20 share the last bucket, ``position='20+'``. Raises ``ModelFitError`` if the scorer
    produces NaN for any scored click (also one not ranked under ``targets='last'``).
    """
    check_rank_mode(mode)
    cutoffs = _check_cutoffs(cutoffs)
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if targets not in ("all", "last"):
        raise ValueError(f"targets must be 'all' or 'last', got {targets!r}")
    n_threads = _check_threads(n_threads)
    n_items = int(scorer.n_items)
    if sessions.n_events and int(sessions.items.max()) >= n_items:
        raise ValueError(f"sessions hold item index {int(sessions.items.max())} but the scorer "
                         f"has n_items={n_items}")

    t0 = time.perf_counter()
    bounds, rows, items, target_items, new_session, position, is_last, n_slots, canonical, \
        events = _schedule(sessions, int(batch_size))
    n_total = len(rows)
    ranked = is_last if targets == "last" else np.ones(n_total, dtype=bool)
    ranks = np.zeros(n_total, dtype=np.float64)
    scorer.begin(n_slots)
    next_log = time.monotonic() + _LOG_EVERY_S
    device_rank = getattr(scorer, "rank", None)
    set_events = getattr(scorer, "set_events", None)  # context-aware scorers
    for step in range(len(bounds) - 1):
        a, b = int(bounds[step]), int(bounds[step + 1])
        if set_events is not None:
            set_events(events[a:b])
        # With targets='last' every row is still ranked (one cheap pass) so that a NaN
        # anywhere refuses the model; only the selected ranks count.
        if callable(device_rank):
            ranks[a:b] = _checked_ranks(device_rank(rows[a:b], items[a:b], new_session[a:b],
                                                    target_items[a:b], mode), b - a, n_items)
        else:
            scores = scorer.score(rows[a:b], items[a:b], new_session[a:b])
            if getattr(scores, "shape", None) != (b - a, n_items):
                raise ValueError(f"scorer.score returned shape {getattr(scores, 'shape', None)} "
                                 f"for {b - a} rows; expected ({b - a}, {n_items})")
            ranks[a:b] = rank_targets(scores, target_items[a:b], mode, n_threads)
        if progress is not None:
            progress(b, n_total)
        now = time.monotonic()
        if now >= next_log:
            next_log = now + _LOG_EVERY_S
            elapsed = time.perf_counter() - t0
            logger.info("evaluation: %d / %d clicks scored (%.0f/s)", b, n_total, b / elapsed)
    seconds = time.perf_counter() - t0

    keep = canonical[ranked[canonical]]
    ranks, position = ranks[keep], position[keep]
    result = _metrics(ranks, cutoffs)
    result["n_events"] = int(len(ranks))
    result["n_sessions"] = int(np.count_nonzero(is_last))
    result["seconds"] = seconds
    if by_position:
        result["by_position"] = _by_position(ranks, position, cutoffs)
    logger.info("evaluated %d predictions of %d sessions in %.2f s (%.0f/s), mode=%s",
                len(ranks), result["n_sessions"], seconds, len(ranks) / max(seconds, 1e-9), mode)
    return result


# ---------------------------------------------------------------------------------------------
# the session-aware protocol (HRNN)
# ---------------------------------------------------------------------------------------------
@runtime_checkable
class UserAwareScorer(Protocol):
    """A :class:`SessionScorer` that also reads the user of each session (a user-level model).

    ``begin_users(history)``: called once, right after ``begin``, with the users' earlier
    sessions (:class:`~gru_engine.session_aware.UserSessions`, or None): the scorer builds
    each user's state from them.

    ``start_sessions(rows, user_ids, known)``: called just before the ``score`` (or ``rank``)
    call in which slots ``rows`` (R,) int64 start new sessions; ``user_ids`` (R,) the original
    user id of each new session, ``known`` (R,) bool, False for an anonymous session (its
    ``user_ids`` entry is a placeholder), which the scorer starts as a plain session.
    """

    def begin_users(self, history) -> None: ...

    def start_sessions(self, rows: np.ndarray, user_ids: np.ndarray, known: np.ndarray) -> None: ...


class _UserFeed:
    """A user-aware scorer seen as a plain one: tells it the user of each session it starts.

    :func:`evaluate_sessions` starts the sessions (of 2+ events) in order of their first event
    time, and within one step lower slots first, so the ``k``-th new session it passes is the
    ``k``-th of ``order``.
    """

    def __init__(self, scorer, history, user_ids: np.ndarray, known: np.ndarray):
        self.scorer, self.history = scorer, history
        self.n_items = scorer.n_items
        self.user_ids, self.known = user_ids, known
        self._next = 0
        if callable(getattr(scorer, "rank", None)):
            self.rank = self._rank

    def begin(self, n_rows: int) -> None:
        self.scorer.begin(n_rows)
        self.scorer.begin_users(self.history)
        self._next = 0

    def _start(self, rows, new_session):
        k = int(np.count_nonzero(new_session))
        if k:
            take = slice(self._next, self._next + k)
            self.scorer.start_sessions(rows[new_session], self.user_ids[take], self.known[take])
            self._next += k

    def score(self, rows, items, new_session):
        self._start(rows, new_session)
        return self.scorer.score(rows, items, new_session)

    def _rank(self, rows, items, new_session, targets, mode):
        self._start(rows, new_session)
        return self.scorer.rank(rows, items, new_session, targets, mode)


def _check_history(test, history) -> int:
    """The number of test users with history; ``ValueError`` when a user's history reaches
    past the start of the user's test session (the protocol predicts the *next* session)."""
    if history is None:
        return 0
    if (history.user_ids.dtype.kind in "US") != (test.user_ids.dtype.kind in "US") \
            and len(history.user_ids) and len(test.user_ids):
        raise ValueError("the user ids of test and history are of different kinds (strings "
                         "and integers); ids are never converted between kinds")
    s, h = test.sessions, history.sessions
    known = test.users >= 0
    hist_code = np.full(len(test.users), -1, dtype=np.int64)
    hist_code[known] = history.codes_of(test.user_ids[test.users[known]])
    if not (hist_code >= 0).any():
        return 0
    last = np.full(len(history.user_ids), -np.inf)
    h_known = history.users >= 0
    np.maximum.at(last, history.users[h_known], h.times[h.offsets[1:] - 1][h_known])
    start = s.times[s.offsets[:-1]]
    has = hist_code >= 0
    late = has & (last[np.maximum(hist_code, 0)] > start)
    if late.any():
        j = int(np.flatnonzero(late)[0])
        raise ValueError(f"user {show_id(test.user_ids[test.users[j]])} has history up to time "
                         f"{last[hist_code[j]]} after the start of a test session ({start[j]}); "
                         "the session-aware protocol predicts sessions after the history")
    return int(len(np.unique(test.users[has])))


def evaluate_session_aware(scorer, test, history=None, cutoffs=(1, 5, 10, 20),
                           mode: str = "conservative", batch_size: int = 512,
                           by_position: bool = True, n_threads: int = 1) -> dict:
    """The session-aware protocol of HRNN (Quadrana et al., RecSys 2017): every click of each
    user's test session(s) is predicted, the user's earlier sessions are the history.

    scorer:  a :class:`SessionScorer`; if it is also a :class:`UserAwareScorer` it gets
             ``history`` first and the user of every test session as it starts, otherwise
             (a plain session model) the history is not used.
    test:    :class:`~gru_engine.session_aware.UserSessions`, e.g. the ``test`` split of
             :func:`gru_engine.preprocess.preprocess_session_aware` built with the model's
             item index (:func:`~gru_engine.session_aware.build_user_sessions`); anonymous
             sessions are predicted as plain sessions.
    history: :class:`~gru_engine.session_aware.UserSessions` of the users' earlier sessions
             (the train split), or None; ``ValueError`` when a user's history ends after the
             start of one of the user's test sessions.
    Other arguments as :func:`evaluate_sessions` (``targets='all'``: every click).

    Returns :func:`evaluate_sessions`'s dict plus ``'n_users'`` (test sessions' distinct
    known users), ``'n_users_with_history'`` and ``'user_aware'`` (whether the scorer read
    the users).
    """
    if not isinstance(test, UserSessions):
        raise ValueError("test must be UserSessions (gru_engine.session_aware."
                         f"build_user_sessions), got {type(test).__name__}")
    if history is not None and not isinstance(history, UserSessions):
        raise ValueError("history must be UserSessions or None, got "
                         f"{type(history).__name__}")
    n_with_history = _check_history(test, history)
    user_aware = isinstance(scorer, UserAwareScorer)
    if user_aware:
        s = test.sessions
        order = s.order_by_start_time()
        order = order[s.lengths[order] >= 2]
        codes = test.users[order]
        known = codes >= 0
        ids = test.user_ids[np.maximum(codes, 0)] if len(test.user_ids) else \
            np.zeros(len(order), dtype=np.int64)
        scorer = _UserFeed(scorer, history, ids, known)
    result = evaluate_sessions(scorer, test.sessions, cutoffs=cutoffs, mode=mode,
                               batch_size=batch_size, by_position=by_position, targets="all",
                               n_threads=n_threads)
    result["n_users"] = int(len(np.unique(test.users[test.users >= 0])))
    result["n_users_with_history"] = n_with_history
    result["user_aware"] = user_aware
    return result

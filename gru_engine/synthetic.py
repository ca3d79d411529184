"""Generated session-aware data with a planted cross-session signal, and its control.

No shared dataset has users with many sessions, so a user-level model (HRNN, Quadrana et al.
RecSys 2017) is checked on data where the answer is known. :func:`session_aware_events` draws
users, each with a sequence of sessions:

* **Items and tastes.** The ``n_items`` items are split at random into ``n_tastes`` equal
  clusters (a *taste* = one cluster).
* **Transitions (user-independent).** Each item has ``n_successors`` successor items (drawn
  uniformly) with Dirichlet(1) weights: a fixed Markov chain shared by every user.
* **A session** of a user with taste ``c``: the first click is uniform over all items (so it
  says nothing about ``c``); each next click is, with probability ``taste_weight``, a uniform
  item of cluster ``c``, else a successor of the current click from the chain.
* **Signal** (``persistent=True``): a user's taste is drawn once and kept for all the user's
  sessions. **Control** (``persistent=False``): the taste is redrawn for every session.

Within one session the two arms are the same process (same chain, same taste weight, a taste
fixed for the session), so anything that reads only the current session does equally well on
both; only a model that carries what it learnt from the user's earlier sessions into the next
one can gain, and only in the signal arm. The gain is largest at the first predictions of a
session, before its own taste clicks have shown the cluster.

Times: user ``u``'s ``k``-th session starts ``k`` days plus ``u`` seconds after ``start_time``,
clicks one minute apart, so every session ends long before the user's next one starts and a
30-minute sessionisation (:func:`gru_engine.preprocess.sessionize`) gives the same sessions.
"""
from __future__ import annotations

import numpy as np

DAY = 86400.0


def _check_int(name: str, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def session_aware_events(n_users: int = 1000, sessions_per_user: int = 10, n_items: int = 1000,
                         n_tastes: int = 50, taste_weight: float = 0.3,
                         session_length: tuple = (3, 8), n_successors: int = 3,
                         persistent: bool = True, seed: int = 0,
                         start_time: float = 1_500_000_000.0):
    """Draw session-aware events (module docstring) and the truth behind them.

    n_users, sessions_per_user: ints >= 1; every user has exactly ``sessions_per_user``
        sessions.
    n_items: int, a multiple of ``n_tastes``; n_tastes: int >= 1 (clusters of
        ``n_items // n_tastes`` items).
    taste_weight: float in [0, 1], the probability that a click after the first is drawn from
        the session's taste cluster (0: no taste at all).
    session_length: ``(min, max)`` ints, 2 <= min <= max; each session's number of clicks is
        uniform on ``min..max``.
    n_successors: int >= 1, successors per item in the shared chain.
    persistent: True = signal (one taste per user), False = control (a taste per session).
    seed: the random seed (same seed, same data); start_time: Unix seconds of the first click.

    Returns ``(events, truth)``: ``events`` a dict of equal-length arrays ``SessionId`` (int64,
    ``user * sessions_per_user + k`` for the user's ``k``-th session), ``ItemId`` (int64),
    ``Time`` (float64 Unix seconds), ``UserId`` (int64), sorted by session then time;
    ``truth`` a dict with ``'cluster'`` (n_items,) int64 taste cluster of each item,
    ``'session_taste'`` (n_sessions,) int64 taste of each session (indexed by SessionId),
    ``'user_taste'`` (n_users,) int64 (the persistent taste; in the control the taste of the
    user's first session), ``'successors'`` (n_items, n_successors) int64 and
    ``'successor_p'`` (n_items, n_successors) float64 the chain.
    """
    n_users = _check_int("n_users", n_users, 1)
    sessions_per_user = _check_int("sessions_per_user", sessions_per_user, 1)
    n_tastes = _check_int("n_tastes", n_tastes, 1)
    n_items = _check_int("n_items", n_items, n_tastes)
    if n_items % n_tastes:
        raise ValueError(f"n_items ({n_items}) must be a multiple of n_tastes ({n_tastes})")
    n_successors = _check_int("n_successors", n_successors, 1)
    if not (0.0 <= float(taste_weight) <= 1.0):
        raise ValueError(f"taste_weight must be in [0, 1], got {taste_weight!r}")
    try:
        lo, hi = (int(v) for v in session_length)
    except (TypeError, ValueError):
        raise ValueError(f"session_length must be (min, max) integers, got {session_length!r}") \
            from None
    if not 2 <= lo <= hi:
        raise ValueError(f"session_length must satisfy 2 <= min <= max, got {session_length!r}")

    rng = np.random.default_rng(seed)
    cluster = np.empty(n_items, dtype=np.int64)
    cluster[rng.permutation(n_items)] = np.arange(n_items) % n_tastes
    members = np.argsort(cluster, kind="stable").reshape(n_tastes, n_items // n_tastes)
    successors = rng.integers(0, n_items, size=(n_items, n_successors))
    successor_p = rng.dirichlet(np.ones(n_successors), size=n_items)
    successor_cdf = np.cumsum(successor_p, axis=1)
    successor_cdf[:, -1] = 1.0

    n_sessions = n_users * sessions_per_user
    user_taste = rng.integers(0, n_tastes, size=n_users)
    if persistent:
        session_taste = np.repeat(user_taste, sessions_per_user)
    else:
        session_taste = rng.integers(0, n_tastes, size=n_sessions)
        user_taste = session_taste[::sessions_per_user].copy()
    lengths = rng.integers(lo, hi + 1, size=n_sessions)
    offsets = np.zeros(n_sessions + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    n_events = int(offsets[-1])

    # all sessions advance together, one click position at a time (vectorised over sessions)
    items = np.empty(n_events, dtype=np.int64)
    current = rng.integers(0, n_items, size=n_sessions)
    items[offsets[:-1]] = current
    for pos in range(1, hi):
        alive = np.flatnonzero(lengths > pos)
        if len(alive) == 0:
            break
        cur = current[alive]
        from_taste = rng.random(len(alive)) < taste_weight
        pick = rng.integers(0, n_items // n_tastes, size=len(alive))
        taste_item = members[session_taste[alive], pick]
        k = (rng.random(len(alive))[:, None] > successor_cdf[cur]).sum(axis=1)
        chain_item = successors[cur, k]
        nxt = np.where(from_taste, taste_item, chain_item)
        items[offsets[alive] + pos] = nxt
        current[alive] = nxt

    session = np.repeat(np.arange(n_sessions, dtype=np.int64), lengths)
    position = np.arange(n_events, dtype=np.int64) - offsets[session]
    user = session // sessions_per_user
    k_of_user = session % sessions_per_user
    times = start_time + k_of_user * DAY + user.astype(np.float64) + position * 60.0
    events = {"SessionId": session, "ItemId": items, "Time": times, "UserId": user}
    truth = {"cluster": cluster, "session_taste": session_taste.astype(np.int64),
             "user_taste": user_taste.astype(np.int64), "successors": successors,
             "successor_p": successor_p}
    return events, truth


def session_aware_split(events: dict) -> tuple:
    """``(train, test)`` of generated events: each user's last session is test (the HRNN
    protocol: :func:`gru_engine.preprocess.split_last_sessions`, without the support and
    length filters, which generated data does not need; test clicks on items that train never
    saw are dropped by the evaluation, counted, as for any test set)."""
    from .preprocess import split_last_sessions
    return split_last_sessions(events, 1)

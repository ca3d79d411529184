"""Session-aware data: the user of each session, for models and protocols that look across a
user's sessions (HRNN, Quadrana et al. RecSys 2017).

A session-aware event table is an ordinary event table (``SessionId``, ``ItemId``, ``Time``)
with one more column, ``UserId``: the user of each event, integer or string ids, missing
(empty, NaN, None) for events of anonymous sessions. All events of one session must have the
same user (or all none). :func:`build_user_sessions` turns such a table into
:class:`UserSessions`: the :class:`~gru_engine.data.Sessions` every model reads, plus the user
of each session.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .data import ItemIndex, Sessions, _column, _ids, _missing_mask, build_sessions, show_id

USER_KEY = "UserId"


def extract_users(data, user_key: str = USER_KEY):
    """``(ids, known)`` of a user column: ``known`` (n,) bool, False where the user is missing
    (empty, NaN, None); ``ids`` (n,) int64 / uint64 / str user ids, validated as item and
    session ids are (:func:`~gru_engine.data.extract_events`), with a placeholder (0 or ``''``)
    where ``known`` is False. ``ValueError`` naming the column when it is absent or holds ids
    that are neither all integers nor all strings."""
    values = _column(data, user_key)
    known = ~_missing_mask(values)
    present = _ids({user_key: values[known]}, user_key)
    if present.dtype.kind in "US":
        ids = np.full(len(values), "", dtype=present.dtype)
    else:
        ids = np.zeros(len(values), dtype=present.dtype if known.any() else np.int64)
    ids[known] = present
    return ids, known


def user_column(values) -> np.ndarray:
    """A user column for writing: ``values`` unchanged when no user is missing, otherwise an
    object array of the ids (Python ints or str) with ``None`` for missing users, which
    :func:`~gru_engine.data.write_events` writes as an empty field (so integer ids are not
    written as floats such as ``5.0``)."""
    ids, known = extract_users({USER_KEY: np.asarray(values)})
    if known.all():
        return ids
    out = np.empty(len(ids), dtype=object)
    out[:] = None
    out[known] = ids[known].tolist()
    return out


@dataclass
class UserSessions:
    """:class:`~gru_engine.data.Sessions` with the user of each session.

    sessions: the sessions (sorted by session id, as :func:`~gru_engine.data.build_sessions`)
    users:    (n_sessions,) int64 user code of each session, -1 for an anonymous session
    user_ids: (n_users,) distinct original user ids, sorted; ``user_ids[users[s]]`` is the user
              of session ``s``
    """

    sessions: Sessions
    users: np.ndarray
    user_ids: np.ndarray

    def codes_of(self, user_ids) -> np.ndarray:
        """(n,) int64 codes of original ``user_ids`` in this table, -1 where unknown."""
        q = np.asarray(user_ids)
        if len(self.user_ids) == 0 or q.size == 0:
            return np.full(q.shape, -1, dtype=np.int64)
        if (q.dtype.kind in "US") != (self.user_ids.dtype.kind in "US"):
            return np.full(q.shape, -1, dtype=np.int64)
        pos = np.minimum(np.searchsorted(self.user_ids, q), len(self.user_ids) - 1)
        return np.where(self.user_ids[pos] == q, pos, -1).astype(np.int64)

    def sessions_by_user(self) -> list:
        """For each user code, the int64 session numbers of that user in time order (first
        event time, ties by session number)."""
        s = self.sessions
        start = s.times[s.offsets[:-1]]
        order = np.lexsort((np.arange(s.n_sessions), start, self.users))
        order = order[self.users[order] >= 0]
        bounds = np.searchsorted(self.users[order], np.arange(len(self.user_ids) + 1))
        return [order[bounds[u]:bounds[u + 1]].astype(np.int64) for u in range(len(self.user_ids))]


def users_of_sessions(session_ids, users, known, user_key: str = USER_KEY):
    """``(sessions, user, known)``: the distinct session ids (sorted) and the user of each
    (``users`` / ``known`` per event as :func:`extract_users` gives them). ``ValueError``
    naming the session when one session has events of two users, or of a user and of none."""
    uniq_sessions, scode = np.unique(session_ids, return_inverse=True)
    order = np.lexsort((users, known, scode))
    sc, us, kn = scode[order], users[order], known[order]
    same = sc[1:] == sc[:-1]
    clash = same & ((us[1:] != us[:-1]) | (kn[1:] != kn[:-1]))
    if clash.any():
        j = int(np.flatnonzero(clash)[0])
        a = show_id(us[j]) if kn[j] else "none"
        b = show_id(us[j + 1]) if kn[j + 1] else "none"
        raise ValueError(f"column {user_key!r}: session {show_id(uniq_sessions[sc[j]])} has "
                         f"events of two users ({a} and {b}); a session belongs to one user")
    first = np.r_[True, ~same] if len(sc) else np.zeros(0, dtype=bool)
    session_user = np.zeros(len(uniq_sessions), dtype=users.dtype)
    session_known = np.zeros(len(uniq_sessions), dtype=bool)
    session_user[sc[first]] = us[first]
    session_known[sc[first]] = kn[first]
    return uniq_sessions, session_user, session_known


def build_user_sessions(data, item_index: ItemIndex | None = None,
                        session_key: str = "SessionId", item_key: str = "ItemId",
                        time_key: str = "Time", user_key: str = USER_KEY,
                        min_session_length: int = 2):
    """:func:`~gru_engine.data.build_sessions` plus the user of each session.

    ``ValueError`` when ``user_key`` is missing (naming it and the columns there are), or when
    one session has events of two users (or of a user and of none). Returns
    ``(user_sessions, item_index, report)``.
    """
    users, known = extract_users(data, user_key)
    sessions, item_index, report = build_sessions(data, item_index, session_key, item_key,
                                                  time_key, min_session_length)
    session_ids = _ids(data, session_key)
    if len(users) != len(session_ids):
        raise ValueError(f"column {user_key!r} has {len(users)} rows, {session_key!r} "
                         f"{len(session_ids)}")
    uniq_sessions, session_user, session_known = users_of_sessions(session_ids, users, known,
                                                                   user_key)
    kept = np.searchsorted(uniq_sessions, sessions.session_ids)
    user_ids = np.unique(session_user[kept][session_known[kept]])
    codes = np.full(sessions.n_sessions, -1, dtype=np.int64)
    has = session_known[kept]
    codes[has] = np.searchsorted(user_ids, session_user[kept][has])
    return UserSessions(sessions, codes, user_ids), item_index, report


class UserHistoryPop:
    """The simplest session-aware baseline, a :class:`~gru_engine.evaluation.UserAwareScorer`:
    every item scores the number of times the session's user clicked it in the history
    sessions, plus ``0.5 * pop / max(pop)`` with ``pop`` its number of history clicks by all
    users (< 1, so it only breaks ties between equal counts; an anonymous user or one without
    history gets popularity alone). The current session's clicks are not read. Useful as a
    check that a cross-session signal exists.

    n_items: number of item indices scored (the model's item index).
    """

    def __init__(self, n_items: int):
        self.n_items = int(n_items)

    def begin(self, n_rows: int) -> None:
        self._row_user = np.full(n_rows, -1, dtype=np.int64)
        self._told = np.zeros(n_rows, dtype=bool)  # start_sessions named the row's user
        self._history = None

    def begin_users(self, history) -> None:
        from scipy import sparse
        self._history = history
        if history is None:
            self._counts = sparse.csr_matrix((0, self.n_items), dtype=np.float32)
            self._pop = np.zeros(self.n_items, dtype=np.float32)
            return
        s = history.sessions
        event_user = np.repeat(history.users, s.lengths)
        keep = event_user >= 0
        self._counts = sparse.csr_matrix(
            (np.ones(int(keep.sum()), dtype=np.float32), (event_user[keep], s.items[keep])),
            shape=(len(history.user_ids), self.n_items))
        self._counts.sum_duplicates()
        pop = np.bincount(s.items, minlength=self.n_items).astype(np.float64)
        self._pop = (0.5 * pop / max(pop.max(), 1.0)).astype(np.float32)

    def start_sessions(self, rows, user_ids, known) -> None:
        codes = np.full(len(rows), -1, dtype=np.int64)
        if self._history is not None and np.any(known):
            codes[known] = self._history.codes_of(np.asarray(user_ids)[known])
        self._row_user[rows] = codes
        self._told[rows] = True

    def score(self, rows, items, new_session) -> np.ndarray:
        fresh = rows[new_session]
        self._row_user[fresh[~self._told[fresh]]] = -1  # a new session nobody named: anonymous
        self._told[rows] = False
        out = np.repeat(self._pop[None, :], len(rows), axis=0)
        users = self._row_user[rows]
        has = np.flatnonzero(users >= 0)
        if len(has):
            out[has] += self._counts[users[has]].toarray()
        return out


def one_user_history(sessions_items) -> UserSessions:
    """:class:`UserSessions` of one user (id 0) from a list of sessions, oldest first, each an
    array of item indices; sessions of fewer than 2 clicks are left out (as in training)."""
    kept = [np.asarray(s, np.int32) for s in sessions_items if len(s) >= 2]
    lengths = np.array([len(s) for s in kept], np.int64)
    offsets = np.r_[0, np.cumsum(lengths)].astype(np.int64)
    items = np.concatenate(kept) if kept else np.zeros(0, np.int32)
    times = np.arange(len(items), dtype=np.float64)
    sessions = Sessions(items, offsets, times, np.arange(len(kept), dtype=np.int64))
    return UserSessions(sessions, np.zeros(len(kept), np.int64),
                        np.zeros(1 if kept else 0, np.int64))

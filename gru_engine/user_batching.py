"""User-parallel mini-batches for the user-level GRU (:mod:`gru_engine.user_level`).

As session-parallel batching (:mod:`gru_engine.batching`), but each of the ``batch_size`` rows
walks one *user*: the user's sessions in time order, one input click per step (a session's
last click is only a target), then the next user. A session without a known user is a user of
its own (one session). When no user is left, finished rows drop out and the rest are
compacted in order (``src``); the epoch stops when fewer than ``min_rows`` rows are left.

Per step, for the ``n_rows`` live rows: ``cur`` the input event (index into the epoch's
``items``; the target is ``cur + 1``), ``reset`` a session starts, ``new_user`` a user starts
(rows also have ``reset``), ``last`` the input is the session's last, ``session`` the session
number of the input.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit


class Walk(NamedTuple):
    """The arrays of a :class:`UserSchedule` (compiled code walks them: :func:`advance_walk`).
    Per input (all inputs of the epoch in walk order): event (int64, index into the epoch's
    ``items``), session (int64), start, last (bool); per user with inputs: seq_start, seq_end
    (int64) its range of inputs; per row (bs,): p (int64) the current input, e (int64) the end
    of the row's user, new_user (bool), src (int64) the row before the last compaction; state
    (2,) int64 ``[n_rows, next user]``."""
    event: np.ndarray
    session: np.ndarray
    start: np.ndarray
    last: np.ndarray
    seq_start: np.ndarray
    seq_end: np.ndarray
    p: np.ndarray
    e: np.ndarray
    new_user: np.ndarray
    src: np.ndarray
    state: np.ndarray


@njit(cache=True, error_model="numpy")
def advance_walk(w, min_rows):
    """Move every row of the :class:`Walk` ``w`` one input on (a row past its user's end takes
    the next user; rows without one drop out, the rest are compacted in order, ``src``);
    returns the new ``n_rows`` (0: fewer than ``min_rows`` left, the epoch is over)."""
    n_rows, nxt = w.state[0], w.state[1]
    out = 0
    for r in range(n_rows):
        c, e, new = w.p[r] + 1, w.e[r], False
        if c >= e:
            if nxt >= len(w.seq_start):
                continue
            c, e = w.seq_start[nxt], w.seq_end[nxt]
            nxt += 1
            new = True
        w.p[out], w.e[out], w.new_user[out], w.src[out] = c, e, new, r
        out += 1
    w.state[0] = out if out >= min_rows else 0
    w.state[1] = nxt
    return w.state[0]


class UserSchedule:
    """The user-parallel walk of one epoch.

    offsets: (n_sessions + 1,) int64 CSR of the epoch's sessions; user_sessions: list of int64
    arrays, each one user's session numbers in time order (sessions of < 2 clicks are
    skipped); order: (len(user_sessions),) int64 visiting order of the users.
    """

    def __init__(self, offsets, user_sessions, order, batch_size: int, min_rows: int):
        seqs = [user_sessions[k] for k in order]
        sess = np.concatenate(seqs) if seqs else np.zeros(0, np.int64)
        seq_of = np.repeat(np.arange(len(seqs)), [len(s) for s in seqs])
        n_in = np.maximum(offsets[sess + 1] - offsets[sess] - 1, 0)
        keep = n_in > 0
        sess, seq_of, n_in = sess[keep], seq_of[keep], n_in[keep]
        total = int(n_in.sum())
        first = np.r_[0, np.cumsum(n_in)[:-1]].astype(np.int64)
        pos = np.arange(total) - np.repeat(first, n_in)
        self.event = np.repeat(offsets[sess], n_in) + pos
        self.session = np.repeat(sess, n_in)
        self.start = pos == 0
        self.last = pos == np.repeat(n_in - 1, n_in)
        in_seq = np.repeat(seq_of, n_in)
        bounds = np.searchsorted(in_seq, np.arange(len(seqs) + 1)) if len(seqs) else np.zeros(1, np.int64)
        self.seq_start = bounds[:-1][np.diff(bounds) > 0]
        self.seq_end = bounds[1:][np.diff(bounds) > 0]
        self.batch_size, self.min_rows = int(batch_size), int(min_rows)
        bs = self.batch_size
        self.p = np.zeros(bs, np.int64)
        self.e = np.zeros(bs, np.int64)
        self.new_user = np.zeros(bs, np.bool_)
        self.src = np.arange(bs, dtype=np.int64)
        n = min(bs, len(self.seq_start))
        self.p[:n], self.e[:n] = self.seq_start[:n], self.seq_end[:n]
        self.new_user[:n] = True
        self.arrays = Walk(self.event, self.session, self.start, self.last,
                           self.seq_start.astype(np.int64), self.seq_end.astype(np.int64),
                           self.p, self.e, self.new_user, self.src,
                           np.array([n if n >= self.min_rows else 0, n], np.int64))

    @property
    def n_rows(self) -> int:
        """Live rows of the current step (0: the epoch is over)."""
        return int(self.arrays.state[0])

    def rows(self):
        """``(cur, reset, new_user, last, session)`` of the live rows (views/copies of
        ``n_rows`` entries)."""
        p = self.p[:self.n_rows]
        return (self.event[p], self.start[p], self.new_user[:self.n_rows].copy(),
                self.last[p], self.session[p])

    def advance(self) -> int:
        """Move every row one input on; returns the new ``n_rows`` (0: the epoch is over)."""
        return int(advance_walk(self.arrays, self.min_rows))


def user_walks(user_sessions) -> list:
    """The walks of a training epoch over :class:`~gru_engine.session_aware.UserSessions`:
    one int64 array of session numbers per user (time order), then one per anonymous
    session."""
    walks = user_sessions.sessions_by_user()
    anonymous = np.flatnonzero(user_sessions.users < 0).astype(np.int64)
    return walks + [anonymous[k:k + 1] for k in range(len(anonymous))]


def walk_order(walks, start_times, shuffle: bool, rng) -> np.ndarray:
    """Visiting order of ``walks``: by the start time of each walk's first session (ties by
    position), or a random permutation from ``rng`` with ``shuffle``."""
    if shuffle:
        return rng.permutation(len(walks)).astype(np.int64)
    first = np.array([start_times[w[0]] for w in walks]) if walks else np.zeros(0)
    return np.argsort(first, kind="stable").astype(np.int64)

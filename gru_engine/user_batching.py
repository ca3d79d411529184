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

import numpy as np


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
        self.next_seq = 0
        n = min(bs, len(self.seq_start))
        self.p[:n], self.e[:n] = self.seq_start[:n], self.seq_end[:n]
        self.new_user[:n] = True
        self.next_seq = n
        self.n_rows = n if n >= self.min_rows else 0

    def rows(self):
        """``(cur, reset, new_user, last, session)`` of the live rows (views/copies of
        ``n_rows`` entries)."""
        p = self.p[:self.n_rows]
        return (self.event[p], self.start[p], self.new_user[:self.n_rows].copy(),
                self.last[p], self.session[p])

    def advance(self) -> int:
        """Move every row one input on; returns the new ``n_rows`` (0: the epoch is over)."""
        w = 0
        for r in range(self.n_rows):
            c, e, new = self.p[r] + 1, self.e[r], False
            if c >= e:
                if self.next_seq >= len(self.seq_start):
                    continue
                c, e = self.seq_start[self.next_seq], self.seq_end[self.next_seq]
                self.next_seq += 1
                new = True
            self.p[w], self.e[w], self.new_user[w], self.src[w] = c, e, new, r
            w += 1
        self.n_rows = w if w >= self.min_rows else 0
        return self.n_rows


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

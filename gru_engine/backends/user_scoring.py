"""The device-independent part of a user-level model's scorer (:mod:`gru_engine.user_level`):
the :class:`~gru_engine.evaluation.UserAwareScorer` protocol over the users' states, shared by
the CPU scorer (:mod:`.cpu_user_scoring`) and the CUDA one (:mod:`.cuda.user_scorer`).

``begin_users(history)`` replays each user's earlier sessions (all users in parallel, session
by session) through the device's session step to the user state ``u`` (the user GRU's step is
a few (users x Hu) products, on the host); ``start_sessions`` marks slots whose next click
starts a session of a user with a state. A marked slot's first click starts from
``h0 = tanh(u Wi + bi)`` ('init') and/or carries ``u Wu`` as extra layer-0 gates through the
session ('all'); every other new session starts as in the plain model.
"""
from __future__ import annotations

import numpy as np

from ..user_level import (U_ALL, U_G0, U_HU, U_INIT, U_ITEMS, SessionBags, gru_step,
                          user_input_gates, user_views)


class UserStateScoring:
    """Mixin of a scorer (``begin``, a session step) with the users' states. The scorer
    calls :meth:`_init_users` in its constructor and implements :meth:`_combined_step`
    (one click per row, returning the host combined states) and
    :meth:`_slot_arrays`/:meth:`_set_slot_arrays` (its per-slot state, saved around a
    replay). Per slot (host): ``slot_u`` (n, Hu) float32 the user state its next session
    starts from, ``slot_user`` (n,) bool whether it has one."""

    def _init_users(self, params: dict) -> None:
        self.UI = np.asarray(params["UI"])
        self.views = user_views(self.UI, np.ascontiguousarray(params["U"], np.float32))
        #: width of the extra layer-0 gates per slot ('all'; 0 otherwise)
        self.gw = int(self.UI[U_G0]) if self.UI[U_ALL] else 0
        self.history, self.user_u, self.user_has = None, None, None

    def _begin_user_slots(self, n: int) -> None:
        """No slot of ``0..n-1`` has a user yet."""
        self.slot_u = np.zeros((n, int(self.UI[U_HU])), np.float32)
        self.slot_user = np.zeros(n, np.bool_)

    def user_state(self, u_prev, has_prev, S, bags=None):
        """The user state after one more finished session: ``GRU_u(s, u_prev)`` (``u_prev``
        zero where not ``has_prev``); ``S``: (R, Hc) combined states ('hidden') or (R,)
        session numbers of ``bags`` ('items')."""
        v = self.views
        ub = np.where(has_prev[:, None], u_prev, 0.0).astype(np.float32)
        gx = user_input_gates(self.UI, v, S, bags)
        return gru_step(gx, ub, v["Wh"], v["bhn"])[0].astype(np.float32)

    def begin_users(self, history) -> None:
        """Replay ``history`` (:class:`~gru_engine.session_aware.UserSessions` over this
        model's item indices, or None): the state of each user after all its sessions."""
        self.history = history
        if history is None:
            self.user_u, self.user_has = None, None
            return
        walks = history.sessions_by_user()
        n_users = len(walks)
        Hu = int(self.UI[U_HU])
        u = np.zeros((n_users, Hu), np.float32)
        has = np.zeros(n_users, np.bool_)
        s = history.sessions
        bags = SessionBags(s.items, s.offsets) if self.UI[U_ITEMS] else None
        saved = self._slot_arrays()
        self.begin(n_users)
        for k in range(max((len(w) for w in walks), default=0)):
            users = np.array([i for i in range(n_users) if len(walks[i]) > k], np.int64)
            sess = np.array([walks[i][k] for i in users], np.int64)
            self.slot_u[users], self.slot_user[users] = u[users], has[users]
            S = self._replay_session(users, sess, s)
            u[users] = self.user_state(u[users], has[users], sess if bags is not None else S,
                                       bags)
            has[users] = True
        self._set_slot_arrays(saved)
        self.user_u, self.user_has = u, has

    def _replay_session(self, slots, sess, s):
        """Step sessions ``sess`` of ``s`` (Sessions) in ``slots``, all inputs (not the last
        click); returns (len(slots), Hc) combined states after each session's last input."""
        lengths = s.offsets[sess + 1] - s.offsets[sess]
        out = np.zeros((len(slots), self.Hc), np.float32)
        for t in range(int(lengths.max()) - 1):
            live = np.flatnonzero(lengths - 1 > t)
            rows = slots[live]
            items = s.items[s.offsets[sess[live]] + t]
            hc = self._combined_step(rows, items, np.full(len(rows), t == 0))
            done = lengths[live] - 2 == t
            out[live[done]] = hc[done]
        return out

    def start_sessions(self, rows, user_ids, known) -> None:
        """Slots ``rows`` start sessions of users ``user_ids`` (``known`` False: anonymous):
        the next step of each gets its user's state, when the history has one."""
        rows = np.asarray(rows, np.int64)
        has = np.zeros(len(rows), np.bool_)
        if self.history is not None and len(rows):
            codes = self.history.codes_of(np.asarray(user_ids))
            ok = np.asarray(known, np.bool_) & (codes >= 0)
            has[ok] = self.user_has[codes[ok]]
            self.slot_u[rows[has]] = self.user_u[codes[has]]
        self.slot_user[rows] = has

    def _session_starts(self, start):
        """Slots ``start`` (n,) int64 take their session's first click now: ``(user, gates,
        h0)`` with ``user`` (n,) bool the slots with a user state (the mark is used up),
        ``gates`` (n_user, 3 H0) = ``u Wu`` ('all'; else None), ``h0`` (n_user, W) =
        ``tanh(u Wi + bi)`` ('init' and some slot with a user; else None)."""
        user = self.slot_user[start]
        u = self.slot_u[start[user]]
        v = self.views
        gates = u @ v["Wu"] if self.gw else None
        h0 = np.tanh(u @ v["Wi"] + v["bi"]) if self.UI[U_INIT] and user.any() else None
        self.slot_user[start] = False
        return user, gates, h0

"""User states of a live session store over a model with a user-level GRU
(:mod:`gru_engine.user_level`): the state ``u`` of each user, updated when one of the user's
sessions ends, and handed to the user's next session when it starts (see
:class:`~gru_engine.serving.store.SessionStore`, ``user_ids``)."""
from __future__ import annotations

import numpy as np

from ..network import L_H, L_STOFF
from ..user_level import U_ALL, U_G0, U_HU, U_ITEMS, SessionBags


class UserStates:
    """``table``: user id -> (Hu,) float32 state after the user's ended sessions; per slot of
    a live session with a user: the user id and (``user_input='items'``) its known clicks."""

    def __init__(self, params: dict):
        UI = params["UI"]
        self.items_input = bool(UI[U_ITEMS])
        self.Hu = int(UI[U_HU])
        #: extra state columns of a slot (the extra layer-0 gates of user_mode 'all')
        self.gates = int(UI[U_G0]) if UI[U_ALL] else 0
        LI = params["LI"]
        self.top = (int(LI[-1, L_STOFF]), int(LI[-1, L_H]))  # combined state = top layer
        self.table = {}
        self.slot_user = {}
        self.slot_clicks = {}

    def open(self, slot: int, user) -> None:
        """A session starts in ``slot`` for ``user`` (None: anonymous)."""
        self.forget(slot)
        if user is not None:
            self.slot_user[slot] = user
            self.slot_clicks[slot] = []

    def forget(self, slot: int) -> None:
        """The session in ``slot`` is gone without ending (evicted): no user update."""
        self.slot_user.pop(slot, None)
        self.slot_clicks.pop(slot, None)

    def mark(self, scorer, slots) -> None:
        """Slots about to take their session's first click: those whose user has a state get
        it (:class:`~gru_engine.backends.cpu_user_scoring.UserScorer`)."""
        for slot in slots:
            u = self.table.get(self.slot_user.get(slot))
            if u is not None:
                scorer.slot_u[slot] = u
                scorer.slot_user[slot] = True

    def clicked(self, slot: int, item: int) -> None:
        clicks = self.slot_clicks.get(slot)
        if clicks is not None:
            clicks.append(int(item))

    def end(self, scorer, slot: int, prev_state) -> None:
        """The session in ``slot`` ends: its user's state is stepped with it (sessions of 2+
        known clicks, as in training). ``prev_state``: the slot's state row before its last
        click (its top layer is the combined state after the last input, ``'hidden'``)."""
        user = self.slot_user.get(slot)
        clicks = self.slot_clicks.get(slot, [])
        self.forget(slot)
        if user is None or len(clicks) < 2:
            return
        old = self.table.get(user)
        has = np.array([old is not None])
        u_prev = (old if old is not None else np.zeros_like(scorer.slot_u[0]))[None, :]
        if self.items_input:
            bags = SessionBags(np.asarray(clicks, np.int32), np.array([0, len(clicks)], np.int64))
            S = np.zeros(1, np.int64)
        else:
            c0, H = self.top
            bags, S = None, np.asarray(prev_state[None, c0:c0 + H], np.float32)
        self.table[user] = scorer.user_state(u_prev, has, S, bags)[0]

    # ---- snapshots --------------------------------------------------------------------------
    def to_arrays(self, slots) -> dict:
        """Arrays of a snapshot: the table (``user_ids``, ``user_states`` (n_users, Hu)
        float32) and, per live session in slot order ``slots``, its user (``session_user``,
        ``session_user_known``) and its clicks (``session_clicks_indptr``/``_indices``)."""
        users = list(self.table)
        of_sessions = [self.slot_user.get(s) for s in slots]
        every = users + [u for u in of_sessions if u is not None]
        kinds = np.asarray(every).dtype.kind if every else "i"
        if kinds not in "iuU":
            raise ValueError("save needs user ids that are all integers or all strings")
        fill = "" if kinds == "U" else 0
        clicks = [self.slot_clicks.get(s, []) for s in slots]
        return {
            "user_ids": np.asarray(users) if users else np.zeros(0, np.int64),
            "user_states": (np.stack([self.table[u] for u in users]).astype(np.float32)
                            if users else np.zeros((0, self.Hu), np.float32)),
            "session_user": np.asarray([fill if u is None else u for u in of_sessions])
            if slots else np.zeros(0, np.int64),
            "session_user_known": np.array([u is not None for u in of_sessions], bool),
            "session_clicks_indptr": np.r_[0, np.cumsum([len(c) for c in clicks])].astype(
                np.int64),
            "session_clicks_indices": np.array([i for c in clicks for i in c], np.int64)}

    def from_arrays(self, arrays, n_items: int, fail) -> None:
        """Inverse of :meth:`to_arrays` for sessions in slots ``0..n-1``; ``fail(message)``
        raises the caller's file error."""
        need = ("user_ids", "user_states", "session_user", "session_user_known",
                "session_clicks_indptr", "session_clicks_indices")
        missing = [k for k in need if k not in arrays]
        if missing:
            fail(f"arrays {missing} of the user states are missing")
        ids, U = arrays["user_ids"], arrays["user_states"]
        if ids.ndim != 1 or U.dtype != np.float32 or U.shape != (len(ids), self.Hu) \
                or not np.all(np.isfinite(U)) or len(set(ids.tolist())) != len(ids):
            fail(f"arrays 'user_ids'/'user_states' are not {self.Hu}-wide finite states of "
                 "distinct users")
        known, sess = arrays["session_user_known"], arrays["session_user"]
        ip, ind = arrays["session_clicks_indptr"], arrays["session_clicks_indices"]
        n = len(known)
        if known.dtype != bool or sess.shape != (n,) or ip.shape != (n + 1,) or ip[0] != 0 \
                or np.any(np.diff(ip) < 0) or ip[-1] != len(ind) \
                or np.any((ind < 0) | (ind >= n_items)):
            fail("arrays of the sessions' users / clicks are not valid")
        self.table = {u: U[j].copy() for j, u in enumerate(ids.tolist())}
        for j in range(n):
            if known[j]:
                self.open(j, sess[j].item())
                self.slot_clicks[j] = ind[ip[j]:ip[j + 1]].tolist()

"""User states of a live session store over a model with a user-level GRU
(:mod:`gru_engine.user_level`): the state ``u`` of each user, updated when one of the user's
sessions ends, and handed to the user's next session when it starts (see
:class:`~gru_engine.serving.store.SessionStore`, ``user_ids``)."""
from __future__ import annotations

import numpy as np

from ..network import L_H, L_STOFF
from ..user_level import U_ITEMS, SessionBags


class UserStates:
    """``table``: user id -> (Hu,) float32 state after the user's ended sessions; per slot of
    a live session with a user: the user id and (``user_input='items'``) its known clicks."""

    def __init__(self, params: dict):
        self.items_input = bool(params["UI"][U_ITEMS])
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

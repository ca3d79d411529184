"""The CPU scorer of a network with a user-level GRU (:mod:`gru_engine.user_level`).

:class:`UserScorer` is the CPU :class:`~.cpu_scoring.Scorer` plus the
:class:`~gru_engine.evaluation.UserAwareScorer` protocol: ``begin_users(history)`` replays each
user's earlier sessions (all users in parallel, session by session) to the user state ``u``;
``start_sessions`` hands a starting session its user's state. A slot that starts a session
with a user state gets ``h0 = tanh(u Wi + bi)`` as its hidden state (``'init'``) and/or
``u Wu`` as its extra layer-0 gates, kept in the last ``3 H0`` columns of its state row
(``'all'``); any other new session starts as in the plain model.
"""
from __future__ import annotations

import numpy as np

from ..user_level import (U_ALL, U_G0, U_HU, U_INIT, U_ITEMS, SessionBags, gru_step,
                          user_input_gates, user_views)
from .cpu.trainer import work_buffers
from .cpu_scoring import Scorer


class UserScorer(Scorer):
    """Scorer of a user-level model; ``params`` also holds ``'UI'``/``'U'``. Other arguments as
    :class:`~.cpu_scoring.Scorer`."""

    def __init__(self, params: dict, sum_mode: bool, act: int = 0, act_param: float = 0.0,
                 n_threads: int = 1):
        super().__init__(params, sum_mode, act, act_param, n_threads)
        self.UI = np.asarray(params["UI"])
        self.views = user_views(self.UI, np.ascontiguousarray(params["U"], np.float32))
        self.gw = int(self.UI[U_G0]) if self.UI[U_ALL] else 0
        self.history, self.user_u, self.user_has = None, None, None
        self.begin(0)

    def _workspace(self, k: int, R: int):
        ws = self._ws[k]
        fresh = ws is None or ws.cap < R
        ws = super()._workspace(k, R)
        if fresh and self.gw:
            ws.work = work_buffers(self.net.SI, self.net.LI, ws.cap, self.Hc, 0, np.float32,
                                   grads=False, user_gates=self.gw)
        return ws

    def begin(self, n_rows: int) -> None:
        """Zero the states of slots ``0..n_rows-1``; no slot has a user yet."""
        n = int(n_rows)
        self.state = np.zeros((n, self.width + self.gw), np.float32)
        self.slot_u = np.zeros((n, int(self.UI[U_HU])), np.float32)
        self.slot_user = np.zeros(n, np.bool_)

    # ---- users ------------------------------------------------------------------------------
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
        saved = (self.state, self.slot_u, self.slot_user)
        self.begin(n_users)
        for k in range(max((len(w) for w in walks), default=0)):
            users = np.array([i for i in range(n_users) if len(walks[i]) > k], np.int64)
            sess = np.array([walks[i][k] for i in users], np.int64)
            self.slot_u[users], self.slot_user[users] = u[users], has[users]
            S = self._replay_session(users, sess, s)
            u[users] = self.user_state(u[users], has[users], sess if bags is not None else S,
                                       bags)
            has[users] = True
        self.state, self.slot_u, self.slot_user = saved
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
            rows, items, new = self._inputs(rows, items, np.full(len(rows), t == 0))
            self._reserve(1)
            aug = self._step(self._workspace(0, len(rows)), rows, items, new)
            done = lengths[live] - 2 == t
            out[live[done]] = aug[done, :self.Hc]
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

    def _inputs(self, rows, items, new_session):
        """As :meth:`Scorer._inputs`; slots starting a session with a user state get it
        (``h0`` and no reset for 'init', the extra gates for 'all'); every other starting slot
        starts as a plain session. The user mark is used once."""
        rows, items, new_session = super()._inputs(rows, items, new_session)
        start = rows[new_session]
        if len(start) == 0:
            return rows, items, new_session
        user = self.slot_user[start]
        with_user = start[user]
        v = self.views
        if self.gw:
            self.state[start, self.width:] = 0.0
            if len(with_user):
                self.state[with_user, self.width:] = self.slot_u[with_user] @ v["Wu"]
        if self.UI[U_INIT] and len(with_user):
            self.state[with_user, :self.width] = np.tanh(self.slot_u[with_user] @ v["Wi"]
                                                         + v["bi"])
            new_session = new_session.copy()
            new_session[np.flatnonzero(new_session)[user]] = False
        self.slot_user[start] = False
        return rows, items, new_session


class OneUser:
    """A :class:`UserScorer` seen as a plain scorer whose every new session belongs to user
    ``code`` of the scorer's history (``begin_users`` done): ``recommend`` with a user."""

    def __init__(self, scorer: UserScorer, code: int):
        self.scorer, self.code = scorer, int(code)
        self.n_items = scorer.n_items

    def begin(self, n_rows: int) -> None:
        self.scorer.begin(n_rows)

    def _start(self, rows, new_session):
        rows = np.asarray(rows, np.int64)[np.asarray(new_session, np.bool_)]
        if len(rows):
            ids = self.scorer.history.user_ids[np.full(len(rows), self.code)]
            self.scorer.start_sessions(rows, ids, np.ones(len(rows), np.bool_))

    def score(self, rows, items, new_session):
        self._start(rows, new_session)
        return self.scorer.score(rows, items, new_session)

    def advance(self, rows, items, new_session):
        self._start(rows, new_session)
        return self.scorer.advance(rows, items, new_session)

    def topk(self, rows, items, new_session, k, exclude=None):
        self._start(rows, new_session)
        return self.scorer.topk(rows, items, new_session, k, exclude)


def user_scorer_of(model, user_sessions):
    """A scorer of ``model`` whose new sessions start from the user state of ``user_sessions``
    (earlier sessions, oldest first, each a sequence of original item ids; unknown ids raise
    ``KeyError``), or None when none has 2 clicks. ``ValueError`` for a model without a
    user-level GRU."""
    from ..session_aware import one_user_history
    if "UI" not in model.params_:
        raise ValueError("user_sessions needs a user-level model (user_layers > 0); this "
                         "model has none")
    history = one_user_history([model.item_index_.to_index(np.atleast_1d(np.asarray(s)))
                                for s in user_sessions])
    if history.sessions.n_sessions == 0:
        return None
    sc = model.scorer()
    sc.begin_users(history)
    return OneUser(sc, 0)

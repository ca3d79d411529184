"""The CPU scorer of a network with a user-level GRU (:mod:`gru_engine.user_level`).

:class:`UserScorer` is the CPU :class:`~.cpu_scoring.Scorer` plus the users' states of
:class:`~.user_scoring.UserStateScoring` (the :class:`~gru_engine.evaluation.UserAwareScorer`
protocol). A slot that starts a session with a user state gets ``h0 = tanh(u Wi + bi)`` as
its hidden state (``'init'``) and/or ``u Wu`` as its extra layer-0 gates, kept in the last
``3 H0`` columns of its state row (``'all'``); any other new session starts as in the plain
model.
"""
from __future__ import annotations

import numpy as np

from .cpu.trainer import work_buffers
from .cpu_scoring import Scorer
from .user_scoring import UserStateScoring


class UserScorer(UserStateScoring, Scorer):
    """Scorer of a user-level model; ``params`` also holds ``'UI'``/``'U'``. Other arguments as
    :class:`~.cpu_scoring.Scorer`."""

    def __init__(self, params: dict, sum_mode: bool, act: int = 0, act_param: float = 0.0,
                 n_threads: int = 1):
        super().__init__(params, sum_mode, act, act_param, n_threads)
        self._init_users(params)
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
        self._begin_user_slots(n)

    def _slot_arrays(self):
        return self.state, self.slot_u, self.slot_user

    def _set_slot_arrays(self, arrays) -> None:
        self.state, self.slot_u, self.slot_user = arrays

    def _combined_step(self, rows, items, new_session):
        rows, items, new = self._inputs(rows, items, new_session)
        self._reserve(1)
        return self._step(self._workspace(0, len(rows)), rows, items, new)[:, :self.Hc]

    def _inputs(self, rows, items, new_session):
        """As :meth:`Scorer._inputs`; slots starting a session with a user state get it
        (``h0`` and no reset for 'init', the extra gates for 'all'); every other starting slot
        starts as a plain session."""
        rows, items, new_session = super()._inputs(rows, items, new_session)
        start = rows[new_session]
        if len(start) == 0:
            return rows, items, new_session
        user, gates, h0 = self._session_starts(start)
        with_user = start[user]
        if self.gw:
            self.state[start, self.width:] = 0.0
            self.state[with_user, self.width:] = gates
        if h0 is not None:
            self.state[with_user, :self.width] = h0
            new_session = new_session.copy()
            new_session[np.flatnonzero(new_session)[user]] = False
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

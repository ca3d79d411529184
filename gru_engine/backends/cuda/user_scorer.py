"""The CUDA scorer of a network with a user-level GRU (:mod:`gru_engine.user_level`).

:class:`UserScorer` is the CUDA :class:`~.scorer.Scorer` plus the users' states of
:class:`~gru_engine.backends.user_scoring.UserStateScoring` (the
:class:`~gru_engine.evaluation.UserAwareScorer` protocol; the user GRU's step, once per
replayed session, on the host). The session steps, scores, ranks and top-k run on the device:
a slot that starts a session with a user state gets ``h0 = tanh(u Wi + bi)`` in every layer
of ``h`` (``'init'``; the slot does not reset) and/or ``u Wu`` in its row of ``gates`` (n_rows,
3 H0), added to layer 0's gates of subnet 0 at every step of the session (``'all'``); any
other new session starts as in the plain model (zero gates).
"""
from __future__ import annotations

import numpy as np

from ...network import L_HOFF
from ..user_scoring import UserStateScoring
from .ops import BLOCK, grid
from .scorer import Scorer


class UserScorer(UserStateScoring, Scorer):
    """Scorer of a user-level model on ``device``; ``params`` also holds ``'UI'``/``'U'``.
    Other arguments as :class:`~.scorer.Scorer`."""

    def __init__(self, device, params: dict, sum_mode: bool, final_act=(0, 0.0),
                 cache_on=None):
        super().__init__(device, params, sum_mode, final_act, cache_on)
        self._init_users(params)
        self.Hc = self.net.Hc
        self.gates = None
        self._begin_user_slots(0)

    @property
    def extra_state(self):
        """The slots' extra layer-0 gates ('all'), kept by a session store with ``h``."""
        return (self.gates,) if self.gw else ()

    def begin(self, n_rows: int) -> None:
        """Zero the states (and gates) of slots ``0..n_rows-1``; no slot has a user yet."""
        super().begin(n_rows)
        if self.gw:
            self.gates = self.dev.zeros((int(n_rows), self.gw))
        self._begin_user_slots(int(n_rows))

    def _slot_arrays(self):
        return self.h, self.gates, self.slot_u, self.slot_user

    def _set_slot_arrays(self, arrays) -> None:
        self.h, self.gates, self.slot_u, self.slot_user = arrays

    def _combined_step(self, rows, items, new_session):
        return self.dev.to_host(self._step(rows, items, new_session))

    def _scatter(self, dst, rows, values) -> None:
        """``dst[rows] = values`` (host (n, w) values, distinct host rows) on the device."""
        if len(rows) == 0:
            return
        n, w = values.shape
        d = self.dev
        d.launch("scatter_rows", grid(n * w), BLOCK,
                 [d.to_device(np.ascontiguousarray(values, np.float32)),
                  d.to_device(np.asarray(rows), np.int32), n, w, dst])

    def _step(self, rows, items, new_session):
        """As :meth:`Scorer._step`; slots starting a session with a user state get it first
        (``h0`` and no reset for 'init', the extra gates for 'all')."""
        if self.h is None:
            raise ValueError("call begin(n_rows) before score()")
        rows = np.asarray(rows, np.int64)
        new_session = np.asarray(new_session, np.bool_)
        start = rows[new_session]
        if len(start):
            user, gates, h0 = self._session_starts(start)
            with_user = start[user]
            if self.gw:
                self._scatter(self.gates, start, np.zeros((len(start), self.gw), np.float32))
                self._scatter(self.gates, with_user, gates)
            if h0 is not None:
                for g, h in enumerate(self.h):
                    off = int(self.net.LI[g, L_HOFF])
                    self._scatter(h, with_user, h0[:, off:off + h.shape[1]])
                new_session = new_session.copy()
                new_session[np.flatnonzero(new_session)[user]] = False
        return super()._step(rows, items, new_session)

    def _layer0_gates(self, rows_d, R: int):
        """The rows' extra gates (R, 3 H0) ('all'), else None."""
        if not self.gw:
            return None
        out, gw = self._buf("user_gates", (R, self.gw)), self.gw
        self.dev.launch("gather_rows", grid(R * gw), BLOCK,
                        [self.gates, gw, rows_d, R, gw, None, None, out, gw])
        return out

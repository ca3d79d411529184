"""The context of a :class:`~gru_engine.serving.store.SessionStore` over a context-aware model
(:mod:`gru_engine.context`): per slot the time and column ids of the session's last click and
the time of the click before it, and the rows' context set on the scorer before each step.

A click at time ``t`` (``step(..., times=)``, Unix seconds) enters with its own context (gap
since the session's previous click, hour, weekday, column values); its answer is for a next
event at the request's own time: the output context of ``t`` with a gap of 0 seconds.
``recommend_for(..., now=)`` answers for a next event at ``now`` (gap ``now`` - last click).
Snapshots (:mod:`gru_engine.serving.snapshot`) keep each live session's context
(:meth:`StoreContext.to_arrays`).
"""
from __future__ import annotations

import numpy as np

from ..context_scoring import encoder_of


class StoreContext:
    """Context bookkeeping of a store of ``capacity`` slots over a context-aware ``model``."""

    def __init__(self, model, capacity: int):
        self.enc = encoder_of(model)
        self.last_time = np.zeros(capacity)
        self.prev_time = np.zeros(capacity)
        self.last_cols = np.zeros((capacity, len(self.enc.columns)), np.int32)
        self.times = None   # the current call's click times (per entry) and column ids
        self.cols = None

    def begin_call(self, n: int, times, columns) -> None:
        """The per-entry ``times`` (n,) seconds and ``columns`` (name -> n values) of a
        ``step``/``advance`` call; ``ValueError`` naming what is missing or malformed."""
        enc = self.enc
        if enc.time:
            if times is None:
                raise ValueError("this model has time context: step/advance need times= (the "
                                 "clicks' Unix seconds, one per entry)")
            t = np.asarray(times, np.float64).reshape(-1)
            if len(t) != n or not np.all(np.isfinite(t)):
                raise ValueError(f"times must hold {n} finite seconds, got {len(t)} values")
        else:
            t = np.zeros(n)
        self.times = t
        self.cols = enc.column_ids(enc.checked_columns(columns, n, "step/advance"), n)

    def clicks(self, scorer, slots, new, pos) -> None:
        """Before stepping ``slots`` by the call's entries ``pos`` (``new``: the session's
        first click): their input context, the output context of the request's own time,
        set on ``scorer``; the slots' times updated."""
        t = self.times[pos]
        t_in = self.enc.time_ids(t, self.last_time[slots], new)
        t_out = self.enc.time_ids(t, t, np.zeros(len(t), bool))
        scorer.set_context(self.enc.input_rows(t_in, self.cols[pos]),
                           self.enc.output_rows(t_out))
        self.prev_time[slots] = np.where(new, t, self.last_time[slots])
        self.last_time[slots] = t
        self.last_cols[slots] = self.cols[pos]

    def replay(self, scorer, slots, first, now) -> None:
        """Before replaying the last click of ``slots`` (``first``: it was the session's
        first): its input context again, the output context of a next event at ``now`` (one
        time per slot)."""
        t = self.last_time[slots]
        t_in = self.enc.time_ids(t, self.prev_time[slots], first)
        t_out = self.enc.time_ids(np.asarray(now, np.float64), t, np.zeros(len(t), bool))
        scorer.set_context(self.enc.input_rows(t_in, self.last_cols[slots]),
                           self.enc.output_rows(t_out))

    def request_time(self, now) -> float:
        """The request time of ``recommend_for(..., now=)``: ``ValueError`` without a finite
        ``now`` for a model with time context (0 for a model without)."""
        if not self.enc.time:
            return 0.0
        if now is None:
            raise ValueError("this model has time context: recommend_for needs now= (the "
                             "request's Unix seconds)")
        if not np.isfinite(float(now)):
            raise ValueError(f"now must be finite seconds, got {now!r}")
        return float(now)

    def to_arrays(self, slots) -> dict:
        """Arrays of a snapshot, per live session in slot order ``slots``: the time of its last
        click and of the click before (``context_last_time``/``context_prev_time`` (n,) float64
        seconds) and its last click's column ids (``context_last_cols`` (n, n_columns)
        int32)."""
        slots = np.asarray(slots, np.int64)
        return {"context_last_time": self.last_time[slots].copy(),
                "context_prev_time": self.prev_time[slots].copy(),
                "context_last_cols": self.last_cols[slots].copy()}

    def from_arrays(self, arrays, n: int, fail) -> None:
        """Inverse of :meth:`to_arrays` for ``n`` sessions in slots ``0..n-1``;
        ``fail(message)`` raises the caller's file error (missing arrays, wrong shapes or
        dtypes, non-finite times, column ids outside the model's vocabularies)."""
        n_cols = len(self.enc.columns)
        want = {"context_last_time": (np.float64, (n,)), "context_prev_time": (np.float64, (n,)),
                "context_last_cols": (np.int32, (n, n_cols))}
        for name, (dtype, shape) in want.items():
            a = arrays.get(name)
            if a is None or a.dtype != dtype or a.shape != shape:
                fail(f"array {name!r} of the sessions' context is missing or not {shape} "
                     f"{np.dtype(dtype)}")
        last, prev = arrays["context_last_time"], arrays["context_prev_time"]
        if not (np.all(np.isfinite(last)) and np.all(np.isfinite(prev))):
            fail("arrays 'context_last_time'/'context_prev_time' hold non-finite times")
        cols = arrays["context_last_cols"]
        limit = np.array([len(v) + 1 for v in self.enc.vocab], np.int64)
        if np.any(cols < 0) or np.any(cols >= limit):
            fail("array 'context_last_cols' holds ids outside the model's column vocabularies "
                 f"(sizes {limit.tolist()}, 0 = unknown)")
        self.last_time[:n], self.prev_time[:n], self.last_cols[:n] = last, prev, cols

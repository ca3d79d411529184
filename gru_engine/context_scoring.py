"""Scoring a context-aware model (:mod:`gru_engine.context`): the CPU and CUDA scorers that
feed each step's context, the evaluator's per-event context, and ``recommend`` with the
request's time."""
from __future__ import annotations

import numpy as np

from . import params as hp
from .backends.cpu.context_step import make_ctx
from .backends.cpu_scoring import Scorer
from .backends.cuda.context import DeviceContext
from .backends.cuda.scorer import Scorer as DeviceScorer
from .context import ContextEncoder, check_times, config, read_columns
from .network import S_A


def encoder_of(model) -> ContextEncoder:
    """The fitted model's :class:`~gru_engine.context.ContextEncoder`."""
    p = hp.validate({k: v for k, v in model.get_params().items() if k in hp.DEFAULTS})
    return ContextEncoder(p["context_time"], p["context_columns"], model.context_vocab_)


class ContextRows:
    """The rows' context of a context-aware scorer (CPU :class:`ContextScorer` and CUDA
    :class:`DeviceContextScorer`). Before each ``score``/``rank``/``topk``/``advance`` call
    give the rows' context: either :meth:`set_context` (table rows) or, after
    :meth:`bind_events`, :meth:`set_events` (event indices; what
    :func:`gru_engine.evaluation.evaluate_sessions` calls)."""

    def _init_rows(self, model) -> dict:
        """Set up the rows' context of ``model``; returns its validated parameters."""
        p = hp.validate({k: v for k, v in model.get_params().items() if k in hp.DEFAULTS})
        enc = encoder_of(model)
        self.cfg = config(p)
        self.n_in, self.n_out = len(enc.sizes_in), len(enc.sizes_out)
        self._rows = (np.zeros((0, self.n_in), np.int32), np.zeros((0, self.n_out), np.int32))
        self._events = None
        return p

    def set_context(self, rin, rout) -> None:
        """The next call's rows' context: ``rin`` (R, F_in) input-side table rows of the
        clicks, ``rout`` (R, F_out) output-side rows of the next event (the request)."""
        self._rows = (np.ascontiguousarray(rin, np.int32), np.ascontiguousarray(rout, np.int32))

    def bind_events(self, ev_in, ev_out) -> None:
        """Per-event rows of the sessions being replayed
        (:meth:`~gru_engine.context.ContextEncoder.event_rows`)."""
        self._events = (ev_in, ev_out)

    def set_events(self, events) -> None:
        """The next call's rows are the clicks ``events`` (indices into the bound events; the
        output context is the following event's)."""
        ev = np.asarray(events, np.int64)
        self.set_context(self._events[0][ev], self._events[1][ev + 1])

    def _rows_for(self, R: int) -> tuple:
        """``(rin, rout)`` of the next step's ``R`` rows (``ValueError`` when unset)."""
        rin, rout = self._rows
        if len(rin) != R or len(rout) != R:
            raise ValueError(f"a context-aware scorer needs the context of its {R} rows: call "
                             f"set_context or set_events first (it has {len(rin)})")
        return rin, rout


class ContextScorer(ContextRows, Scorer):
    """The CPU :class:`~gru_engine.backends.cpu_scoring.Scorer` of a context-aware model (the
    rows' context: :class:`ContextRows`). Scores on one thread (the rows' context is set per
    call, not per row block). With ``context_input='multiply'`` the layer-0 projection is not
    precomputed (it depends on the context)."""

    def __init__(self, model):
        p = self._init_rows(model)
        if p["context_input"] == "multiply":
            self.MAX_TABLE = 0
        act, act_param = hp.parse_final_act(model.final_act)
        super().__init__(model.params_, bool(model.params_["SI"][0, S_A] >= 0), act, act_param,
                         1)
        self.Cin = np.ascontiguousarray(model.params_["context_in"], np.float32)
        self.Cout = np.ascontiguousarray(model.params_["context_out"], np.float32)
        self.Ch = np.ascontiguousarray(model.params_["context_h"], np.float32)

    @property
    def n_threads(self) -> int:
        """Always 1: the rows' context is set per call, not per row block (a store or model
        asking for more threads gets one)."""
        return 1

    @n_threads.setter
    def n_threads(self, value) -> None:
        pass

    def _workspace(self, k, R):
        ws = super()._workspace(k, R)
        if ws.context is None or ws.context.rin.shape[0] != ws.cap:
            ws.context = make_ctx(self.cfg, self.Cin, self.Cout, ws.cap,
                                  np.zeros((0, self.n_in), np.int32),
                                  np.zeros((0, self.n_out), np.int32), grads=False, Ch=self.Ch)
        return ws

    def _step(self, ws, rows, items, new_session):
        R = len(rows)
        rin, rout = self._rows_for(R)
        ws.context.rin[:R, :self.n_in] = rin
        ws.context.rout[:R, :self.n_out] = rout
        return super()._step(ws, rows, items, new_session)


class DeviceContextScorer(ContextRows, DeviceScorer):
    """The CUDA :class:`~gru_engine.backends.cuda.Scorer` of a context-aware model trained on
    CUDA (``device``: its :class:`~gru_engine.backends.device.Device`): the rows' context as
    :class:`ContextRows`, the tables on the device (a :class:`~gru_engine.backends.cuda.
    context.DeviceContext`); scores, ranks and top-k on the device. ``params``: None
    (``params_``) or a variant of them with new items' bags (a store's new items)."""

    def __init__(self, model, device, params=None):
        self._init_rows(model)
        own = params is None
        params = model.params_ if own else params
        super().__init__(device, params, bool(params["SI"][0, S_A] >= 0),
                         hp.parse_final_act(model.final_act), cache_on=model if own else None)
        self.context = DeviceContext(device, self.cfg, model.params_["context_in"],
                                     model.params_["context_out"], self.n_in, self.n_out,
                                     self._buf, Ch=model.params_["context_h"])

    def _step(self, rows, items, new_session):
        self.context.set_rows(*self._rows_for(len(rows)))
        return super()._step(rows, items, new_session)


def session_rows(model, sessions, table) -> tuple:
    """``(ev_in, ev_out)`` of ``sessions`` built from the event table ``table``."""
    enc = encoder_of(model)
    if enc.time:
        check_times(sessions.times, model.keys_["time_key"])
    return enc.event_rows(sessions.times, sessions.offsets,
                          read_columns(table, enc.columns, sessions.rows))


def scorer_for_sessions(model, sessions, table) -> ContextScorer:
    """A scorer bound to the events of ``sessions`` (evaluation)."""
    sc = model.scorer()
    sc.bind_events(*session_rows(model, sessions, table))
    return sc


def request_rows(model, lengths, times, now, columns, call: str) -> tuple:
    """``(ev_in, ev_out, starts)``: the context rows of sessions of ``lengths`` clicks, each
    followed by its request (the next event, whose time context is the output context), and
    each session's first event index. ``times``: per session its clicks' Unix seconds (needed
    for time context); ``now``: per session the request's seconds (None: its last click's
    time, the answer right after that click); ``columns``: name -> per session its clicks'
    values. ``ValueError`` naming what ``call`` is missing or malformed."""
    enc = encoder_of(model)
    n_s = len(lengths)
    if enc.time:
        if times is None:
            raise ValueError(f"this model has time context: {call} needs times= (the clicks' "
                             "times, Unix seconds) and now= (the request's time)")
        if len(times) != n_s:
            raise ValueError(f"times has {len(times)} sessions for {n_s}")
        if now is not None and len(now) != n_s:
            raise ValueError(f"now has {len(now)} entries for {n_s} sessions")
        parts = []
        for j, n in enumerate(lengths):
            t = np.asarray(times[j], np.float64).reshape(-1)
            if len(t) != n:
                raise ValueError(f"times has {len(t)} entries for {n} clicks")
            parts.append(np.concatenate([t, [t[-1] if now is None else float(now[j])]]))
        ev_t = np.concatenate(parts) if parts else np.zeros(0)
        ok = [np.all(np.isfinite(q)) and np.all(np.diff(q) >= 0) for q in parts]
        if not all(ok):
            raise ValueError("times and now must be finite and in click order (non-decreasing)")
        check_times(ev_t, "times")
    else:
        ev_t = np.zeros(int(np.sum(lengths)) + n_s)
    enc.checked_columns({c: () for c in (columns or {})}, 0, call)  # names a missing column
    cols = {}
    for c in enc.columns:
        per, parts = columns[c], []
        if len(per) != n_s:
            raise ValueError(f"columns[{c!r}] has {len(per)} sessions for {n_s}")
        for j, n in enumerate(lengths):
            v = np.atleast_1d(np.asarray(per[j]))
            if len(v) != n:
                raise ValueError(f"columns[{c!r}] has {len(v)} values for {n} clicks")
            parts += [v.astype(str), np.array([""])]
        cols[c] = np.concatenate(parts)
    offsets = np.concatenate([[0], np.cumsum(np.asarray(lengths, np.int64) + 1)])
    ev_in, ev_out = enc.event_rows(ev_t, offsets, cols)
    return ev_in, ev_out, offsets[:-1]


def recommend(model, session_items, k, exclude, times, now, columns):
    """:meth:`SessionGRU.recommend` of a context-aware model: the clicks ``session_items`` (n,)
    original ids at ``times`` (n,) seconds, the request at ``now`` (seconds; its time context
    is the output context), ``columns``: name -> (n,) values of the clicks'
    ``context_columns``."""
    from .base import check_request
    from .ranking import Exclusions
    items = model.item_index_.to_index(np.atleast_1d(np.asarray(session_items)))
    check_request(items, k)
    enc = encoder_of(model)
    n = len(items)
    if enc.time and (times is None or now is None):
        raise ValueError("this model has time context: recommend needs times= (the clicks' "
                         "times, Unix seconds) and now= (the request's time)")
    ev_in, ev_out, _ = request_rows(
        model, [n], None if times is None else [times], None if now is None else [now],
        None if columns is None else {c: [v] for c, v in columns.items()}, "recommend")
    sc = model.scorer()
    sc.bind_events(ev_in, ev_out)
    sc.begin(1)
    row = np.zeros(1, np.int64)
    for t in range(n - 1):
        sc.set_events([t])
        sc.advance(row, np.array([items[t]], np.int32), np.array([t == 0]))
    excl = None
    if exclude is not None:
        e = model.item_index_.lookup(np.atleast_1d(np.asarray(exclude)))
        excl = Exclusions([e[e >= 0]], sc.n_items)
    sc.set_events([n - 1])
    idx, vals = sc.topk(row, np.array([items[-1]], np.int32), np.array([n == 1]),
                        min(int(k), sc.n_items), excl)
    keep = np.isfinite(vals[0])
    return model.item_index_.ids[np.asarray(idx[0], np.int64)[keep]], vals[0][keep]


def predict_scorer(model, seqs, times, now, columns) -> tuple:
    """``(scorer, starts)`` for :meth:`SessionGRU.predict_next` of a context-aware model:
    a scorer bound to the context rows of the sessions ``seqs`` and their requests
    (:func:`request_rows`), ``starts`` (n_sessions,) each session's first event."""
    ev_in, ev_out, starts = request_rows(model, [len(s) for s in seqs], times, now, columns,
                                         "predict_next")
    sc = model.scorer()
    sc.bind_events(ev_in, ev_out)
    return sc, starts

"""The context-aware GRU (Smirnova & Vasile, "Contextual sequence modeling for recommendation
with recurrent neural networks", DLRS 2017): the options ``context_input``, ``context_output``,
``context_time`` and ``context_columns`` of :class:`~gru_engine.model.SessionGRU` and
:class:`~gru_engine.feature_model.FeatureSessionGRU`.

Context features are integer ids per event:

* ``'gap'``: time since the session's previous click, ``0`` for a session's first click, else
  ``1 + floor(log2(1 + seconds))`` capped at :data:`GAP_BUCKETS` (1 s, 2-3 s, 4-7 s, ...);
* ``'hour'``: hour of day (0-23, UTC); ``'weekday'``: day of week (0 = Monday, UTC);
* each name in ``context_columns``: a per-event categorical column of the event table (e.g. an
  event type), its training values as the vocabulary, id 0 for a value not seen in training.

The time features need real timestamps (Unix seconds or datetime64) in the time column: a
column whose values lie below :data:`MIN_UNIX_TIME` (an ordinal event counter, as in
yoochoose-1-64 and diginetica here) is refused with a ``ValueError``.

Each feature has its own rows in a context table, and an event's context is the sum of its
features' rows: a one-hot context vector times a weight matrix. The variants (the paper's
concatenative and multiplicative integration; tables start at zero, so a context model starts
as the plain network):

* ``context_input='concat'``: the current event's context concatenated to the input of layer 0
  of the first subnet (the ID subnet): its rows ``Cin`` (R_in, 3 H_0) add to the layer-0 gate
  pre-activations, ``[x, c] @ [Wx; Cin] = x Wx + c Cin``;
* ``context_input='multiply'``: the input vector (after input dropout) times ``1 + c Cin``,
  ``Cin`` (R_in, d_0) with d_0 the subnet's input width, before ``Wx``;
* ``context_output='multiply'``: the combined state before the output layer times ``1 + c'
  Cout``, ``Cout`` (R_out, Hc), ``c'`` the *next* event's time context (in training the
  target's time; at serving the request's time, ``recommend(..., now=...)``). Categorical
  columns enter the input side only (a request does not know its own event type);
* ``context_transition='multiply'``: the paper's context-dependent hidden dynamics, the
  recurrent matrix of layer 0 of the ID subnet as a function of the current event's context,
  ``W_h(c) = diag(1 + c Ch) W_h``: the previous state times ``1 + c Ch`` where ``W_h`` reads
  it (``gh = (h_prev * (1 + c Ch)) W_h``; the update gate still mixes the plain ``h_prev``),
  ``Ch`` (R_in, H_0) over the input-side features.

Serving: :mod:`gru_engine.context_scoring` (``evaluate``, ``recommend(..., times=, now=)``,
``predict_next(..., times=, now=, columns=)``, file scoring through
:mod:`gru_engine.scoring`) and :mod:`gru_engine.serving.context_store` (``SessionStore``, its
snapshots keep each session's context). Training in production as for the plain model (both
devices): checkpoints (the tables' optimiser state, :mod:`gru_engine.checkpoint`),
``partial_fit`` (:func:`warm_context`: new column values join the vocabulary), session
augmentation (each kept click keeps its context rows). Kernels: on the CPU
:mod:`gru_engine.backends.cpu.context_step`; on CUDA (``device='cuda'``/``'auto'``)
:mod:`gru_engine.backends.cuda.context` over ``kernels/context.cu``, the same operations in the
same order (a CUDA fit gives the CPU fit's parameters to float32 rounding), and a CUDA-trained
model scores on the device (:class:`~gru_engine.context_scoring.DeviceContextScorer`). Not
built: context together with ``user_layers > 0`` or ``output_features=True`` (``ValueError``).
"""
from __future__ import annotations

import numpy as np

from .backends.cpu.context_step import (CIN_CONCAT, CIN_MULTIPLY, CIN_NONE, COUT_MULTIPLY,
                                        COUT_NONE, CTR_MULTIPLY, CTR_NONE, make_ctx)
from .network import L_H, S_IN, S_L0

CONTEXT_INPUTS = {"none": CIN_NONE, "concat": CIN_CONCAT, "multiply": CIN_MULTIPLY}
CONTEXT_OUTPUTS = {"none": COUT_NONE, "multiply": COUT_MULTIPLY}
CONTEXT_TRANSITIONS = {"none": CTR_NONE, "multiply": CTR_MULTIPLY}
TIME_FEATURES = ("gap", "hour", "weekday")
#: gap rows: 0 = a session's first click, 1..GAP_BUCKETS = 1 + floor(log2(1 + seconds)), capped
GAP_BUCKETS = 20
#: a time column below this (1973-03-03 in Unix seconds) is an ordinal, not a timestamp
MIN_UNIX_TIME = 1e8
#: the options holding lists of names
NAME_LIST_PARAMS = ("context_time", "context_columns")
#: the parameter dict keys of the context tables (in ``params_``, model files)
TABLE_KEYS = ("context_in", "context_out", "context_h")


def _names(key, value) -> list:
    if isinstance(value, str):
        value = [value]
    try:
        out = list(value)
    except TypeError:
        raise ValueError(f"{key} must be a list of names, got {value!r}") from None
    if not all(isinstance(v, str) and v for v in out):
        raise ValueError(f"{key} must be a list of non-empty strings, got {value!r}")
    if len(set(out)) != len(out):
        raise ValueError(f"{key} names a feature twice: {value!r}")
    return out


def validate_context(p: dict) -> dict:
    """The validated context options of a hyperparameter dict (``ValueError`` naming the bad
    one): ``context_time`` and ``context_columns`` as lists."""
    cin, cout, ctr = p["context_input"], p["context_output"], p.get("context_transition", "none")
    if ctr not in CONTEXT_TRANSITIONS:
        raise ValueError(f"context_transition must be one of {list(CONTEXT_TRANSITIONS)}, got "
                         f"{ctr!r}")
    if cin not in CONTEXT_INPUTS:
        raise ValueError(f"context_input must be one of {list(CONTEXT_INPUTS)}, got {cin!r}")
    if cout not in CONTEXT_OUTPUTS:
        raise ValueError(f"context_output must be one of {list(CONTEXT_OUTPUTS)}, got {cout!r}")
    times = _names("context_time", TIME_FEATURES if p["context_time"] is None
                   else p["context_time"])
    bad = [t for t in times if t not in TIME_FEATURES]
    if bad:
        raise ValueError(f"context_time: unknown time feature(s) {bad}; choose from "
                         f"{list(TIME_FEATURES)}")
    columns = _names("context_columns", () if p["context_columns"] is None
                     else p["context_columns"])
    for key, side in (("context_input", cin), ("context_transition", ctr)):
        if side != "none" and not times and not columns:
            raise ValueError(f"{key}={side!r} needs at least one feature: context_time or "
                             "context_columns is empty")
    if cout != "none" and not times:
        raise ValueError(f"context_output={cout!r} needs time features (the next event's "
                         "context), but context_time is empty")
    if columns and cin == "none" and ctr == "none":
        raise ValueError(f"context_columns={columns!r} enter the input side only, but "
                         "context_input='none' and context_transition='none'")
    return {"context_time": times, "context_columns": columns}


def enabled(p: dict) -> bool:
    """Whether validated parameters ``p`` ask for a context-aware network."""
    return (p["context_input"] != "none" or p["context_output"] != "none"
            or p.get("context_transition", "none") != "none")


def input_side(p: dict) -> bool:
    """Whether the current event's (input-side) context is read: by ``context_input`` or
    ``context_transition``."""
    return p["context_input"] != "none" or p.get("context_transition", "none") != "none"


def check_times(times: np.ndarray, time_key: str) -> None:
    """``ValueError`` unless ``times`` (seconds) look like real timestamps."""
    if len(times) and float(np.max(times)) < MIN_UNIX_TIME:
        raise ValueError(f"context_time needs real timestamps (Unix seconds or datetime64) in "
                         f"column {time_key!r}, but its values lie in [{float(np.min(times)):g}, "
                         f"{float(np.max(times)):g}]: an ordinal event counter, not a time. "
                         "Use context_time=[] with context_columns, or data with real times")


def _gap_ids(gaps: np.ndarray, first: np.ndarray) -> np.ndarray:
    """(n,) int32 gap buckets of gaps in seconds (``first``: a session's first click)."""
    b = 1 + np.floor(np.log2(1.0 + np.maximum(gaps, 0.0)))
    b = np.minimum(b, GAP_BUCKETS).astype(np.int32)
    b[first] = 0
    return b


class ContextEncoder:
    """Context features of one fitted model: ``time`` (names of :data:`TIME_FEATURES`),
    ``columns`` (categorical column names) and ``vocab`` (per column, its sorted training values
    as a str array; id ``1 + position``, 0 for unknown)."""

    def __init__(self, time, columns, vocab):
        self.time, self.columns, self.vocab = list(time), list(columns), list(vocab)

    @property
    def sizes_in(self) -> list:
        """Rows of each input-side feature (time features first, then columns)."""
        return [self._time_size(t) for t in self.time] + [len(v) + 1 for v in self.vocab]

    @property
    def sizes_out(self) -> list:
        return [self._time_size(t) for t in self.time]

    @staticmethod
    def _time_size(name) -> int:
        return {"gap": GAP_BUCKETS + 1, "hour": 24, "weekday": 7}[name]

    @classmethod
    def fit(cls, p: dict, columns: dict) -> "ContextEncoder":
        """The encoder of validated parameters ``p``; ``columns``: name -> training values."""
        vocab = [np.unique(np.asarray(columns[c]).astype(str)) for c in p["context_columns"]]
        return cls(p["context_time"], p["context_columns"], vocab)

    def time_ids(self, times: np.ndarray, prev: np.ndarray, first: np.ndarray) -> np.ndarray:
        """(n, len(time)) int32 ids of events at ``times`` (seconds) whose previous click was at
        ``prev`` (ignored where ``first``)."""
        out = np.zeros((len(times), len(self.time)), np.int32)
        for j, name in enumerate(self.time):
            if name == "gap":
                out[:, j] = _gap_ids(times - prev, first)
            elif name == "hour":
                out[:, j] = (np.floor(times / 3600.0) % 24).astype(np.int32)
            else:  # 1970-01-01 was a Thursday (weekday 3)
                out[:, j] = ((np.floor(times / 86400.0) + 3) % 7).astype(np.int32)
        return out

    def checked_columns(self, columns, n: int, call: str) -> dict:
        """``columns`` (name -> n values of the requested clicks) as arrays for
        :meth:`column_ids`; ``ValueError`` naming what ``call`` is missing."""
        columns = {} if columns is None else dict(columns)
        missing = [c for c in self.columns if c not in columns]
        if missing:
            raise ValueError(f"this model has context_columns {self.columns}: {call} needs "
                             f"columns= with {missing} (one value per click)")
        out = {c: np.atleast_1d(np.asarray(columns[c])) for c in self.columns}
        for c, v in out.items():
            if len(v) != n:
                raise ValueError(f"columns[{c!r}] has {len(v)} values for {n} clicks")
        return out

    def column_ids(self, columns: dict, n: int) -> np.ndarray:
        """(n, len(columns)) int32 ids of the n per-event values ``columns[name]`` (0:
        unknown)."""
        out = np.zeros((n, len(self.columns)), np.int32)
        for j, (name, vocab) in enumerate(zip(self.columns, self.vocab)):
            values = np.asarray(columns[name]).astype(str)
            pos = np.minimum(np.searchsorted(vocab, values), max(len(vocab) - 1, 0))
            hit = (vocab[pos] == values) if len(vocab) else np.zeros(len(values), bool)
            out[:, j] = np.where(hit, pos + 1, 0)
        return out

    def event_rows(self, times, offsets, columns) -> tuple:
        """``(ev_in (n, F_in), ev_out (n, F_out))`` int32 table rows of events in sessions
        (``times`` (n,) seconds grouped by ``offsets``); ``columns``: name -> (n,) values."""
        times = np.asarray(times, np.float64)
        first = np.zeros(len(times), bool)
        first[np.asarray(offsets[:-1], np.int64)] = True
        prev = np.concatenate([[0.0], times[:-1]])
        t_ids = self.time_ids(times, prev, first)
        return (self.input_rows(t_ids, self.column_ids(columns, len(times))),
                self.output_rows(t_ids))

    def input_rows(self, t_ids, c_ids) -> np.ndarray:
        """(n, F_in) int32 input-table rows of time ids (n, len(time)) and column ids (n,
        len(columns))."""
        local = np.hstack([t_ids, c_ids])
        off = np.concatenate([[0], np.cumsum(self.sizes_in)[:-1]]).astype(np.int32)
        return np.ascontiguousarray(local + off[:local.shape[1]], np.int32)

    def output_rows(self, t_ids) -> np.ndarray:
        """(n, F_out) int32 output-table rows of time ids (n, len(time))."""
        off = np.concatenate([[0], np.cumsum(self.sizes_out)[:-1]]).astype(np.int32)
        return np.ascontiguousarray(t_ids + off[:t_ids.shape[1]], np.int32)


def read_columns(table, names, rows=None) -> dict:
    """``name -> values`` of the event table's categorical columns (``rows``: the events kept,
    in session order); ``ValueError`` naming a missing column."""
    from .data import _column
    out = {}
    for name in names:
        try:
            values = np.asarray(_column(table, name))
        except (KeyError, ValueError):
            raise ValueError(f"context_columns names column {name!r}, which the event table "
                             "does not have") from None
        out[name] = values if rows is None else values[rows]
    return out


def table_widths(p: dict, layout: dict) -> tuple:
    """``(w_in, w_out, w_h)``: widths of the input table (concat: 3 H_0 of subnet 0; multiply:
    its input width), of the output table (Hc) and of the transition table (H_0)."""
    SI, LI = layout["SI"], layout["LI"]
    H0 = int(LI[SI[0, S_L0], L_H])
    w_in = 3 * H0 if p["context_input"] == "concat" else int(SI[0, S_IN])
    return w_in, int(layout["Wy"].shape[1]), H0


def init_tables(p: dict, layout: dict, encoder: ContextEncoder, dtype=np.float32) -> dict:
    """Zero context tables of a new network: ``context_in`` (R_in, w_in), ``context_out``
    (R_out, Hc), ``context_h`` (R_in, H_0); a part that is off gets (0, width)."""
    w_in, w_out, w_h = table_widths(p, layout)
    r_in = sum(encoder.sizes_in)
    r_out = sum(encoder.sizes_out) if p["context_output"] != "none" else 0
    on_h = p.get("context_transition", "none") != "none"
    return {"context_in": np.zeros((r_in if p["context_input"] != "none" else 0, w_in), dtype),
            "context_out": np.zeros((r_out, w_out), dtype),
            "context_h": np.zeros((r_in if on_h else 0, w_h), dtype)}


def config(p: dict) -> tuple:
    """``Ctx.cfg`` of validated parameters."""
    return (CONTEXT_INPUTS[p["context_input"]], CONTEXT_OUTPUTS[p["context_output"]],
            CONTEXT_TRANSITIONS[p.get("context_transition", "none")])


def training_context(p, params, sessions, encoder, table, batch_size):
    """The :class:`~gru_engine.backends.cpu.context_step.Ctx` of a CPU fit on ``sessions``
    (``table``: the event table, for ``context_columns``), over ``params``' context tables."""
    columns = read_columns(table, encoder.columns, sessions.rows)
    ev_in, ev_out = encoder.event_rows(sessions.times, sessions.offsets, columns)
    return make_ctx(config(p), params["context_in"], params["context_out"], batch_size,
                    ev_in if input_side(p) else None,
                    ev_out if p["context_output"] != "none" else None, Ch=params["context_h"])


def fit_context(model, p, layout, params, sessions, table):
    """Start a context-aware fit: checks the data (``ValueError`` for ordinal times or a
    missing column), fits the encoder (``model.context_vocab_``), adds zero context tables to
    ``params`` and returns the training :class:`~gru_engine.backends.cpu.context_step.Ctx`."""
    for key in ("context_input", "context_transition"):
        if p.get(key, "none") != "none" and layout["names"][0] != "id":
            raise ValueError(f"{key}={p[key]!r} enters the ID subnet, but "
                             f"architecture='feature' has none; use architecture='parallel' "
                             f"or {key}='none'")
    if p["context_time"]:
        check_times(sessions.times, model.keys_["time_key"])
    columns = read_columns(table, p["context_columns"])
    encoder = ContextEncoder.fit(p, {c: v[sessions.rows] for c, v in columns.items()})
    model.context_vocab_ = encoder.vocab
    params.update(init_tables(p, layout, encoder, params["Wy"].dtype))
    return training_context(p, params, sessions, encoder, table, p["batch_size"])


def fit_events(p: dict, data, session_key: str, user_key: str):
    """Hook of the estimator (:mod:`gru_engine.model`): what a fit with validated ``p`` reads
    of the event table ``data``: the table itself (:func:`start_fit` reads its
    ``context_columns``), None when ``p`` asks for no context."""
    return data if enabled(p) else None


def warm_events(model, p: dict, data, session_key: str, user_key: str):
    """Hook: what ``model.partial_fit`` reads of the new event table, as :func:`fit_events`."""
    return fit_events(p, data, session_key, user_key)


def start_fit(model, p, layout, params, sessions, table, order_rng, rng) -> dict:
    """Hook: the context part of a new fit (:func:`fit_context`; the random generators are not
    used: the tables start at zero). Returns the trainer's keyword arguments
    (``context``)."""
    return {"context": fit_context(model, p, layout, params, sessions, table)}


def start_warm(model, p, params, state, n_new, sessions, table, order_rng, rng) -> dict:
    """Hook: the context part of a warm start (:func:`warm_context`; ``n_new`` and the random
    generators are not used: new rows start at zero). Returns the trainer's keyword
    arguments (``context``)."""
    return {"context": warm_context(model, p, params, state, sessions, table)}


#: fitted attributes besides ``params_`` that a warm start changes (restored when it fails)
FITTED_ATTRS = ("context_vocab_",)


def fitted(model) -> bool:
    """Whether ``model`` is a fitted context-aware model (its ``params_`` hold the tables)."""
    return "context_in" in getattr(model, "params_", {})


def serves(model, sessions_items, item_features) -> bool:
    """Whether the context scorer answers ``recommend``/``predict_next`` of ``model`` (a
    fitted context-aware model) for these sessions of original ids; ``ValueError`` when
    ``item_features`` brings items new to the model (the context scorer has no rows for
    them)."""
    if not fitted(model):
        return False
    if item_features is not None:
        flat = [np.atleast_1d(np.asarray(s)) for s in sessions_items]
        flat = np.concatenate(flat) if flat else np.zeros(0, np.int64)
        if np.any(model.item_index_.lookup(flat) < 0):
            raise ValueError("a context-aware model scores sessions of model items only; "
                             "new items (item_features) are not supported with context")
    return True


def scorer(model, params, device):
    """Hook: the scorer of a fitted context-aware ``model`` over its own ``params_``
    (``params`` None or ``params_``): :class:`~gru_engine.context_scoring.DeviceContextScorer`
    on ``device`` (a CUDA :class:`~gru_engine.backends.device.Device`), else the CPU
    :class:`~gru_engine.context_scoring.ContextScorer`. None for any other model or
    ``params`` (they score as the plain network)."""
    if not fitted(model) or (params is not None and params is not model.params_):
        return None
    from . import context_scoring
    if device is not None:
        return context_scoring.DeviceContextScorer(model, device)
    return context_scoring.ContextScorer(model)


def _row_map(old: ContextEncoder, new: ContextEncoder) -> np.ndarray:
    """(R_in old,) int64: the input-table row under ``new`` of each input-table row under
    ``old`` (same time features and columns; each new vocabulary holds the old one)."""
    parts = [np.arange(old._time_size(t)) for t in old.time]
    parts += [np.concatenate([[0], 1 + np.searchsorted(nv, ov)])
              for ov, nv in zip(old.vocab, new.vocab)]
    off = np.concatenate([[0], np.cumsum(new.sizes_in)[:-1]]).astype(np.int64)
    return np.concatenate([off[f] + part for f, part in enumerate(parts)]).astype(np.int64) \
        if parts else np.zeros(0, np.int64)


def warm_context(model, p, params, state, sessions, table):
    """Start a warm start (``partial_fit``) of a fitted context-aware ``model`` on
    ``sessions`` (``table``: the new event table): checks the data as :func:`fit_context`
    does; a categorical column's values new to the model join its vocabulary
    (``model.context_vocab_``, kept sorted) with zero table rows and zero optimiser state, as
    ``fit`` starts its tables (as new items join ``item_index_``); the other rows keep their
    values and state. ``params`` gets copies of the tables (the fitted model's stay
    unchanged) and ``state`` (``{'acc', 'vel'}`` or None) their optimiser state. Returns the
    training :class:`~gru_engine.backends.cpu.context_step.Ctx`."""
    if p["context_time"]:
        check_times(sessions.times, model.keys_["time_key"])
    columns = read_columns(table, p["context_columns"], sessions.rows)
    old = ContextEncoder(p["context_time"], p["context_columns"], model.context_vocab_)
    new = ContextEncoder(old.time, old.columns,
                         [np.union1d(v, np.asarray(columns[c]).astype(str))
                          for c, v in zip(old.columns, old.vocab)])
    rows = _row_map(old, new)
    input_rows = {"context_in": p["context_input"] != "none",  # one row per input feature value
                  "context_h": p.get("context_transition", "none") != "none"}
    for key in TABLE_KEYS:
        if input_rows.get(key, False):
            grow = lambda a: _moved_rows(a, rows, sum(new.sizes_in))
        else:
            grow = np.copy
        params[key] = grow(model.params_[key])
        kept = getattr(model, "optimizer_state_", None) or {}
        if state is not None and key in kept.get("acc", {}):
            for kind in ("acc", "vel"):
                state[kind][key] = grow(kept[kind][key])
    model.context_vocab_ = new.vocab
    return training_context(p, params, sessions, new, table, p["batch_size"])


def _moved_rows(a: np.ndarray, rows: np.ndarray, n_rows: int) -> np.ndarray:
    """(n_rows, width) zeros with ``a``'s rows at ``rows``."""
    out = np.zeros((n_rows, a.shape[1]), a.dtype)
    out[rows] = a
    return out


def saved_params(params: dict) -> dict:
    """``params`` as a model file's header stores them: without the context options when
    both sides are off (files of plain models stay readable by versions without context)."""
    if (params.get("context_input") == "none" and params.get("context_output") == "none"
            and params.get("context_transition", "none") == "none"):
        keys = ("context_input", "context_output", "context_transition") + NAME_LIST_PARAMS
        return {k: v for k, v in params.items() if k not in keys}
    return dict(params)


def file_arrays(model) -> dict:
    """The arrays a model file holds for a context-aware model (none for others): the tables
    and, per categorical column, its vocabulary (``context_vocab_<j>``, str)."""
    if "context_in" not in model.params_:
        return {}
    out = {k: model.params_[k] for k in TABLE_KEYS}
    out.update({f"context_vocab_{j}": np.asarray(v).astype(str)
                for j, v in enumerate(model.context_vocab_)})
    return out


def read_file_arrays(ck, p: dict, params: dict, arrays: dict) -> tuple:
    """``(tables, vocab, names)`` of a model file with validated parameters ``p`` and its
    network ``params``, every array checked (``ck``: the io checker, it raises
    ``ModelFileError``); ``({}, [], set())`` for a model without context."""
    if not enabled(p):
        return {}, [], set()
    vocab = [ck.array(f"context_vocab_{j}", kinds="U", ndim=1)
             for j in range(len(p["context_columns"]))]
    enc = ContextEncoder(p["context_time"], p["context_columns"], vocab)
    want = init_tables(p, {"SI": params["SI"], "LI": params["LI"], "Wy": params["Wy"]}, enc)
    tables = {}
    for key, zero in want.items():
        if key == "context_h" and key not in arrays and zero.shape[0] == 0:
            tables[key] = zero  # a file of a version without context_transition
            continue
        tables[key] = ck.array(key, dtype=np.float32, shape=zero.shape,
                               why=" (the header's context options and vocabularies)")
        ck.finite(key, tables[key])
    names = set(TABLE_KEYS) | {f"context_vocab_{j}" for j in range(len(vocab))}
    return tables, vocab, names

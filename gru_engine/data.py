"""Event tables to sessions: column extraction, validation, item-id mapping, CSR sessions.

Every model and the evaluator consume :class:`Sessions` (events sorted by session then time,
sessions as offsets into one item-index array) and an :class:`ItemIndex` (original item id <->
dense index). Input tables may be a pandas DataFrame, a dict of arrays, or any object whose
``obj[column]`` returns a 1-D sequence.
"""
from __future__ import annotations

import csv
import gzip
import logging
import os
import re
from dataclasses import dataclass, field

import numpy as np

logger = logging.getLogger("gru_engine")

DEFAULT_KEYS = {"session_key": "SessionId", "item_key": "ItemId", "time_key": "Time"}


# ---------------------------------------------------------------------------------------------
# column access and validation
# ---------------------------------------------------------------------------------------------
def _column(data, key: str) -> np.ndarray:
    try:
        col = data[key]
    except (KeyError, IndexError, TypeError, ValueError):
        available = _column_names(data)
        raise ValueError(f"missing column {key!r}; available columns: {available}") from None
    if getattr(getattr(col, "dtype", None), "tz", None) is not None:
        # pandas tz-aware datetimes: to_numpy() would give an object array of Timestamps.
        col = col.dt.tz_convert("UTC").dt.tz_localize(None)
    arr = getattr(col, "to_numpy", None)
    arr = arr() if callable(arr) else np.asarray(col)
    if arr.ndim != 1:
        raise ValueError(f"column {key!r} must be one-dimensional, got shape {arr.shape}")
    return arr


def _column_names(data):
    cols = getattr(data, "columns", None)
    if cols is None:
        cols = getattr(getattr(data, "dtype", None), "names", None)  # numpy structured array
    if cols is not None:
        return list(cols)
    keys = getattr(data, "keys", None)
    return list(keys()) if callable(keys) else "unknown"


def _is_missing(value) -> bool:
    if value is None:
        return True
    try:
        return bool(value != value)  # NaN
    except TypeError:  # pandas.NA refuses bool(); it is missing
        return True


def _missing_mask(values: np.ndarray) -> np.ndarray:
    """True where an id is None / NaN / NaT / pandas NA."""
    if values.dtype.kind == "f":
        return np.isnan(values)
    if values.dtype.kind in "mM":
        return np.isnat(values)
    if values.dtype.kind == "O":
        return np.fromiter((_is_missing(v) for v in values), dtype=bool, count=len(values))
    return np.zeros(len(values), dtype=bool)


#: floats hold every integer exactly only below this magnitude
_FLOAT_EXACT = 2 ** 53
_INT64_MAX = 2 ** 63 - 1


def show_id(value) -> str:
    """An id as the user wrote it: ``5`` or ``'a'``, not ``np.int64(5)`` / ``np.str_('a')``."""
    if isinstance(value, np.generic):
        value = value.item()
    return repr(value)


def _int_ids(values: np.ndarray, key: str) -> np.ndarray:
    """Integer ids exactly: int64, or uint64 when some id is >= 2**63 (and none negative)."""
    if values.dtype.kind == "u" and len(values) and int(values.max()) > _INT64_MAX:
        return values.astype(np.uint64, copy=False)
    if values.dtype.kind in "iu":
        return values.astype(np.int64, copy=False)
    ints = [int(v) for v in values]  # Python ints (an object column): any size
    lo, hi = min(ints, default=0), max(ints, default=0)
    if -_INT64_MAX - 1 <= lo and hi <= _INT64_MAX:
        return np.array(ints, dtype=np.int64)
    if lo >= 0 and hi < 2 ** 64:
        return np.array(ints, dtype=np.uint64)
    bad = hi if hi > _INT64_MAX else lo
    raise ValueError(f"column {key!r} holds ids beyond 64-bit integers (e.g. {bad}); read the "
                     "column as strings")


def _ids(data, key: str) -> np.ndarray:
    """Id column as int64, uint64 (ids >= 2**63) or str: the kinds an :class:`ItemIndex`
    stores and saves. Integers are kept exactly; float ids must be integers below 2**53 in
    magnitude (beyond that a float cannot tell neighbouring ids apart)."""
    values = _column(data, key)
    if values.dtype.kind in "mM":
        raise ValueError(f"column {key!r} holds datetimes; ids must be integers or strings")
    bad = _missing_mask(values)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise ValueError(f"column {key!r} has {int(bad.sum())} missing (empty, NaN or None) "
                         f"ids; first at row {first} (counting from 0, after the header)")
    kind = values.dtype.kind
    if kind in "iu":
        return _int_ids(values, key)
    if kind == "U":
        return values
    if kind == "S":
        return values.astype(str)
    if kind == "f":
        inexact = (values != np.round(values)) | (np.abs(values) >= _FLOAT_EXACT)
        if inexact.any():
            first = int(np.flatnonzero(inexact)[0])
            raise ValueError(f"column {key!r} holds non-integer floats or floats of magnitude "
                             f">= 2**53 (row {first}: {show_id(values[first])}): float ids "
                             "must be exact integers below 2**53; read the column as integers "
                             "or strings")
        return values.astype(np.int64)
    if kind == "O":
        if len(values) == 0:
            return values.astype(np.int64)
        kinds = set(map(type, values))
        if kinds and all(issubclass(k, str) for k in kinds):
            return values.astype(str)
        if kinds and all(issubclass(k, (int, np.integer)) and not issubclass(k, (bool, np.bool_))
                         for k in kinds):
            return _int_ids(values, key)
        raise ValueError(f"column {key!r} holds ids of type(s) {sorted(k.__name__ for k in kinds)}; "
                         "ids must be all integers or all strings")
    raise ValueError(f"column {key!r} has dtype {values.dtype}; ids must be integers or strings")


def _times(data, key: str) -> np.ndarray:
    values = _column(data, key)
    if values.dtype.kind == "M":
        if np.isnat(values).any():
            raise ValueError(f"column {key!r} has {int(np.isnat(values).sum())} missing (NaT) times")
        return values.astype("datetime64[ns]").astype(np.int64) / 1e9
    if values.dtype.kind not in "iuf":
        try:
            values = values.astype(np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"column {key!r} must be numeric (seconds or an ordinal) or datetime64, "
                             f"got dtype {values.dtype}") from None
    values = values.astype(np.float64)
    if np.isnan(values).any():
        raise ValueError(f"column {key!r} has {int(np.isnan(values).sum())} missing (NaN) times")
    if np.isinf(values).any():
        raise ValueError(f"column {key!r} has {int(np.isinf(values).sum())} infinite times")
    return values


def extract_events(data, session_key: str = "SessionId", item_key: str = "ItemId",
                   time_key: str = "Time"):
    """Validated ``(session_ids, item_ids, times)`` arrays of an event table.

    Raises ``ValueError`` for a missing column, an empty table, missing ids or times, ids that
    are neither all integers nor all strings, and non-numeric or infinite times.

    Returns ``session_ids`` (n,) int64 or str, ``item_ids`` (n,) int64 or str and ``times`` (n,)
    float64 (numeric columns as given; datetime64 columns, tz-aware ones too, become Unix
    seconds).
    """
    sessions = _ids(data, session_key)
    items = _ids(data, item_key)
    times = _times(data, time_key)
    if not (len(sessions) == len(items) == len(times)):
        raise ValueError("session, item and time columns have different lengths")
    if len(sessions) == 0:
        raise ValueError("the event table is empty")
    return sessions, items, times


# ---------------------------------------------------------------------------------------------
# item ids <-> dense indices
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ItemIndex:
    """Bijection between original item ids and dense indices ``0..n_items-1``.

    ``ids[i]`` is the original id of item index ``i``; indices follow the order of first
    appearance in the training table (as the official GRU4Rec).
    """

    ids: np.ndarray
    _sorted_ids: np.ndarray = field(init=False, repr=False, compare=False)
    _sorted_pos: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        ids = np.asarray(self.ids)
        if ids.ndim != 1:
            raise ValueError(f"item ids of an ItemIndex must be one-dimensional, got shape {ids.shape}")
        object.__setattr__(self, "ids", ids)
        order = np.argsort(ids, kind="stable")
        object.__setattr__(self, "_sorted_ids", ids[order])
        object.__setattr__(self, "_sorted_pos", order.astype(np.int32))
        if len(ids) > 1 and np.any(self._sorted_ids[1:] == self._sorted_ids[:-1]):
            raise ValueError("item ids of an ItemIndex must be unique")

    @classmethod
    def from_events(cls, item_ids: np.ndarray) -> "ItemIndex":
        """Index of the distinct ids in ``item_ids``, numbered by first appearance."""
        _, first = np.unique(item_ids, return_index=True)
        return cls(item_ids[np.sort(first)])

    def __len__(self) -> int:
        return len(self.ids)

    def lookup(self, item_ids) -> np.ndarray:
        """Dense indices (int32, shape of ``item_ids``); -1 where an id is unknown.

        Ids match by value within one kind: integers (integral floats too) against an integer
        index, strings against a string index. An id of the other kind (``"5"`` against the
        integer 5) is unknown, never converted.
        """
        item_ids = np.asarray(item_ids)
        if len(self.ids) == 0 or item_ids.size == 0:
            return np.full(item_ids.shape, -1, dtype=np.int32)
        query, valid = self._comparable(item_ids)
        pos = np.searchsorted(self._sorted_ids, query)
        pos = np.minimum(pos, len(self.ids) - 1)
        found = self._sorted_ids[pos] == query
        if valid is not None:
            found &= valid
        return np.where(found, self._sorted_pos[pos], -1).astype(np.int32)

    def _comparable(self, q: np.ndarray):
        """``q`` in the index's dtype and a mask of the entries that could match (None = all).
        Integers compare exactly (int64 against uint64 too); floats only when they are exact
        integers below 2**53."""
        kind, qk = self.ids.dtype.kind, q.dtype.kind
        if kind in "iu":
            dt = self.ids.dtype
            lo, hi = (0, 2 ** 64 - 1) if kind == "u" else (-_INT64_MAX - 1, _INT64_MAX)
            if qk in "iu":
                if q.dtype == dt:
                    return q, None
                if qk == "i":
                    valid = q >= 0 if kind == "u" else None
                else:
                    valid = q <= np.uint64(_INT64_MAX) if kind == "i" else None
                conv = q if valid is None else np.where(valid, q, 0)
                return conv.astype(dt), valid
            if qk == "f":
                valid = np.isfinite(q) & (q == np.round(q)) & (np.abs(q) < _FLOAT_EXACT)
                if kind == "u":
                    valid &= q >= 0
                return np.where(valid, q, 0).astype(dt), valid
            if qk == "O":
                valid = np.fromiter((isinstance(v, (int, np.integer))
                                     and not isinstance(v, (bool, np.bool_)) and lo <= v <= hi
                                     for v in q.flat), dtype=bool, count=q.size).reshape(q.shape)
                conv = np.array([int(v) if ok else 0 for v, ok in zip(q.flat, valid.flat)],
                                dtype=dt).reshape(q.shape)
                return conv, valid
        elif kind in "US":
            if qk in "US":
                return (q.astype(kind) if qk != kind else q), None
            if qk == "O":
                valid = np.fromiter((isinstance(v, str) for v in q.flat), dtype=bool,
                                    count=q.size).reshape(q.shape)
                conv = np.array([v if ok else "" for v, ok in zip(q.flat, valid.flat)],
                                dtype=str).reshape(q.shape)
                return conv, valid
        elif kind == qk:
            return q, None
        return np.zeros(q.shape, dtype=self.ids.dtype), np.zeros(q.shape, dtype=bool)

    def to_index(self, item_ids) -> np.ndarray:
        """Dense indices (int32) of ``item_ids``; ``KeyError`` naming the first unknown id (as
        written: ``5``, ``'5'``), and saying so when the ids are of the other kind (strings for
        a model of integer ids, or the other way round)."""
        idx = self.lookup(item_ids)
        if np.any(idx < 0):
            unknown = np.asarray(item_ids)[idx < 0]
            first = show_id(unknown.flat[0])
            mismatch = self.kind_mismatch(unknown)
            if mismatch:
                raise KeyError(f"{mismatch} (e.g. {first}); ids are never converted between "
                               "kinds")
            raise KeyError(f"{len(unknown)} item id(s) unknown to the model, e.g. {first}")
        return idx

    def kind_mismatch(self, item_ids) -> str | None:
        """A message when ``item_ids`` are (all) of the other kind than the index's ids: strings
        against integer ids or integers against string ids; else None."""
        q = np.asarray(item_ids)
        if q.size == 0 or len(self.ids) == 0:
            return None
        if q.dtype.kind == "O":
            types = {type(v) for v in q.flat}
            is_str = all(issubclass(t, (str, np.str_)) for t in types)
            is_num = all(issubclass(t, (int, float, np.integer, np.floating))
                         and not issubclass(t, (bool, np.bool_)) for t in types)
        else:
            is_str, is_num = q.dtype.kind in "US", q.dtype.kind in "iuf"
        if self.ids.dtype.kind in "iu" and is_str:
            return "this model's item ids are integers, but strings were given"
        if self.ids.dtype.kind in "US" and is_num:
            return "this model's item ids are strings, but numbers were given"
        return None


# ---------------------------------------------------------------------------------------------
# sessions in CSR form
# ---------------------------------------------------------------------------------------------
@dataclass
class Sessions:
    """Events grouped into sessions, sorted by (session id, time), stably.

    items:       (n_events,) int32 dense item indices
    offsets:     (n_sessions + 1,) int64; session ``s`` is ``items[offsets[s]:offsets[s+1]]``
    times:       (n_events,) float64 event times
    session_ids: (n_sessions,) original session ids
    rows:        (n_events,) int64 row of each event in the event table it was built from
                 (None when not built from a table); per-event columns follow it
    """

    items: np.ndarray
    offsets: np.ndarray
    times: np.ndarray
    session_ids: np.ndarray
    rows: np.ndarray | None = None

    @property
    def n_sessions(self) -> int:
        return len(self.offsets) - 1

    @property
    def n_events(self) -> int:
        return len(self.items)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def order_by_start_time(self) -> np.ndarray:
        """(n_sessions,) int64 session numbers ordered by their first event's time (stable)."""
        return np.argsort(self.times[self.offsets[:-1]], kind="stable").astype(np.int64)

    def positions(self) -> np.ndarray:
        """(n_events,) int32 position of each event in its session (0 = first click)."""
        starts = np.repeat(self.offsets[:-1], self.lengths)
        return (np.arange(self.n_events, dtype=np.int64) - starts).astype(np.int32)

    def item_support(self, n_items: int) -> np.ndarray:
        """(n_items,) int64 number of events of each item."""
        return np.bincount(self.items, minlength=n_items).astype(np.int64)


@dataclass(frozen=True)
class BuildReport:
    """What :func:`build_sessions` removed, so that nothing is dropped silently."""

    n_events_in: int
    n_unknown_item_events: int
    n_short_sessions: int
    n_short_session_events: int

    @property
    def n_events_kept(self) -> int:
        return self.n_events_in - self.n_unknown_item_events - self.n_short_session_events


def build_sessions(data, item_index: ItemIndex | None = None, session_key: str = "SessionId",
                   item_key: str = "ItemId", time_key: str = "Time", min_session_length: int = 2):
    """Turn an event table into :class:`Sessions`.

    With ``item_index=None`` (training) the index is built from the table. With a given index
    (test data) events of unknown items are removed first, then sessions are formed from what
    remains, as the official GRU4Rec evaluation does. Sessions shorter than
    ``min_session_length`` are dropped; every removal is counted in the returned report and
    logged as a warning.

    Returns ``(sessions, item_index, report)``.
    """
    session_ids, item_ids, times = extract_events(data, session_key, item_key, time_key)
    n_in = len(item_ids)
    if item_index is None:
        item_index = ItemIndex.from_events(item_ids)
    else:
        mismatch = item_index.kind_mismatch(item_ids[:1])
        if mismatch:
            raise ValueError(f"column {item_key!r}: {mismatch} (e.g. {show_id(item_ids[0])}; the "
                             f"model's ids look like {show_id(item_index.ids[0])}); ids are "
                             "never converted between kinds")
    idx = item_index.lookup(item_ids)
    known = idx >= 0
    n_unknown = int(n_in - known.sum())
    if n_unknown:
        session_ids, idx, times = session_ids[known], idx[known], times[known]
        logger.warning("removed %d of %d events whose item is unknown to the model", n_unknown, n_in)

    session_codes_sorted, session_codes = np.unique(session_ids, return_inverse=True)
    order = np.lexsort((times, session_codes))
    codes = session_codes[order]
    counts = np.bincount(codes, minlength=len(session_codes_sorted))
    keep_session = counts >= min_session_length
    n_short = int(np.count_nonzero((counts > 0) & ~keep_session))
    n_short_events = int(counts[~keep_session].sum())
    if n_short:
        logger.warning("dropped %d sessions shorter than %d events (%d events)",
                       n_short, min_session_length, n_short_events)
    keep_event = keep_session[codes]
    order = order[keep_event]
    lengths = counts[keep_session]
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    table_rows = np.flatnonzero(known)[order] if n_unknown else order
    sessions = Sessions(items=np.ascontiguousarray(idx[order], dtype=np.int32), offsets=offsets,
                        times=np.ascontiguousarray(times[order]),
                        session_ids=session_codes_sorted[keep_session],
                        rows=table_rows.astype(np.int64))
    report = BuildReport(n_in, n_unknown, n_short, n_short_events)
    if sessions.n_sessions == 0:
        raise ValueError(f"no session with at least {min_session_length} events is left "
                         f"({n_in} events in, {n_unknown} with unknown items)")
    return sessions, item_index, report


# ---------------------------------------------------------------------------------------------
# files
# ---------------------------------------------------------------------------------------------
def leave_last_out(table: dict) -> tuple:
    """The leave-last-out split of one-sequence-per-user data (e.g. the Amazon sets): the
    events sorted by session then time (stably); ``train`` = every sequence without its last
    event; ``test`` = the full sequences whose last item occurs in ``train`` (predict only the
    last click: ``evaluate(..., targets='last')``). ``table``: dict of equal-length columns with
    ``SessionId``, ``ItemId``, ``Time``. Returns ``(train, test, n_dropped)``, ``n_dropped`` the
    sequences left out of ``test`` because their last item is unknown to ``train``."""
    order = np.lexsort((np.asarray(table["Time"]), np.asarray(table["SessionId"])))
    table = {k: np.asarray(v)[order] for k, v in table.items()}
    sid = table["SessionId"]
    is_last = np.r_[sid[1:] != sid[:-1], True]
    train = {k: v[~is_last] for k, v in table.items()}
    known = np.isin(table["ItemId"][is_last], np.unique(train["ItemId"]))
    test_rows = np.isin(sid, sid[is_last][known])
    return train, {k: v[test_rows] for k, v in table.items()}, int(np.count_nonzero(~known))


def read_events(path: str | os.PathLike, sep: str = "\t", columns=None, names=None) -> dict:
    """Read a delimited event file (``.gz`` accepted) into a dict of 1-D arrays.

    The first line is the header, unless ``names`` (the column names, in file order) is given
    for a file without one. ``columns`` limits which columns are kept (in that order).
    Uses pandas when installed (fast), the csv module otherwise (kept columns only; several
    times slower and larger in memory), which types every column as pandas does
    (:func:`_parse_column`): integer columns become int64 (uint64 where an id needs it), other
    numeric ones float64, the rest str (pandas gives object arrays of str); empty or ``NA``
    fields become NaN either way, which :func:`extract_events` reports naming the row.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such event file: {path}")
    try:
        import pandas as pd
    except ImportError:
        pd = None
    if pd is not None:
        try:
            frame = pd.read_csv(path, sep=sep, usecols=columns, header=None if names else "infer",
                                names=names)
        except pd.errors.EmptyDataError:
            raise ValueError(f"{path} is empty") from None
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None
        keep = frame.columns if columns is None else list(columns)
        return {c: frame[c].to_numpy() for c in keep}
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", newline="") as f:
        reader = csv.reader(f, delimiter=sep)
        header = list(names) if names else next(reader, None)
        if header is None:
            raise ValueError(f"{path} is empty")
        keep = header if columns is None else list(columns)
        missing = [c for c in keep if c not in header]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing}; header is {header}")
        positions = [header.index(c) for c in keep]
        values = [[] for _ in keep]
        appenders = [v.append for v in values]
        for line, row in enumerate(reader, start=1 if names else 2):
            if len(row) != len(header):
                raise ValueError(f"{path}, line {line}: {len(row)} fields, expected {len(header)}")
            for append, j in zip(appenders, positions):
                append(row[j])
    return {name: _parse_column(v) for name, v in zip(keep, values)}


#: the strings ``pandas.read_csv`` reads as missing (its default ``na_values``)
_NA_STRINGS = frozenset({"", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan",
                         "1.#IND", "1.#QNAN", "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a",
                         "nan", "null"})
_INT_RE = re.compile(r"\s*[+-]?\d+\s*\Z")
_FLOAT_RE = re.compile(r"\s*[+-]?(?:\d+\.?\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?|inf|infinity)"
                       r"\s*\Z", re.IGNORECASE)
_BOOLS = {"True": True, "TRUE": True, "true": True, "False": False, "FALSE": False,
          "false": False}


def _parse_column(values: list) -> np.ndarray:
    """A column of field strings typed as ``pandas.read_csv`` types it (default options):
    missing fields (:data:`_NA_STRINGS`) are NaN; integers are int64, uint64 when some value
    needs it, Python ints beyond 64 bits, float64 when a field is missing; all-boolean columns
    are bool; other numbers float64; the rest strings (str dtype where pandas gives an object
    array of str; object with NaN where fields are missing)."""
    missing = [v in _NA_STRINGS for v in values]
    any_missing = any(missing)
    present = [v for v, m in zip(values, missing) if not m]
    if all(_INT_RE.match(v) for v in present):
        if any_missing:
            return np.array([np.nan if m else float(int(v)) for v, m in zip(values, missing)],
                            dtype=np.float64)
        ints = [int(v) for v in values]
        lo, hi = min(ints, default=0), max(ints, default=0)
        if -_INT64_MAX - 1 <= lo and hi <= _INT64_MAX:
            return np.array(ints, dtype=np.int64)
        if hi < 2 ** 64:
            if lo >= 0:
                return np.array(ints, dtype=np.uint64)
            return np.array(values, dtype=str)  # pandas: negative and uint64-only ids: strings
        return np.array(ints, dtype=object)  # pandas: Python ints beyond 64 bits
    if all(v in _BOOLS for v in present):
        if not any_missing:
            return np.array([_BOOLS[v] for v in values], dtype=bool)
        return np.array([np.nan if m else _BOOLS[v] for v, m in zip(values, missing)],
                        dtype=object)
    if all(_FLOAT_RE.match(v) for v in present):
        return np.array([np.nan if m else float(v) for v, m in zip(values, missing)],
                        dtype=np.float64)
    if not any_missing:
        return np.array(values, dtype=str)
    return np.array([np.nan if m else v for v, m in zip(values, missing)], dtype=object)


def write_events(path: str | os.PathLike, columns: dict, sep: str = "\t",
                 chunk_rows: int = 1_000_000) -> None:
    """Write a dict of equal-length 1-D arrays as a delimited file with a header line.

    ``.gz`` paths are gzip-compressed at level 1 (several times faster than level 6, files
    ~13% larger on event tables). Floats are written with ``repr`` (exact round
    trip). The file appears atomically (written to ``path + '.tmp'``, then renamed).
    """
    path = os.fspath(path)
    names = list(columns)
    arrays = [np.asarray(columns[n]) for n in names]
    lengths = {len(a) for a in arrays}
    if len(lengths) > 1:
        raise ValueError(f"columns {names} have different lengths {sorted(lengths)}")
    n_rows = lengths.pop() if lengths else 0
    tmp = path + ".tmp"
    if path.endswith(".gz"):
        f = gzip.open(tmp, "wt", newline="", compresslevel=1)
    else:
        f = open(tmp, "w", newline="")
    try:
        with f:
            writer = csv.writer(f, delimiter=sep, lineterminator="\n")
            writer.writerow(names)
            for lo in range(0, n_rows, chunk_rows):
                writer.writerows(zip(*(a[lo:lo + chunk_rows].tolist() for a in arrays)))
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise

"""Snapshots of a :class:`~gru_engine.serving.store.SessionStore`: one ``.npz`` (JSON header, no
pickle, atomic write through :func:`gru_engine.safe_npz.write_npz`) with, per live session, its id,
hidden state, state before its last click, last item, click count, seen items and idle time (in
LRU order), the new items of a FeatureSessionGRU store, the users' states of a user-level
model and the sessions' context of a context-aware model. ``load_store`` checks every array
against the header and the model before any of it reaches a scorer.

Versions: 1 (no context), 2 (adds ``context``: the header flag and the arrays of
:meth:`~gru_engine.serving.context_store.StoreContext.to_arrays`). A snapshot is written as
version 1 unless it holds context, so snapshots of other stores stay readable by versions
without context; both versions load."""
from __future__ import annotations

import json
import warnings
import zlib

import numpy as np

from .store import _Live

try:  # our error class for unreadable files, when this version has it
    from ..exceptions import ModelFileError as _FileError
except ImportError:  # pragma: no cover
    _FileError = ValueError

SNAPSHOT_FORMAT = "gru_engine.SessionStore"
SNAPSHOT_VERSION = 2
#: the versions this one reads; a snapshot without context is written as version 1
READ_VERSIONS = (1, 2)


def save_store(store, path) -> None:
    """Write the live sessions to ``path`` (``.npz``: JSON header, no pickle, atomic
    write; :func:`gru_engine.safe_npz.write_npz`): per session its id, state, state before its
    last click, last item, click count, seen items and idle time, in LRU order, the new
    items of a FeatureSessionGRU store, the users' states of a user-level model and the
    sessions' click times and column ids of a context-aware model. Session ids must all be
    integers or all strings."""
    from ..safe_npz import write_npz
    with store._lock:
        now = store.clock()
        sids = list(store._live)
        lives = [store._live[s] for s in sids]
        ids = np.asarray(sids) if sids else np.zeros(0, np.int64)
        if ids.dtype.kind not in "iuU" or ids.ndim != 1:
            raise ValueError("save needs session ids that are all integers or all strings")
        rows = np.array([v.slot for v in lives], np.int64)
        users = store._users  # a user-level model's user states, or None
        full = store.width + (users.gates if users is not None else 0)
        state, prev = store._slots.host(rows) if len(rows) else (
            np.zeros((0, full), np.float32), np.zeros((0, full), np.float32))
        seen = [np.array(sorted(v.seen), np.int64) for v in lives]
        context = store._context  # a context-aware model's per-slot context, or None
        header = {"format": SNAPSHOT_FORMAT,
                  "format_version": 1 if context is None else SNAPSHOT_VERSION,
                  "model_class": type(store.model).__name__, "n_items": store.n_items,
                  "width": store.width, "capacity": store.capacity,
                  "idle_timeout_s": store.idle_timeout_s, "k": store.k,
                  "model_crc32": _fingerprint(store._params),
                  "n_sessions": len(sids), "session_id_dtype": ids.dtype.str,
                  "n_new_items": 0 if store._new_ids is None else len(store._new_ids),
                  "n_sources": 0 if store._new_bags is None else len(store._new_bags),
                  "user_states": users is not None}
        if context is not None:
            header["context"] = True
        arrays = {
            "header": np.frombuffer(json.dumps(header).encode("utf-8"), np.uint8),
            "session_ids": ids, "state": state, "prev_state": prev,
            "last_item": np.array([v.last_item for v in lives], np.int64),
            "n_clicks": np.array([v.n_clicks for v in lives], np.int64),
            "idle_s": np.array([max(0.0, now - v.used) for v in lives], np.float64),
            "seen_indptr": np.concatenate([[0], np.cumsum([len(s) for s in seen])]
                                          ).astype(np.int64),
            "seen_indices": np.concatenate(seen) if seen else np.zeros(0, np.int64)}
        if users is not None:
            arrays.update(users.to_arrays(rows.tolist()))
        if context is not None:
            arrays.update(context.to_arrays(rows))
        if store._new_ids is not None:
            arrays["new_item_ids"] = np.asarray(store._new_ids.ids)
            for s, (ip, ind, w) in enumerate(store._new_bags):
                arrays[f"new_bag_{s}_indptr"] = ip
                arrays[f"new_bag_{s}_indices"] = ind
                arrays[f"new_bag_{s}_weights"] = w
    write_npz(str(path), arrays)


def load_store(cls, path, model, **options):
    """A store over ``model`` holding the sessions of a snapshot written by :meth:`save`.
    ``options``: the constructor's (default: capacity, idle timeout and k of the file).
    Raises a ``ValueError`` subclass naming the file and the field or array when the file
    is unreadable or does not fit ``model`` (class, item count, hidden sizes, index
    ranges); a warning when the model's parameters differ from those it was saved with."""
    path = str(path)
    arrays, header = _read_snapshot(path)

    def bad(what):
        return _FileError(f"{path}: {what}")

    def fail(what):
        raise bad(what)
    if header.get("model_class") != type(model).__name__:
        raise bad(f"a snapshot of a {header.get('model_class')!r} store, not of a "
                  f"{type(model).__name__}")
    model._check_fitted()
    for name, want in (("n_items", model.n_items_),):
        if header.get(name) != want:
            raise bad(f"header {name}={header.get(name)!r}, the model has {want}")
    n = header.get("n_sessions")
    if not isinstance(n, int) or n < 0:
        raise bad(f"header n_sessions={n!r} is not a count")
    cap, idle, k = header.get("capacity"), header.get("idle_timeout_s"), header.get("k")
    if not (isinstance(cap, int) and cap >= 1 and isinstance(k, int) and k >= 1
            and (idle is None or (isinstance(idle, (int, float)) and idle > 0))):
        raise bad(f"header capacity={cap!r}, k={k!r} or idle_timeout_s={idle!r} is not "
                  "valid")
    opts = {"capacity": cap, "idle_timeout_s": idle, "k": k}
    opts.update(options)
    store = cls(model, **opts)
    if header.get("width") != store.width:
        raise bad(f"header width={header.get('width')!r}, the model's hidden state is "
                  f"{store.width} wide")
    users = store._users
    if bool(header.get("user_states", False)) != (users is not None):
        raise bad("the snapshot's user states do not fit the model (a user-level model's store "
                  "has them, any other not)")
    full = store.width + (users.gates if users is not None else 0)
    if n > store.capacity:
        raise bad(f"{n} sessions do not fit capacity={store.capacity}")
    n_new = header.get("n_new_items", 0)
    n_src = header.get("n_sources", 0)
    if not (isinstance(n_new, int) and isinstance(n_src, int) and n_new >= 0 and n_src >= 0):
        raise bad("header n_new_items / n_sources are not counts")
    _check_array(arrays, "session_ids", None, (n,), path, kinds="iuU")
    for name in ("state", "prev_state"):
        a = _check_array(arrays, name, np.float32, (n, full), path)
        if not np.all(np.isfinite(a)):
            raise bad(f"array {name!r} holds non-finite values")
    _check_array(arrays, "n_clicks", np.int64, (n,), path)
    _check_array(arrays, "idle_s", np.float64, (n,), path)
    _check_array(arrays, "seen_indptr", np.int64, (n + 1,), path)
    _check_array(arrays, "seen_indices", np.int64, None, path)
    n_all = model.n_items_ + n_new
    last = _check_array(arrays, "last_item", np.int64, (n,), path)
    clicks = arrays["n_clicks"]
    if np.any(clicks < 0) or np.any((clicks > 0) & ((last < 0) | (last >= n_all))):
        raise bad(f"array 'last_item' has indices outside [0, {n_all}) for sessions with "
                  "clicks, or 'n_clicks' is negative")
    ip, ind = arrays["seen_indptr"], arrays["seen_indices"]
    if ip[0] != 0 or np.any(np.diff(ip) < 0) or ip[-1] != len(ind) \
            or np.any((ind < 0) | (ind >= n_all)):
        raise bad("arrays 'seen_indptr'/'seen_indices' are not a valid index list of "
                  f"items in [0, {n_all})")
    if not np.all(np.isfinite(arrays["idle_s"])) or np.any(arrays["idle_s"] < 0):
        raise bad("array 'idle_s' holds negative or non-finite values")
    ids = arrays["session_ids"]
    if len(set(ids.tolist())) != n:
        raise bad("array 'session_ids' holds duplicates")
    if n_new:
        _load_new_items(store, arrays, n_new, n_src, path)
    if users is not None:
        if len(arrays.get("session_user_known", ())) != n:
            raise bad(f"array 'session_user_known' must have {n} entries")
        users.from_arrays(arrays, n_all, fail)
    if bool(header.get("context", False)) != (store._context is not None):
        raise bad("the snapshot's session context does not fit the model (a context-aware "
                  "model's store has it, any other not)")
    if store._context is not None:
        store._context.from_arrays(arrays, n, fail)
    if header.get("model_crc32") != _fingerprint(model.params_):
        warnings.warn(f"{path}: the model's parameters differ from those the sessions were "
                      "saved with; their states may not mean the same", stacklevel=2)
    with store._lock:
        now = store.clock()
        rows = np.arange(n, dtype=np.int64)
        if n:
            store._slots.load(rows, arrays["state"], arrays["prev_state"])
        store._free = list(range(store.capacity - 1, n - 1, -1))
        for j, sid in enumerate(ids.tolist()):
            live = _Live(j, now - float(arrays["idle_s"][j]))
            live.n_clicks = int(clicks[j])
            live.last_item = int(last[j])
            live.seen = set(ind[ip[j]:ip[j + 1]].tolist())
            store._live[sid] = live
        store._expire(now)
    return store


def _load_new_items(store, arrays, n_new, n_src, path) -> None:
    from ..data import ItemIndex
    n_feat = len(getattr(store.model, "feature_info_", None) or [])
    if n_src != n_feat:
        raise _FileError(f"{path}: {n_src} feature sources of new items, the model has "
                         f"{n_feat}")
    ids = _check_array(arrays, "new_item_ids", None, (n_new,), path, kinds="iuU")
    bags = []
    for s in range(n_src):
        ip = _check_array(arrays, f"new_bag_{s}_indptr", np.int64, (n_new + 1,), path)
        ind = _check_array(arrays, f"new_bag_{s}_indices", np.int32, None, path)
        w = _check_array(arrays, f"new_bag_{s}_weights", np.float32, (len(ind),), path)
        rows = int(store.model.feature_info_[s].get("n_rows", 0) or 0) \
            if isinstance(store.model.feature_info_[s], dict) else 0
        if ip[0] != 0 or np.any(np.diff(ip) < 0) or ip[-1] != len(ind) or np.any(ind < 0) \
                or (rows and np.any(ind >= rows)):
            raise _FileError(f"{path}: new-item bags of source {s} are not valid")
        bags.append((ip, ind, w))
    try:
        index = ItemIndex(ids)
    except ValueError as e:
        raise _FileError(f"{path}: array 'new_item_ids': {e}") from None
    if np.any(store.model.item_index_.lookup(ids) >= 0):
        raise _FileError(f"{path}: array 'new_item_ids' holds items of the model")
    store._set_new_items(index, bags)


def _fingerprint(params) -> int:
    """CRC-32 of ``Wy`` and ``theta`` (and a context-aware model's context tables): tells a
    snapshot's model from another of the same shape."""
    crc = 0
    for key in ("Wy", "theta") + tuple(k for k in ("context_in", "context_out") if k in params):
        crc = zlib.crc32(np.ascontiguousarray(params[key]).view(np.uint8), crc)
    return int(crc)


def _read_snapshot(path: str):
    import zipfile
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {name: np.array(f[name]) for name in f.files}
    except FileNotFoundError:
        raise _FileError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise _FileError(f"{path} is a directory, not a session store snapshot") from None
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError) as e:
        raise _FileError(f"{path} is not a readable session store snapshot "
                         f"({type(e).__name__})") from None
    if "header" not in arrays or arrays["header"].dtype != np.uint8:
        raise _FileError(f"{path} is not a session store snapshot (no header)")
    try:
        header = json.loads(bytes(arrays["header"]).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise _FileError(f"{path}: unreadable snapshot header") from None
    if not isinstance(header, dict) or header.get("format") != SNAPSHOT_FORMAT:
        raise _FileError(f"{path} is not a session store snapshot")
    if header.get("format_version") not in READ_VERSIONS:
        raise _FileError(f"{path}: snapshot version {header.get('format_version')!r} is not "
                         f"supported (this version reads {list(READ_VERSIONS)})")
    return arrays, header


def _check_array(arrays, name, dtype, shape, path, kinds=None):
    if name not in arrays:
        raise _FileError(f"{path}: array {name!r} is missing")
    a = arrays[name]
    if dtype is not None and a.dtype != dtype:
        raise _FileError(f"{path}: array {name!r} has dtype {a.dtype}, expected {np.dtype(dtype)}")
    if kinds is not None and a.dtype.kind not in kinds:
        raise _FileError(f"{path}: array {name!r} has dtype {a.dtype}")
    if shape is not None and a.shape != shape:
        raise _FileError(f"{path}: array {name!r} has shape {a.shape}, expected {shape}")
    if shape is None and a.ndim != 1:
        raise _FileError(f"{path}: array {name!r} must be 1-D, got shape {a.shape}")
    return a

"""Model files: one ``.npz`` (no pickle) with a JSON header, the item ids and all parameters.

Format 3 (written by this version, both GRU model classes): ``header`` (uint8 array of UTF-8
JSON: ``format`` ``'gru_engine'``, ``format_version`` 3, ``library_version`` (the
``gru_engine.__version__`` that wrote it), ``checksum`` (``'crc32:<8 hex digits>'`` over the
rest of the header and every other array's name, dtype, shape and bytes,
:func:`array_checksum`), ``class``,
hyperparameters, column keys, ``input_mode``, ``subnet_names``, ``feature_info``,
``vocab_counts``, ``loss_history``), ``item_ids`` (int64, uint64 or unicode), ``item_support``,
the network's arrays (``network.PARAM_KEYS``), the feature encoders' vocabularies
``vocab_<source>_<k>``. (The optimiser state is not part of a model file:
:mod:`gru_engine.checkpoint` keeps it.)

Older files still load and score exactly as before: format 1 (SessionGRU, per-layer arrays
``Wx_l``/``bx_l``/``Wh_l``/``bhn_l``, ``Wy``, ``By``, optional ``E``; converted to the network
layout) and the FeatureSessionGRU formats 1 and 2 (``format`` ``'gru_engine.FeatureSessionGRU'``;
version 1 has no vocabularies). They carry no checksum; format 3 files must.

Loading never hands a kernel an array it has not checked. :func:`load_model` raises
:class:`~gru_engine.exceptions.ModelFileError` (a ``ValueError``), naming the file and the array
or header field, for: a missing, empty, truncated, non-zip or directory path; members that are
not ``.npy`` arrays, hold Python objects, or whose declared size is not what the archive holds;
a checksum mismatch; a foreign or newer format, another class, unknown or invalid
hyperparameters; and any array whose presence, dtype, shape or index range disagrees with the
header and the class: the subnet and layer tables ``SI``/``LI`` are recomputed from the header
(the layout :func:`gru_engine.network.build_layout` makes) and must match, ``theta``/``T``/
``Wy``/``By`` must have the lengths that layout implies, ``indptr`` must be non-decreasing from 0
to ``len(indices)``, every bag index must lie within its subnet's table rows, ``Wy`` rows or
feature columns, item ids must be unique and as many as the rows of ``Wy``/``By``/
``item_support``, floats must be finite, and vocabularies must agree with ``feature_info``.

Header parameters this version does not know (as a newer release may write) are an error naming
them, not a warning: a parameter we cannot interpret may change what the model computes.

Files are written and read through :mod:`gru_engine.safe_npz` (atomic writes, file modes,
stale temporaries, checked archive members).
"""
from __future__ import annotations

import json
import logging
import os
import zlib

import numpy as np

from . import context
from . import network as nw
from .exceptions import ModelFileError
from .network import PARAM_KEYS, from_layers
from .output_features import OUTPUT_KEYS
from .output_features import check as check_output_features
from .safe_npz import read_arrays, read_header, write_npz
from .user_level import USER_PARAM_KEYS, user_layout

logger = logging.getLogger("gru_engine")

FORMAT = "gru_engine"
FORMAT_VERSION = 3
_FEATURE_FORMAT = "gru_engine.FeatureSessionGRU"  # FeatureSessionGRU files, versions 1 and 2
_LAYER_KEYS = ("Wx", "bx", "Wh", "bhn")  # per-layer arrays of format 1
_FLOAT_PARAMS = ("weights", "theta", "T", "Wy", "By")
# SI columns the trainer fills on its own copy (table_capacities): not part of the file's layout
_TRAINING_COLUMNS = (nw.S_GOFF, nw.S_GCAP, nw.S_ROFF)
_S_NAMES = {getattr(nw, k): k for k in dir(nw) if k.startswith("S_")}
_L_NAMES = {getattr(nw, k): k for k in dir(nw) if k.startswith("L_")}


# ---------------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------------
def save_model(model, path) -> None:
    """Write a fitted GRU model (:class:`~gru_engine.model.SessionGRU` or a subclass) to
    ``path`` (``.npz``, format 3); :class:`ModelFileError` when it cannot be written."""
    from . import __version__
    model._check_fitted()
    ids = np.asarray(model.item_index_.ids)
    if ids.dtype.kind not in "iuU":
        raise ValueError(f"cannot save item ids of dtype {ids.dtype}: only integer or string ids")
    params = context.saved_params(model.get_params())
    for key in ("layers", "feature_layers"):
        if params.get(key) is not None:
            params[key] = [int(h) for h in np.atleast_1d(params[key])]
    vocab = model.feature_vocab_
    arrays = {"item_ids": ids, "item_support": np.asarray(model.item_support_, np.int64)}
    arrays.update({k: model.params_[k] for k in PARAM_KEYS + USER_PARAM_KEYS + OUTPUT_KEYS
                   if k in model.params_})
    arrays.update(context.file_arrays(model))
    for s, codes_list in enumerate(vocab or []):
        for c, codes in enumerate(codes_list):
            arrays[f"vocab_{s}_{c}"] = np.asarray(codes)
    header = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "library_version": __version__,
        "class": type(model).__name__,
        "params": params, "item_id_dtype": ids.dtype.str, "keys": model.keys_,
        "input_mode": model.input_mode_, "subnet_names": list(model.subnet_names_),
        "feature_info": model.feature_info_, "vocab_counts": None if vocab is None else [len(v) for v in vocab],
        "loss_history": [float(x) for x in model.loss_history_],
    }
    header = json.loads(json.dumps(header))  # as load will see it
    header["checksum"] = array_checksum(arrays, header)
    # the header first: a partial file then starts with a member this module recognises
    arrays = {"header": np.frombuffer(json.dumps(header).encode("utf-8"), dtype=np.uint8),
              **arrays}
    write_npz(os.fspath(path), arrays)


def array_checksum(arrays: dict, header: dict | None = None) -> str:
    """``'crc32:<8 hex digits>'``: CRC-32 over ``header`` without its ``checksum`` (JSON with
    sorted keys), then every array but ``header``, in name order, as ``name:dtype:shape;`` and
    the array's bytes (C order)."""
    crc = 0
    if header is not None:
        rest = {k: v for k, v in header.items() if k != "checksum"}
        crc = zlib.crc32(json.dumps(rest, sort_keys=True).encode("utf-8"))
    for name in sorted(k for k in arrays if k != "header"):
        a = np.ascontiguousarray(arrays[name])
        crc = zlib.crc32(f"{name}:{a.dtype.str}:{a.shape};".encode("utf-8"), crc)
        crc = zlib.crc32(a.reshape(-1).view(np.uint8), crc)
    return f"crc32:{crc:08x}"


# ---------------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------------
class _Checker:
    """Raises :class:`ModelFileError` naming the file and what is wrong in it."""

    def __init__(self, path: str, arrays: dict):
        self.path, self.arrays = path, arrays

    def fail(self, message: str):
        raise ModelFileError(f"{self.path}: {message}")

    def field(self, header: dict, name: str, types, optional=False):
        if name not in header:
            if optional:
                return None
            self.fail(f"header field {name!r} is missing")
        value = header[name]
        if not isinstance(value, types) or isinstance(value, bool) and bool not in _tuple(types):
            self.fail(f"header field {name!r} is {value!r}, expected {_type_names(types)}")
        return value

    def array(self, name: str, dtype=None, kinds=None, shape=None, ndim=None, why=""):
        if name not in self.arrays:
            self.fail(f"array {name!r} is missing")
        a = self.arrays[name]
        if dtype is not None and a.dtype != np.dtype(dtype):
            self.fail(f"array {name!r} has dtype {a.dtype}, expected {np.dtype(dtype)}")
        if kinds is not None and (a.dtype.kind not in kinds or not a.dtype.isnative):
            self.fail(f"array {name!r} has dtype {a.dtype}, expected {kinds}")
        if ndim is not None and a.ndim != ndim:
            self.fail(f"array {name!r} has shape {a.shape}, expected {ndim} dimension(s)")
        if shape is not None and a.shape != tuple(shape):
            self.fail(f"array {name!r} has shape {a.shape}, expected {tuple(shape)}{why}")
        return a

    def finite(self, name: str, a):
        bad = a.size - int(np.count_nonzero(np.isfinite(a)))
        if bad:
            self.fail(f"array {name!r} holds {bad} NaN or infinite value(s)")


def _tuple(types):
    return types if isinstance(types, tuple) else (types,)


def _type_names(types) -> str:
    return " or ".join("null" if t is type(None) else t.__name__ for t in _tuple(types))


def load_model(path, cls):
    """Read a model file of any supported format into a fitted ``cls``, every array checked
    first (module docstring); :class:`ModelFileError` for anything wrong with the file."""
    path = os.fspath(path)
    arrays = read_arrays(path)
    ck = _Checker(path, arrays)
    header = read_header(arrays, path)
    fmt, version = header.get("format"), header.get("format_version")
    if fmt == FORMAT and version == FORMAT_VERSION:
        stored = ck.field(header, "checksum", str)
        actual = array_checksum(arrays, header)
        if stored != actual:
            ck.fail(f"checksum mismatch (header {stored}, arrays {actual}): the file is corrupt "
                    "or was altered")
    elif (fmt, version) not in ((_FEATURE_FORMAT, 1), (_FEATURE_FORMAT, 2), (None, 1)):
        if fmt in (FORMAT, _FEATURE_FORMAT) and isinstance(version, int) and version > 3:
            ck.fail(f"model format version {version} was written by a newer gru_engine "
                    f"({header.get('library_version', 'unknown version')}); this one reads "
                    f"versions 1 to {FORMAT_VERSION}: upgrade gru_engine")
        ck.fail(f"model format {fmt!r} version {version!r} is not supported (this gru_engine "
                f"reads format {FORMAT!r} versions 1 to {FORMAT_VERSION})")
    legacy = fmt is None
    if header.get("class") != cls.__name__:
        ck.fail(f"holds a {header.get('class')!r}, not a {cls.__name__}")
    model, p = _model_from_params(ck, header, cls)
    mode = ck.field(header, "input_mode", str)
    want_mode = ("constrained" if p["constrained_embedding"] else
                 "embedding" if p["embedding"] > 0 else "onehot")
    if mode != want_mode:
        ck.fail(f"header field 'input_mode' is {mode!r}, but the parameters "
                f"(constrained_embedding={p['constrained_embedding']}, "
                f"embedding={p['embedding']}) make it {want_mode!r}")
    ids = ck.array("item_ids", kinds="iuU", ndim=1)
    if ids.dtype.kind in "iu" and ids.dtype.itemsize != 8:
        ck.fail(f"array 'item_ids' has dtype {ids.dtype}, expected int64, uint64 or unicode")
    n_items = len(ids)
    if n_items == 0:
        ck.fail("array 'item_ids' is empty")
    from .data import ItemIndex
    try:
        index = ItemIndex(ids)
    except ValueError as exc:
        ck.fail(f"array 'item_ids': {exc}")
    support = ck.array("item_support", dtype=np.int64, shape=(n_items,),
                       why=" (one count per item id)")
    if support.min() < 0:
        ck.fail("array 'item_support' holds negative counts")
    keys = ck.field(header, "keys", dict)
    if set(keys) != {"session_key", "item_key", "time_key"} or not all(
            isinstance(v, str) for v in keys.values()):
        ck.fail(f"header field 'keys' is {keys!r}, expected session_key, item_key and time_key "
                "column names")
    history = ck.field(header, "loss_history", list, optional=legacy)
    if history is None:
        history = []
    if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in history):
        ck.fail("header field 'loss_history' must be a list of numbers")
    if legacy:
        names, info, vocab = ["id"], [], []
        params = _network_from_layers(ck, header, p, mode, n_items)
    else:
        names = ck.field(header, "subnet_names", list)
        info = ck.field(header, "feature_info", list)
        params = {k: arrays[k] if k in arrays else ck.array(k) for k in PARAM_KEYS}
        params.update(_output_arrays(ck, p, params, n_items))
        vocab = None
    subnets = _expected_subnets(ck, p, mode, names, info, params, n_items)
    _check_network(ck, params, subnets, p, n_items)
    if p.get("user_layers", 0) > 0:
        params.update(_user_arrays(ck, p, params, n_items))
    if not legacy:
        vocab = _vocabularies(ck, header, info, version)
    tables, context_vocab, context_names = context.read_file_arrays(ck, p, params, arrays)
    expected = set(params if not legacy else ()) | {"header", "item_ids", "item_support"}
    expected |= context_names
    expected |= {f"vocab_{s}_{c}" for s, v in enumerate(vocab or []) for c in range(len(v))}
    if legacy:
        expected |= {f"{k}_{l}" for k in _LAYER_KEYS for l in range(len(p["layers"]))}
        expected |= {"Wy", "By"} | ({"E"} if mode == "embedding" else set())
    extra = sorted(set(arrays) - expected)
    if extra:
        ck.fail(f"unexpected array(s) {extra} (not part of a {cls.__name__} file)")
    model.item_index_ = index
    model.keys_ = keys
    model.params_ = {k: np.ascontiguousarray(params[k]) for k in params}
    if tables:
        model.params_.update({k: np.ascontiguousarray(v) for k, v in tables.items()})
        model.context_vocab_ = context_vocab
    model.input_mode_ = mode
    model.item_support_ = support
    model.loss_history_ = [float(x) for x in history]
    model.subnet_names_ = list(names)
    model.feature_info_ = info
    model.feature_vocab_ = vocab
    return model


def _user_arrays(ck: _Checker, p: dict, params: dict, n_items: int) -> dict:
    """``{'UI', 'U'}`` of a user-level model's file, checked against the layout its parameters
    and network give (:func:`~gru_engine.user_level.user_layout`)."""
    want = user_layout(p["user_layers"], p["user_mode"], p["user_input"], params["Wy"].shape[1],
                       params["LI"], n_items, np.random.default_rng(0),
                       params["Wy"].dtype)
    UI = ck.array("UI", dtype=np.int64, shape=want["UI"].shape)
    if not np.array_equal(UI, want["UI"]):
        ck.fail(f"array 'UI' is {UI.tolist()}, but the parameters (user_layers="
                f"{p['user_layers']}, user_mode={p['user_mode']!r}, user_input="
                f"{p['user_input']!r}) and the network make it {want['UI'].tolist()}")
    U = ck.array("U", dtype=want["U"].dtype, shape=want["U"].shape)
    return {"UI": UI, "U": U}
def _output_arrays(ck: _Checker, p: dict, params: dict, n_items: int) -> dict:
    """The output-feature arrays (:mod:`gru_engine.output_features`) of a model with
    ``output_features=True`` (none otherwise; files before the option have none)."""
    if not p.get("output_features"):
        return {}
    out = {"Fy": ck.array("Fy", dtype=np.float32, ndim=2),
           "Fb": ck.array("Fb", dtype=np.float32, ndim=1),
           "oindptr": ck.array("oindptr", dtype=np.int64, ndim=1),
           "oindices": ck.array("oindices", dtype=np.int32, ndim=1),
           "oweights": ck.array("oweights", dtype=np.float32, ndim=1)}
    try:
        check_output_features(dict(out, Wy=params["Wy"]), n_items)
    except ValueError as exc:
        ck.fail(str(exc))
    if not (np.all(np.isfinite(out["Fy"])) and np.all(np.isfinite(out["Fb"]))):
        ck.fail("array 'Fy' or 'Fb' holds NaN or infinite values")
    return out


def _model_from_params(ck: _Checker, header: dict, cls):
    """``(model, validated params)`` from the header's ``params``: unknown names are an error
    naming them; values go through the class's own validation."""
    params = ck.field(header, "params", dict)
    known = cls._param_names()
    unknown = sorted(set(params) - set(known))
    if unknown:
        from . import __version__
        ck.fail(f"header 'params' has parameter(s) {unknown} unknown to gru_engine "
                f"{__version__} (written by gru_engine "
                f"{header.get('library_version', 'of another version')}); upgrade gru_engine to "
                "load this file")
    full = dict(cls().get_params(), **params)
    try:
        # the device the file was trained on need not exist here: a loaded model scores on CPU
        p = cls(**dict(full, device="cpu", show_progress=False))._validated()
    except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
        ck.fail(f"header 'params': {exc}")
    if full["device"] not in ("cpu", "cuda", "auto"):
        ck.fail(f"header 'params': device must be 'cpu', 'cuda' or 'auto', got {full['device']!r}")
    return cls(**full), p


def _expected_subnets(ck, p, mode, names, info, params, n_items) -> list:
    """Per subnet ``(name, kind, tab, table_rows, table_cols, in_dim, layers)`` as the header
    and the class make it (a categorical or token table's width, its ``dim``, is read from
    ``SI``)."""
    arch = p.get("architecture", "id")
    layers, flayers = p["layers"], p.get("feature_layers") or p["layers"]
    subnets = []
    if arch in ("id", "parallel"):
        if mode == "onehot":
            g0 = 3 * layers[0]
            subnets.append(("id", nw.K_DIRECT, nw.T_OWN, n_items, g0, g0, layers))
        elif mode == "embedding":
            e = p["embedding"]
            subnets.append(("id", nw.K_BAG, nw.T_OWN, n_items, e, e, layers))
        else:
            subnets.append(("id", nw.K_BAG, nw.T_WY, n_items, layers[-1], layers[-1], layers))
    if arch == "id" and info:
        ck.fail("header field 'feature_info' lists feature sources, but the model reads none "
                "(architecture='id')")
    SI = params["SI"]
    for k, src in enumerate(info if arch != "id" else []):
        if not isinstance(src, dict) or not isinstance(src.get("name"), str):
            ck.fail(f"header field 'feature_info' entry {k} is not a source description")
        where = f"header field 'feature_info' entry {k} ({src['name']!r})"
        kind = src.get("type")

        def num(key, optional=False):
            v = src.get(key)
            if v is None and optional:
                return None
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                ck.fail(f"{where}: {key!r} is {v!r}, expected a positive integer")
            return v
        s = len(subnets)
        if kind == "dense":
            if "project" not in src:
                ck.fail(f"{where}: 'project' is missing")
            d, proj = num("d"), num("project", optional=True)
            if proj is None:
                subnets.append((src["name"], nw.K_RAW, nw.T_NONE, 0, 0, d, flayers))
            else:
                subnets.append((src["name"], nw.K_BAG, nw.T_OWN, d, proj, proj, flayers))
        elif kind in ("categorical", "tokens"):
            rows = num("n_rows")
            if kind == "categorical":
                if not isinstance(src.get("multi_hot"), bool):
                    ck.fail(f"{where}: 'multi_hot' is {src.get('multi_hot')!r}, expected true "
                            "or false")
                num("n_cols")
            else:
                num("n_buckets", optional=True)
            pooling = src.get("pooling")
            if pooling not in (("sum", "mean") if kind == "categorical" else ("mean",)):
                ck.fail(f"{where}: unknown pooling {pooling!r}")
            if not (isinstance(SI, np.ndarray) and SI.dtype == np.int64 and SI.ndim == 2
                    and SI.shape[0] > s and SI.shape[1] == nw.N_SCOL):
                ck.array("SI", dtype=np.int64, ndim=2)
                ck.fail(f"array 'SI' has shape {SI.shape}, expected a row per subnet and "
                        f"{nw.N_SCOL} columns")
            dim = int(SI[s, nw.S_TCOLS])
            if dim < 1:
                ck.fail(f"array 'SI' row {s} ({src['name']!r}) column S_TCOLS is {dim}, "
                        "expected the embedding size (>= 1)")
            subnets.append((src["name"], nw.K_BAG, nw.T_OWN, rows, dim, dim, flayers))
        else:
            ck.fail(f"{where}: unknown type {kind!r}")
    want = [sn[0] for sn in subnets]
    if list(names) != want:
        ck.fail(f"header field 'subnet_names' is {names!r}, but the parameters "
                f"(architecture={arch!r}) and 'feature_info' make it {want!r}")
    return subnets


def _check_network(ck: _Checker, params: dict, subnets: list, p: dict, n_items: int) -> None:
    """The network's arrays against the layout the header implies (see the module
    docstring): the offsets as :func:`gru_engine.network.build_layout` makes them."""
    ck = _Checker(ck.path, params)
    # no size can exceed the floats the file holds: this bounds every offset below (int64)
    cap = 1 + sum(int(a.size) for k, a in params.items()
                  if k in _FLOAT_PARAMS and isinstance(a, np.ndarray))
    for name, kind, tab, trows, tcols, din, lay in subnets:
        sizes = [trows, tcols, din, *lay]
        if max(sizes) > cap:
            ck.fail(f"subnet {name!r}: sizes {sizes} (from the header and 'SI') are larger than "
                    f"the file's parameters ({cap - 1} floats) allow")
    sum_mode = p.get("combine", "concat") == "sum"
    last = [sn[6][-1] for sn in subnets]
    if sum_mode and len(set(last)) > 1:
        ck.fail(f"header 'params': combine='sum' needs subnets of one size, got {last}")
    Hc = last[0] if sum_mode else int(sum(last))
    S, G = len(subnets), sum(len(sn[6]) for sn in subnets)
    SI = np.zeros((S, nw.N_SCOL), np.int64)
    LI = np.zeros((G, nw.N_LCOL), np.int64)
    d_off = t_off = x_off = s_off = h_off = gg_off = c_off = g = 0
    for s, (name, kind, tab, trows, tcols, din, lay) in enumerate(subnets):
        SI[s, nw.S_KIND], SI[s, nw.S_TAB], SI[s, nw.S_IN] = kind, tab, din
        SI[s, nw.S_TROWS], SI[s, nw.S_TCOLS] = trows, tcols
        SI[s, nw.S_IPOFF] = s * (n_items + 1)
        SI[s, nw.S_XOFF], SI[s, nw.S_D0], SI[s, nw.S_L0] = x_off, d_off, g
        for l, H in enumerate(lay):
            n_in = din if l == 0 else lay[l - 1]
            LI[g, nw.L_H], LI[g, nw.L_HOFF], LI[g, nw.L_GOFF] = H, h_off, gg_off
            LI[g, nw.L_STOFF] = h_off
            if l == 0 and kind == nw.K_DIRECT:
                LI[g, nw.L_IN], LI[g, nw.L_WX] = 0, -1
            else:
                LI[g, nw.L_IN], LI[g, nw.L_WX] = n_in, d_off
                d_off += n_in * 3 * H
            LI[g, nw.L_BX] = d_off
            d_off += 3 * H
            LI[g, nw.L_WH] = d_off
            d_off += 3 * H * H
            LI[g, nw.L_BHN] = d_off
            d_off += H
            h_off += H
            gg_off += 3 * H
            g += 1
        SI[s, nw.S_L1] = g
        if sum_mode:
            SI[s, nw.S_A] = d_off
            d_off += 1
            SI[s, nw.S_C0], SI[s, nw.S_C1] = 0, Hc
        else:
            SI[s, nw.S_A] = -1
            SI[s, nw.S_C0], SI[s, nw.S_C1] = c_off, c_off + lay[-1]
            c_off += lay[-1]
        SI[s, nw.S_WYC0] = SI[s, nw.S_C0]
        SI[s, nw.S_D1] = d_off
        if tab == nw.T_OWN:
            SI[s, nw.S_TOFF] = t_off
            t_off += trows * tcols
            SI[s, nw.S_SOFF] = s_off
            s_off += trows
        x_off += din
    fSI = ck.array("SI", dtype=np.int64, shape=SI.shape, why=" (a row per subnet)")
    fLI = ck.array("LI", dtype=np.int64, shape=LI.shape, why=" (a row per GRU layer)")
    for tbl, got, want, cols, skip in (("SI", fSI, SI, _S_NAMES, _TRAINING_COLUMNS),
                                        ("LI", fLI, LI, _L_NAMES, ())):
        diff = got != want
        diff[:, list(skip)] = False
        if diff.any():
            r, c = map(int, np.argwhere(diff)[0])
            ck.fail(f"array {tbl!r} row {r} column {cols.get(c, c)} is {int(got[r, c])}, but the "
                    f"header's layout makes it {int(want[r, c])}")
    why = " (the length the header's layout implies)"
    ck.array("theta", dtype=np.float32, shape=(d_off,), why=why)
    T = ck.array("T", dtype=np.float32, ndim=1)
    if len(T) not in (t_off, max(t_off, 1)):
        ck.fail(f"array 'T' has shape {T.shape}, expected ({t_off},){why}")
    ck.array("Wy", dtype=np.float32, shape=(n_items, Hc),
             why=f" ({n_items} item ids, combined state of {Hc})")
    ck.array("By", dtype=np.float32, shape=(n_items,), why=f" ({n_items} item ids)")
    indptr = ck.array("indptr", dtype=np.int64, shape=(S * (n_items + 1),),
                      why=f" ({S} subnet(s) x ({n_items} items + 1))")
    indices = ck.array("indices", dtype=np.int32, ndim=1)
    if indptr[0] != 0 or np.any(np.diff(indptr) < 0) or indptr[-1] != len(indices):
        ck.fail(f"array 'indptr' must rise from 0 to len(indices) ({len(indices)}) without "
                "decreasing")
    ck.array("weights", dtype=np.float32, shape=indices.shape, why=" (one per index)")
    for s, (name, kind, tab, trows, tcols, din, lay) in enumerate(subnets):
        a, b = int(indptr[s * (n_items + 1)]), int(indptr[s * (n_items + 1) + n_items])
        limit, what = ((din, "feature columns") if kind == nw.K_RAW else
                       (n_items, "rows of Wy") if tab == nw.T_WY else (trows, "table rows"))
        if b > a:
            block = indices[a:b]
            lo, hi = int(block.min()), int(block.max())
            if lo < 0 or hi >= limit:
                ck.fail(f"array 'indices' of subnet {name!r} holds {lo if lo < 0 else hi}, "
                        f"outside its {limit} {what}")
    for key in _FLOAT_PARAMS:
        ck.finite(key, params[key])


def _network_from_layers(ck: _Checker, header: dict, p: dict, mode: str, n_items: int) -> dict:
    """The network parameters of a format-1 SessionGRU file (per-layer arrays), each checked."""
    layers = p["layers"]
    L = header.get("n_layers")
    if L != len(layers):
        ck.fail(f"header field 'n_layers' is {L!r}, but 'params' has layers={layers}")
    f32 = np.float32
    first_in = {"onehot": n_items, "embedding": p["embedding"], "constrained": layers[-1]}[mode]
    lp = {k: [] for k in _LAYER_KEYS}
    for l, H in enumerate(layers):
        n_in = first_in if l == 0 else layers[l - 1]
        lp["Wx"].append(ck.array(f"Wx_{l}", dtype=f32, shape=(n_in, 3 * H)))
        lp["bx"].append(ck.array(f"bx_{l}", dtype=f32, shape=(3 * H,)))
        lp["Wh"].append(ck.array(f"Wh_{l}", dtype=f32, shape=(H, 3 * H)))
        lp["bhn"].append(ck.array(f"bhn_{l}", dtype=f32, shape=(H,)))
    lp["Wy"] = ck.array("Wy", dtype=f32, shape=(n_items, layers[-1]))
    lp["By"] = ck.array("By", dtype=f32, shape=(n_items,))
    if mode == "embedding":
        lp["E"] = ck.array("E", dtype=f32, shape=(n_items, p["embedding"]))
    for k, v in lp.items():
        for l, a in enumerate(v if isinstance(v, list) else [v]):
            ck.finite(f"{k}_{l}" if isinstance(v, list) else k, a)
    return from_layers(lp, mode)


def _vocabularies(ck: _Checker, header: dict, info: list, version) -> list | None:
    """The feature encoders' vocabularies (None for FeatureSessionGRU format 1), checked
    against ``feature_info``."""
    # null: the model kept no encoders (it was read from a FeatureSessionGRU format 1 file)
    counts = ck.field(header, "vocab_counts", (list, type(None)), optional=version == 1)
    if counts is None:
        return None
    if len(counts) != len(info) or not all(
            isinstance(n, int) and not isinstance(n, bool) and 0 <= n <= 1_000_000
            for n in counts):
        ck.fail(f"header field 'vocab_counts' is {counts!r}, expected a count per feature "
                f"source ({len(info)})")
    vocab = []
    for s, (n, src) in enumerate(zip(counts, info)):
        codes = []
        for c in range(n):
            name = f"vocab_{s}_{c}"
            v = ck.array(name, kinds="iU", ndim=1)
            if v.dtype.kind == "i" and v.dtype != np.int64:
                ck.fail(f"array {name!r} has dtype {v.dtype}, expected int64 or unicode")
            if len(v) > 1 and not np.all(v[1:] > v[:-1]):
                ck.fail(f"array {name!r} is not sorted and unique")
            codes.append(v)
        kind, rows = src.get("type"), src.get("n_rows")
        if kind == "categorical":
            want_n = 1 if src.get("multi_hot") else src.get("n_cols")
            want_rows = sum(len(v) + 1 for v in codes)
        elif kind == "tokens":
            hashed = src.get("n_buckets") is not None
            want_n = 0 if hashed else 1
            want_rows = src["n_buckets"] + 1 if hashed else sum(len(v) + 1 for v in codes)
        else:
            want_n, want_rows = 0, rows
        if n != want_n or rows != want_rows:
            ck.fail(f"feature source {src.get('name')!r}: {n} vocabularies holding "
                    f"{want_rows if n == want_n else '?'} table rows disagree with its "
                    f"'feature_info' ({src})")
        vocab.append(codes)
    return vocab

"""Model files: one ``.npz`` (no pickle) with a JSON header, the item ids and all parameters.

Format 3 (written by this version, both GRU model classes): ``header`` (uint8 array of UTF-8
JSON: ``format`` ``'gru_engine'``, ``format_version`` 3, ``class``, hyperparameters, column
keys, ``input_mode``, ``subnet_names``, ``feature_info``, ``vocab_counts``, ``loss_history``),
``item_ids`` (int64 or unicode), ``item_support``, the network's arrays (``network.PARAM_KEYS``)
and the feature encoders' vocabularies ``vocab_<source>_<k>``. Written to a temporary file then
renamed (atomic on POSIX).

Older files still load and score exactly as before: format 1 (SessionGRU, per-layer arrays
``Wx_l``/``bx_l``/``Wh_l``/``bhn_l``, ``Wy``, ``By``, optional ``E``; converted to the network
layout) and the FeatureSessionGRU formats 1 and 2 (``format`` ``'gru_engine.FeatureSessionGRU'``;
version 1 has no vocabularies).
"""
from __future__ import annotations

import json
import os
import tempfile

import numpy as np

from .network import PARAM_KEYS, from_layers

FORMAT = "gru_engine"
FORMAT_VERSION = 3
_FEATURE_FORMAT = "gru_engine.FeatureSessionGRU"  # FeatureSessionGRU files, versions 1 and 2
_LAYER_KEYS = ("Wx", "bx", "Wh", "bhn")  # per-layer arrays of format 1


def save_model(model, path) -> None:
    """Write a fitted GRU model (:class:`~gru_engine.model.SessionGRU` or a subclass) to
    ``path`` (``.npz``, format 3)."""
    model._check_fitted()
    ids = np.asarray(model.item_index_.ids)
    if ids.dtype.kind not in "iuU":
        raise ValueError(f"cannot save item ids of dtype {ids.dtype}: only integer or string ids")
    params = model.get_params()
    for key in ("layers", "feature_layers"):
        if params.get(key) is not None:
            params[key] = [int(h) for h in np.atleast_1d(params[key])]
    vocab = model.feature_vocab_ or []
    header = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "class": type(model).__name__,
        "params": params, "item_id_dtype": ids.dtype.str, "keys": model.keys_,
        "input_mode": model.input_mode_, "subnet_names": list(model.subnet_names_),
        "feature_info": model.feature_info_, "vocab_counts": [len(v) for v in vocab],
        "loss_history": [float(x) for x in model.loss_history_],
    }
    arrays = {"header": np.frombuffer(json.dumps(header).encode("utf-8"), dtype=np.uint8),
              "item_ids": ids, "item_support": np.asarray(model.item_support_, np.int64)}
    arrays.update({k: model.params_[k] for k in PARAM_KEYS})
    for s, codes_list in enumerate(vocab):
        for c, codes in enumerate(codes_list):
            arrays[f"vocab_{s}_{c}"] = np.asarray(codes)
    write_npz(os.fspath(path), arrays)


def write_npz(path: str, arrays: dict) -> None:
    """``np.savez(path, **arrays)`` atomically: a temporary file in the same folder, renamed."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=".tmp-",
                               suffix=".npz")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def read_header(f, path: str) -> dict:
    """The JSON header of an opened model file ``f`` (``np.load``); ``ValueError`` when it is
    missing or unreadable."""
    if "header" not in f.files:
        raise ValueError(f"{path} is not a gru_engine model file (no header)")
    try:
        return json.loads(bytes(f["header"]).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ValueError(f"{path}: unreadable model header") from None


def load_model(path, cls):
    """Read a model file of any supported format into a fitted ``cls``; ``ValueError`` for a
    foreign or newer file or one of another class."""
    path = os.fspath(path)
    with np.load(path, allow_pickle=False) as f:
        header = read_header(f, path)
        if header.get("class") != cls.__name__:
            raise ValueError(f"{path} holds a {header.get('class')!r}, not a {cls.__name__}")
        fmt, version = header.get("format"), header.get("format_version")
        if (fmt, version) in ((FORMAT, FORMAT_VERSION), (_FEATURE_FORMAT, 1), (_FEATURE_FORMAT, 2)):
            params = {k: np.array(f[k]) for k in PARAM_KEYS}
        elif fmt is None and version == 1:
            params = _network_from_layers(header, f)
            header = dict(header, subnet_names=["id"], feature_info=[], vocab_counts=[])
        else:
            raise ValueError(f"{path}: model format {fmt!r} version {version!r} is not supported "
                             f"(this gru_engine reads format {FORMAT!r} versions 1 to "
                             f"{FORMAT_VERSION})")
        counts = header.get("vocab_counts")
        vocab = None if counts is None else [[np.array(f[f"vocab_{s}_{c}"]) for c in range(n)]
                                             for s, n in enumerate(counts)]
        ids = np.array(f["item_ids"])
        support = np.array(f["item_support"])
    from .data import ItemIndex
    model = cls(**header["params"])
    model.item_index_ = ItemIndex(ids)
    model.keys_ = header["keys"]
    model.params_ = params
    model.input_mode_ = header["input_mode"]
    model.item_support_ = support
    model.loss_history_ = header["loss_history"]
    model.subnet_names_ = header["subnet_names"]
    model.feature_info_ = header["feature_info"]
    model.feature_vocab_ = vocab
    return model


def _network_from_layers(header: dict, f) -> dict:
    """The network parameters of a format-1 SessionGRU file (per-layer arrays)."""
    L = int(header["n_layers"])
    layer_params = {k: [np.array(f[f"{k}_{l}"]) for l in range(L)] for k in _LAYER_KEYS}
    for key in ("Wy", "By", "E"):
        if key in f.files:
            layer_params[key] = np.array(f[key])
    return from_layers(layer_params, header["input_mode"])

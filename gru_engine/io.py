"""Model files: one ``.npz`` (no pickle) with a JSON header, the item ids and all parameters.

Layout: ``header`` (uint8 array of UTF-8 JSON: format version, class name, hyperparameters,
item-id dtype, fitted scalars), ``item_ids`` (int64 or unicode), ``Wx_0``, ``bx_0``, ``Wh_0``,
``bhn_0``, ... per layer, ``Wy``, ``By``, optionally ``E``, ``item_support``. Written to a
temporary file then renamed (atomic on POSIX).
"""
from __future__ import annotations

import json
import os
import tempfile

import numpy as np

FORMAT_VERSION = 1
_LAYER_KEYS = ("Wx", "bx", "Wh", "bhn")


def save_model(model, path) -> None:
    """Write a fitted :class:`~gru_engine.model.SessionGRU` to ``path`` (``.npz``)."""
    model._check_fitted()
    ids = np.asarray(model.item_index_.ids)
    if ids.dtype.kind not in "iuU":
        raise ValueError(f"cannot save item ids of dtype {ids.dtype}: only integer or string ids")
    params = model.get_params()
    params["layers"] = [int(h) for h in np.atleast_1d(params["layers"])]
    header = {
        "format_version": FORMAT_VERSION,
        "class": type(model).__name__,
        "params": params,
        "item_id_dtype": ids.dtype.str,
        "input_mode": model.input_mode_,
        "n_layers": len(model.params_["Wx"]),
        "keys": model.keys_,
        "loss_history": [float(x) for x in model.loss_history_],
    }
    arrays = {"header": np.frombuffer(json.dumps(header).encode("utf-8"), dtype=np.uint8),
              "item_ids": ids, "item_support": np.asarray(model.item_support_, np.int64)}
    for key in _LAYER_KEYS:
        for l, a in enumerate(model.params_[key]):
            arrays[f"{key}_{l}"] = a
    for key in ("Wy", "By", "E"):
        if key in model.params_:
            arrays[key] = model.params_[key]
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
    """Read a model written by :func:`save_model`; ``ValueError`` for a foreign/newer file."""
    path = os.fspath(path)
    with np.load(path, allow_pickle=False) as f:
        header = read_header(f, path)
        if header.get("class") != cls.__name__:
            raise ValueError(f"{path} holds a {header.get('class')!r}, not a {cls.__name__}")
        version = header.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION or version < 1:
            raise ValueError(f"{path}: model format version {version!r} is not supported "
                             f"(this gru_engine reads versions 1..{FORMAT_VERSION})")
        L = int(header["n_layers"])
        params = {key: [np.array(f[f"{key}_{l}"]) for l in range(L)] for key in _LAYER_KEYS}
        for key in ("Wy", "By", "E"):
            if key in f.files:
                params[key] = np.array(f[key])
        ids = np.array(f["item_ids"])
        support = np.array(f["item_support"])
    return restore_model(cls, header, ids, support, params)


def restore_model(cls, header: dict, ids, support, params: dict):
    """A fitted ``cls`` from a file's header (``params``, ``keys``, ``input_mode``,
    ``loss_history``), item ids, item support and parameter dict."""
    from .data import ItemIndex
    model = cls(**header["params"])
    model.item_index_ = ItemIndex(ids)
    model.keys_ = header["keys"]
    model.params_ = params
    model.input_mode_ = header["input_mode"]
    model.item_support_ = support
    model.loss_history_ = header["loss_history"]
    return model

"""Checkpoints of a fit (``fit(..., checkpoint=folder, resume=...)``).

A checkpoint is a folder holding ``model.npz``, a normal model file of the last complete epoch
(:meth:`SessionGRU.load` reads it), and ``state.npz``, what training needs besides the
parameters to continue exactly as an uninterrupted run: the optimiser state, the trainer's
negative-sample store and counters, the state of Numba's random generator (dropout masks,
store redraws) and of the session-order generator, the per-epoch figures, and a fingerprint of
the hyperparameters and the training data. Both are written atomically, the state first; the
epoch recorded in both must agree. Files hold no pickle (``.npz`` + JSON header).

The extensions on the CPU checkpoint the same way: the optimiser state covers every trained
parameter (a context model's tables, a user-level model's ``U``, the output-feature rows
``Fy``/``Fb``; :meth:`~gru_engine.backends.cpu.trainer.Trainer.optimizer_state`), and the
fingerprint covers what they train on beyond the sessions (the events' context, the users'
walks). On CUDA likewise: the CUDA trainers return and load the same state under the same
keys (their dropout step counter in the trainer state).
"""
from __future__ import annotations

import json
import os
import zlib

import numpy as np

from .exceptions import ModelFileError
from .safe_npz import read_arrays, read_header, write_npz

STATE_VERSION = 1
#: hyperparameters that may differ between the interrupted run and its resumption
_FREE = ("n_threads", "show_progress", "n_epochs")


def _extension_data(trainer) -> list:
    """Arrays beyond the sessions that the fit trains on: the per-event context rows of a
    context model, the users' walks of a user-level model (none for other models)."""
    out = []
    if getattr(trainer, "follows_events", False):
        out += list(trainer.event_context)
    walks = getattr(trainer, "walks", None)
    if walks is not None:
        out += [np.array([len(w) for w in walks], np.int64),
                np.concatenate(walks) if walks else np.zeros(0, np.int64)]
    return out


def _fingerprint(model, sessions, trainer) -> dict:
    params = {k: v for k, v in model.get_params().items() if k not in _FREE}
    data = zlib.crc32(np.ascontiguousarray(sessions.items).tobytes())
    data = zlib.crc32(np.ascontiguousarray(sessions.offsets).tobytes(), data)
    ids = zlib.crc32(np.asarray(model.item_index_.ids).astype(str).astype("U").tobytes())
    out = {"params": json.loads(json.dumps(params, default=list)), "events": int(data),
           "item_ids": int(ids)}
    extra = _extension_data(trainer)
    if extra:  # absent for other models: their checkpoints keep their fingerprint
        crc = 0
        for a in extra:
            crc = zlib.crc32(np.ascontiguousarray(a).tobytes(), crc)
        out["extension_data"] = int(crc)
    return out


def _same_fingerprint(stored: dict, current: dict) -> bool:
    """Whether a checkpoint's fingerprint matches the running fit's. A hyperparameter newer
    than the checkpoint (absent from its fingerprint) matches when the fit leaves it at its
    default, so checkpoints of earlier releases still resume."""
    from .params import DEFAULTS
    defaults = json.loads(json.dumps(DEFAULTS, default=list))
    params = dict(stored.get("params", {}))
    for key, value in current["params"].items():
        if key not in params and key in defaults and value == defaults[key]:
            params[key] = value
    return {**stored, "params": params} == current


def _numba_rng():
    from numba import _helperlib
    return _helperlib, _helperlib.rnd_get_np_state_ptr()


def save_checkpoint(model, folder, trainer, order_rng, epoch: int, sessions) -> None:
    """Write the checkpoint of ``model`` after its epoch ``epoch`` (``model.params_`` and the
    per-epoch lists already hold that epoch; ``sessions``: the training data) into ``folder``
    (created when missing)."""
    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    lib, ptr = _numba_rng()
    pos, mt = lib.rnd_get_state(ptr)
    header = {"state_version": STATE_VERSION, "epoch": int(epoch),
              "order_rng": order_rng.bit_generator.state,
              "fingerprint": _fingerprint(model, sessions, trainer),
              "loss_history": [float(x) for x in model.loss_history_],
              "epoch_times": [float(x) for x in model.epoch_times_],
              "events_per_s": [float(x) for x in model.events_per_s_],
              "numba_rng_pos": int(pos)}
    arrays = {"header": np.frombuffer(json.dumps(header).encode("utf-8"), np.uint8),
              "numba_rng": np.asarray(mt, np.uint32)}
    for kind, group in trainer.optimizer_state().items():
        for key, a in group.items():
            arrays[f"opt_{kind}_{key}"] = np.asarray(a)
    for key, a in trainer.training_state().items():
        arrays[f"train_{key}"] = a
    write_npz(os.path.join(folder, "state.npz"), arrays)
    model.save(os.path.join(folder, "model.npz"))


def _read_state(folder):
    """(header, arrays) of a checkpoint's ``state.npz``; ``ModelFileError`` (a ``ValueError``)
    for a missing, damaged or foreign file."""
    path = os.path.join(os.fspath(folder), "state.npz")
    if not os.path.isfile(path):
        raise ModelFileError(f"{folder}: no checkpoint here (state.npz missing)")
    arrays = read_arrays(path)
    header = read_header(arrays, path)
    if header.get("state_version") != STATE_VERSION:
        raise ModelFileError(f"{path}: checkpoint state version "
                             f"{header.get('state_version')!r} is not supported")
    del arrays["header"]
    return header, arrays


def _optimizer_state(arrays, model, path, keys=None) -> dict:
    """The optimiser state of a checkpoint, checked against the model's parameter shapes.
    ``keys``: the parameters whose state is needed (None: ``theta``/``T``/``Wy``/``By`` and
    every other parameter of the model whose state the file holds)."""
    if keys is None:
        keys = ["theta", "T", "Wy", "By"]
        keys += sorted(k[len("opt_acc_"):] for k in arrays if k.startswith("opt_acc_")
                       and k[len("opt_acc_"):] not in keys)
    out = {}
    for kind in ("acc", "vel"):
        out[kind] = {}
        for key in keys:
            if key not in model.params_:
                raise ModelFileError(f"{path}: opt_{kind}_{key} is the state of a parameter "
                                     "the model does not have")
            a = arrays.get(f"opt_{kind}_{key}")
            want = model.params_[key]
            if a is None or a.shape != want.shape or a.dtype != want.dtype \
                    or not np.all(np.isfinite(a)):
                raise ModelFileError(f"{path}: opt_{kind}_{key} is missing or does not match "
                                     f"the model's {key} {want.shape} {want.dtype}")
            out[kind][key] = a
    return out


def restore_training(model, folder, trainer, order_rng, sessions) -> int:
    """Put the checkpoint in ``folder`` into a fit that has just built ``trainer`` and filled
    its sample store: parameters, optimiser and trainer state, random generators, per-epoch
    figures. Returns the checkpoint's epoch; ``ValueError`` when the checkpoint belongs to
    other hyperparameters or data, or its two files disagree."""
    header, arrays = _read_state(folder)
    if not _same_fingerprint(header["fingerprint"], _fingerprint(model, sessions, trainer)):
        raise ValueError(f"{folder}: the checkpoint was made with other hyperparameters or "
                         "other training data; resume needs the same (n_threads, n_epochs and "
                         "show_progress may differ)")
    saved = type(model).load(os.path.join(os.fspath(folder), "model.npz"))
    if len(saved.loss_history_) != header["epoch"]:
        raise ValueError(f"{folder}: model.npz and state.npz are of different epochs")
    trainer.load_state(params=saved.params_,
                       optimizer_state=_optimizer_state(arrays, saved, folder,
                                                        list(trainer.optimizer_state()["acc"])))
    trainer.restore_training_state({k[len("train_"):]: v for k, v in arrays.items()
                                    if k.startswith("train_")})
    lib, ptr = _numba_rng()
    lib.rnd_set_state(ptr, (int(header["numba_rng_pos"]), [int(x) for x in arrays["numba_rng"]]))
    order_rng.bit_generator.state = header["order_rng"]
    model.loss_history_ = list(header["loss_history"])
    model.epoch_times_ = list(header["epoch_times"])
    model.events_per_s_ = list(header["events_per_s"])
    return int(header["epoch"])


def load_checkpoint(folder, cls):
    """The model of the checkpoint in ``folder`` as a fitted ``cls``, with its optimiser state
    (``optimizer_state_``), ready for :meth:`SessionGRU.partial_fit`."""
    header, arrays = _read_state(folder)
    model = cls.load(os.path.join(os.fspath(folder), "model.npz"))
    model.optimizer_state_ = _optimizer_state(arrays, model, folder)
    model.epoch_times_ = list(header["epoch_times"])
    model.events_per_s_ = list(header["events_per_s"])
    return model

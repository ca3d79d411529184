"""Scorers of a fitted GRU model that share the item tables built ONCE per model (see
:func:`shared_scorer`)."""
from __future__ import annotations

import copy
import threading
import weakref

import numpy as np


# ---------------------------------------------------------------------------------------------
# the static part of a model's scoring, built once
# ---------------------------------------------------------------------------------------------
_STATIC = weakref.WeakKeyDictionary()  # model -> _Static
_STATIC_LOCK = threading.Lock()


class _Static:
    """What scoring a model needs that never changes while ``params_`` stays: a prototype CPU
    scorer (forked, never used itself), normalised item vectors, the popularity order."""

    def __init__(self, model, key):
        self.params = model.params_  # held: the identity checks below stay meaningful
        self.arrays = tuple(model.params_.values())
        self.key = key
        self.proto = None
        self.unit_wy = None
        self.unit_wy_device = None
        self.popular = None
        self.lock = threading.Lock()

    def valid_for(self, model, key) -> bool:
        p = model.params_
        return (p is self.params and self.key == key and len(p) == len(self.arrays)
                and all(a is b for a, b in zip(p.values(), self.arrays)))


def _sampled(params) -> tuple:
    """A cheap fingerprint of parameters trained in place (the CPU trainer updates its arrays
    in place and hands the same dict to ``fit``'s callback every epoch): ~4096 evenly spaced
    entries of each of ``theta``, ``Wy`` and ``By``, as bytes."""
    out = []
    for key in ("theta", "Wy", "By"):
        a = np.asarray(params[key]).reshape(-1)
        out.append(a[::max(1, len(a) // 4096)].tobytes())
    return tuple(out)


def _static(model) -> _Static:
    from ..backends.cpu_scoring import OutputLayer, Scorer
    key = (model.final_act, model.n_threads, getattr(model, "device_", "cpu"),
           Scorer.MAX_TABLE, OutputLayer.USE_PANELS,  # switched by tests and benchmarks
           _sampled(model.params_))
    with _STATIC_LOCK:
        st = _STATIC.get(model)
        if st is None or not st.valid_for(model, key):
            st = _Static(model, key)
            _STATIC[model] = st
        return st


def _cpu_proto(model):
    """The model's prototype CPU scorer (built on first use)."""
    st = _static(model)
    with st.lock:
        if st.proto is None:
            st.proto = model._build_scorer(model.params_, device="cpu")
        return st.proto


def _fork(proto, params=None):
    """A CPU scorer sharing ``proto``'s item tables and output layer, with its own (empty)
    hidden state and buffers. ``params``: a variant of the prototype's parameters with the
    same output layer (``Wy``/``By`` the same arrays: new items' bags, see
    :func:`gru_engine.network.with_new_items`) whose network replaces the prototype's."""
    sc = copy.copy(proto)
    sc._ws = []
    sc.state = np.zeros((0, proto.width), np.float32)
    if params is not None:
        from ..backends.cpu.step import Net
        from ..network import PARAM_KEYS
        sc.net = Net(**{k: (np.ascontiguousarray(params[k], np.float32)
                            if k in ("theta", "T", "Wy", "By", "weights") else params[k])
                        for k in PARAM_KEYS})
    return sc


def shared_scorer(model, params=None, device=None):
    """A scorer of ``model`` (evaluation protocol, :class:`~gru_engine.evaluation.SessionScorer`)
    with its own hidden state; item tables are built once per model (module docstring).

    params: None (``params_``) or a variant sharing ``params_``'s ``Wy``/``By`` (new items
            of :class:`~gru_engine.feature_model.FeatureSessionGRU`); other dicts get a scorer
            built from scratch.
    device: None (the model's: CUDA for ``device_ == 'cuda'`` and ``params=None``, else CPU),
            or ``'cpu'``.
    """
    model._check_fitted()
    cuda = getattr(model, "device_", "cpu") == "cuda" and device != "cpu"
    if params is None or params is model.params_:
        if cuda:
            return model._build_scorer(None)  # device parameters cached by the CUDA backend
        return _fork(_cpu_proto(model))
    if params["Wy"] is model.params_["Wy"] and params["By"] is model.params_["By"]:
        return _fork(_cpu_proto(model), params)
    return model._build_scorer(params, device="cpu")


def _sum_hidden(scorer) -> int:
    return int(scorer.width) if hasattr(scorer, "width") else int(sum(scorer.net.H))

"""Ahead-of-time compilation of the CPU kernels (``gru-engine compile``, for container images).

Numba compiles the kernels on their first call and caches the machine code beside the modules
(``__pycache__``, or ``NUMBA_CACHE_DIR``). Every network runs through the same kernels (the
flat layout of :mod:`gru_engine.network`), compiled once per variant of the step: cross-entropy
or a ranking loss, with or without context, output features or the user-level GRU, training on
one Numba thread or on two (a plain fit compiles none of the others' code). One small fit of
each variant on one thread and on two, and an evaluation, compile everything a fit or an
evaluation needs.
"""
from __future__ import annotations

import logging
import time

import numpy as np

logger = logging.getLogger("gru_engine")


def _cached(kernel) -> bool:
    """Whether ``kernel`` has cached machine code for this package's source (an index whose
    source stamp is not the package's, :mod:`gru_engine.numba_cache`, reads as empty)."""
    try:
        return bool(kernel._cache._cache_file._load_index())
    except AttributeError:  # a Numba without this cache layout: assume nothing is cached
        return False


def kernels_cached() -> bool:
    """Whether the training and inference kernels have cached machine code (a fit or an
    evaluation then starts without compiling)."""
    from .infer import infer_step
    from .trainer import train_steps
    return _cached(train_steps) and _cached(infer_step)


def compile_kernels() -> float:
    """Compile (and cache) every CPU kernel a fit and an evaluation use: fits a tiny model of
    each variant of the step on generated data, on one thread and (where Numba has two) on
    two, and evaluates it. Returns seconds."""
    import numba
    from ...feature_model import FeatureSessionGRU
    from ...features import CategoricalFeatures
    from ...model import SessionGRU
    t0 = time.perf_counter()
    rng = np.random.default_rng(0)
    n = 400
    events = {"SessionId": np.repeat(np.arange(n // 4), 4),
              "UserId": np.repeat(np.arange(n // 16), 16), "ItemId": rng.integers(0, 40, n),
              "Time": 1.6e9 + 60.0 * np.arange(n)}
    ids = np.arange(40)
    feats = {"cat": CategoricalFeatures(ids, [[i % 5] for i in ids], dim=4)}
    for n_threads in (1, 2) if numba.config.NUMBA_NUM_THREADS >= 2 else (1,):
        kw = dict(layers=[8], n_epochs=1, batch_size=8, n_sample=16, n_threads=n_threads,
                  random_state=0)
        for variant in (dict(), dict(loss="bpr-max"), dict(user_layers=4),
                        dict(context_input="concat", context_output="multiply",
                             context_time=["hour"])):
            SessionGRU(**kw, **variant).fit(events).evaluate(events)
        for variant in (dict(), dict(output_features=True)):
            FeatureSessionGRU(**kw, **variant).fit(events, item_features=feats).evaluate(events)
    return time.perf_counter() - t0


def announce_compilation() -> None:
    """Say so (a warning) when a fit is about to compile the training kernels."""
    from .trainer import train_steps
    if not _cached(train_steps):
        logger.warning("first run: compiling the CPU kernels with Numba (a minute or more on a "
                       "busy machine; cached for later runs; `gru-engine compile` does it ahead "
                       "of time)")

"""gru_engine: session-based recommendation with recurrent networks (GRU4Rec), framework-free.

``SessionGRU`` is the GRU4Rec model, ``FeatureSessionGRU`` its feature-rich p-RNN variant
(parallel subnets over item features, :mod:`gru_engine.features`); ``gru_engine.baselines``
holds POP, S-POP, Item-KNN and BPR-MF; ``gru_engine.evaluation`` ranks the true next item
against all items for any of them.
"""
from . import numba_cache
from .exceptions import ModelFileError, ModelFitError, NotFittedError

numba_cache.install()  # before any kernel module is imported (numba_cache.py says why)

__version__ = "0.1.0"
__all__ = ["SessionGRU", "FeatureSessionGRU", "ModelFileError", "ModelFitError", "NotFittedError",
           "__version__"]


def __getattr__(name):
    # The models import the kernel modules; import them only when asked for.
    if name == "SessionGRU":
        from .model import SessionGRU
        return SessionGRU
    if name == "FeatureSessionGRU":
        from .feature_model import FeatureSessionGRU
        return FeatureSessionGRU
    raise AttributeError(f"module 'gru_engine' has no attribute {name!r}")

"""Exceptions raised by gru_engine."""


class NotFittedError(ValueError, AttributeError):
    """A model was used (recommend, evaluate, save) before ``fit``."""


class ModelFitError(RuntimeError):
    """Training diverged (NaN or inf loss, an exploding loss or weights); the model is not
    usable. ``epoch``: the epoch that diverged (None when unknown); ``model``: a fitted copy of
    the model with the last good epoch's parameters, or None."""

    def __init__(self, message: str, epoch: int | None = None, model=None):
        super().__init__(message)
        self.epoch = epoch
        self.model = model


class ModelFileError(ValueError):
    """A model file cannot be read (missing, empty, truncated, not a model file, corrupt,
    inconsistent with its header or its class, of a newer format) or written; the message names
    the file and, where one is at fault, the array or header field."""


class MissingExtraError(ImportError):
    """An optional dependency (Optuna, Ray, pyarrow) is needed but not installed; the message
    names the ``pip install "gru_engine[extra]"`` to run."""

"""Exceptions raised by gru_engine."""


class NotFittedError(ValueError, AttributeError):
    """A model was used (recommend, evaluate, save) before ``fit``."""


class ModelFitError(RuntimeError):
    """Training diverged (NaN or inf loss or weights); the model is not usable."""

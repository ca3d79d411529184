"""The CPU backend: Numba kernels of the GRU layer (``gru.py``), the sampled losses
(``losses.py``), the optimiser (``optim.py``) and their float helpers (``mathfuncs.py``); one
training and inference step of any network (``step.py``); the trainer (``trainer.py``)."""
from .trainer import Trainer

__all__ = ["Trainer"]

"""The CUDA backend: one trainer and one scorer for every network of :mod:`gru_engine.network`
(GRU4Rec's single ID subnet in its three input modes, the p-RNN's feature subnets), written once
against :class:`~gru_engine.backends.device.Device`, so they run unchanged on a GPU
(:class:`~gru_engine.backends.device.CupyDevice`) and in the CPU emulator of the tests
(:class:`~gru_engine.backends.device.EmulatedDevice`).

- :class:`Trainer` (``trainer.py``): the session-parallel training step over the flat
  parameters, its CUDA-graph replay, and the epoch loop the estimators drive;
- :class:`Scorer` (``scorer.py``): the evaluator's scorer protocol with device-side ``rank`` and
  ``topk`` (:func:`topk_device`);
- ``net.py``: the network's layout and device parameters, one subnet's forward, the combine step;
- ``user_trainer.py`` / ``user_scorer.py``: the trainer and the scorer of a network with a
  user-level GRU (:mod:`gru_engine.user_level`; user-parallel rows, no CUDA graphs);
- ``output_features.py``: the feature part of the output layer (``output_features=True``):
  the sampled columns' pooled feature rows, their gradient rows and sparse Adagrad, the
  scorer's effective output vectors;
- ``context.py``: the context tables of the context-aware GRU (:mod:`gru_engine.context`) and
  their forward/backward/update hooks, called by the shared forward and the trainer;
- ``ops.py``: the tunables (:data:`BLOCK`, :data:`MAX_GRAPHS`), scratch buffers, and the step's
  network-independent kernels (dropout masks, sampled output layer + fused loss, GRU cell
  backward, dense and sparse Adagrad).

One training step with R rows and C = R + n_sample sampled columns, per active subnet and layer::

    input (row gather | bag gather) [+ mask] -> GEMM x@Wx, bias, GEMM h@Wh, fused cell
    -> combine (nothing for one subnet) -> gather Wy/By[cols] -> GEMM scores, bias
    [-> final act] -> fused loss (+ dS) -> GEMMs dBy/dWy/dh -> per trained subnet and layer:
    fused cell backward, GEMMs dWx/dWh/dx, column sums, table-gradient rows
    -> one dense Adagrad per trained subnet (its range of ``theta``) -> sparse Adagrad
    (claim/combine/update) of its table rows, of ``Wy`` (column-masked when only some subnets
    train) and ``By``

The ID subnet's specialisations are the network's, not separate classes: one-hot input is a row
lookup of layer 0's gate pre-activations (no GEMM, the gradient rows are the gate gradients); an
identity bag (embedding or constrained input) is a row gather whose gradient rows are the input
gradient itself, written straight into ``Wy``'s gradient rows for constrained input; a single
subnet's output is the combined state. Launch counts per step: ``tests/test_cuda_graphs.py``.

CUDA graphs (``use_graphs``, default on a CupyDevice): a full step (R == batch_size, rows
carried) of a given phase (active/trained subnets) runs kernel by kernel the first time; the
second time it is captured once (``Device.capture``: CuPy stream capture on the GPU, a recorded
replay in the emulator) over staging buffers for the step's inputs and a fixed loss slot, and
every later such step is a few input copies, ONE graph launch and one kernel adding the step
loss. Per-step values never reach a captured kernel as a scalar: the dropout step index is a
counter in device memory, R is the graph's, and the table entries of feature bags (whose number
varies with the step's items) are padded to the table's capacity, the padding entries updating
a spare row kept on the device after each bag table, so one graph per phase serves every step.
The shrinking tail of an epoch and steps with fixed test masks run uncaptured; a capture that
fails is logged and training continues kernel by kernel, with the same bits (in the emulator,
graph epochs equal uncaptured epochs bit for bit).
"""
from .ops import BLOCK, MAX_GRAPHS
from .scorer import RANK_MODES, Scorer, topk_device
from .trainer import Trainer

__all__ = ["Trainer", "Scorer", "topk_device", "BLOCK", "MAX_GRAPHS", "RANK_MODES"]

"""The CUDA parity checks of test_cuda_emulated.py, test_cuda_trainer.py and test_cuda_model.py,
run on a real GPU through CupyDevice.

Skipped (with the reason) when CuPy is not installed or sees no CUDA device. The kernel tests
are reused unchanged: :class:`HostMirrorDevice` copies NumPy arguments to the GPU for each
launch and the results back, so each test compares GPU output with the float64 references.
The model tests (``SessionGRU(device='cuda')`` against the Numba CPU path: training steps per
loss / input mode / depth / dropout, a small fit's metrics, device ranking vs the Cython
evaluator, save/load, NaN refusal; the user-level GRU's fits of test_user_cuda.py) run with ``cuda_device`` overridden to a plain CupyDevice.
"""
from __future__ import annotations

import numpy as np
import pytest

from gru_engine.backends.device import CupyDevice, EmulatedDevice, cuda_available

pytestmark = pytest.mark.cuda

pytest.importorskip("cupy", reason="CuPy is not installed (pip install cupy-cuda12x): the GPU "
                    "parity tests need CuPy and an NVIDIA GPU")
if not cuda_available():
    pytest.skip("CuPy sees no CUDA device: the GPU parity tests need an NVIDIA GPU",
                allow_module_level=True)

from test_cuda_emulated import (  # noqa: E402,F401  (collected here against the GPU)
    test_adagrad_dense, test_add_bias, test_column_sum, test_dropout_mask, test_final_act,
    test_gather_rows, test_gru_cell_backward, test_gru_cell_forward, test_loss_kernel,
    test_loss_softmax_is_safe_for_large_scores, test_multiply_inplace, test_rank_targets,
    test_scatter_rows, test_sparse_adagrad, test_topk_device_helper, test_topk_rows,
    test_rank_targets_nan_anywhere_gives_nan)
from test_cuda_trainer import (  # noqa: E402,F401  (the Trainer and Scorer on the GPU)
    test_scorer_matches_reference, test_train_step_every_loss,
    test_train_step_modes_layers_dropout, test_train_step_with_drawn_dropout_masks,
    test_train_step_without_extra_negatives, test_train_step_shrinking_batch_and_final_act)
from test_cuda_model import (  # noqa: E402,F401  (SessionGRU(device='cuda') on the GPU)
    data, fitted_pair, test_training_steps_equal_cpu_every_loss,
    test_training_steps_equal_cpu_inputs_layers_dropout,
    test_epoch_with_resets_shrinking_batch_and_store_redraws_equals_cpu,
    test_fit_metrics_equal_cpu_and_device_ranking_equals_cython,
    test_save_load_cpu_scores_equal_cuda_scores,
    test_nan_in_a_cuda_model_is_refused_by_device_evaluation,
    test_cuda_fit_that_diverges_raises_and_leaves_model_unfitted,
    test_device_auto_uses_the_resolved_device)
from test_user_cuda import (  # noqa: E402,F401  (the user-level GRU on the GPU)
    test_add_inplace, test_select_rows, test_state_grad, test_tanh_rows_backward,
    test_fit_equals_cpu_every_mode_and_input, test_fit_equals_cpu_deeper_sampled_momentum_dropout,
    test_cuda_trained_model_file_loads_and_scores_on_the_cpu, test_device_scorer_equals_cpu_scorer,
    test_session_store_keeps_user_states_of_a_cuda_model)


class HostMirrorDevice(CupyDevice):
    """CupyDevice that accepts NumPy arrays in ``launch``/``copy`` (copied in, results copied
    back), so host-side kernel tests run on the GPU unchanged."""

    def _is_array(self, obj):
        return isinstance(obj, (np.ndarray, self._cp.ndarray))

    def launch(self, kernel, grid, block, args, shared_mem=0):
        dev_args, back = [], []
        for a in args:
            if isinstance(a, np.ndarray):
                d = self._cp.asarray(a)
                dev_args.append(d)
                back.append((a, d))
            else:
                dev_args.append(a)
        super().launch(kernel, grid, block, dev_args, shared_mem)
        for host, d in back:
            host[...] = self._cp.asnumpy(d)

    def copy(self, dst, src):
        super().copy(dst, self._cp.asarray(src))


@pytest.fixture(scope="module")
def dev():
    return HostMirrorDevice()


@pytest.fixture(scope="module")
def cuda_device():
    """The device SessionGRU(device='cuda') resolves to in the model tests."""
    return CupyDevice()


def test_model_resolves_cuda_to_cupy_without_a_fixture():
    from gru_engine.model import _resolve_device
    assert isinstance(_resolve_device("cuda"), CupyDevice)
    assert isinstance(_resolve_device("auto"), CupyDevice)
    assert _resolve_device("cpu") is None


def test_dropout_masks_identical_to_emulator(dev):
    n = 10007
    gpu, emu = np.full(n, np.nan, np.float32), np.full(n, np.nan, np.float32)
    dev.launch("dropout_mask", (n + 255) // 256, 256, [gpu, n, 0.4, 123, None, 0, 5])
    EmulatedDevice().launch("dropout_mask", (n + 255) // 256, 256, [emu, n, 0.4, 123, None, 0, 5])
    np.testing.assert_array_equal(gpu, emu)


@pytest.mark.parametrize("dropout", [False, True])
def test_graph_epochs_equal_uncaptured_on_the_gpu(dropout):
    """The CUDA-graph training step on the real GPU: captured (no fallback) and equal to the
    kernel-by-kernel epochs (cuBLAS may pick another algorithm inside a capture, so equality
    is to float32 rounding, not asserted bitwise as in the emulator)."""
    from test_cuda_graphs import _fit, _sessions
    sessions = _sessions()
    plain, graph = CupyDevice(), CupyDevice()
    l0, p0, _ = _fit(plain, sessions, use_graphs=False, layers=(7, 5), dropout=dropout)
    l1, p1, et = _fit(graph, sessions, use_graphs=True, layers=(7, 5), dropout=dropout)
    assert et.use_graphs, "capture failed on the GPU (see the logged warning)"
    assert graph.stats["graph_launches"] == sum(et.full_steps) - 1
    np.testing.assert_allclose([x[0] for x in l1], [x[0] for x in l0], rtol=1e-5)
    for k in ("theta", "T", "Wy", "By"):
        np.testing.assert_allclose(p1[k], p0[k], rtol=1e-4, atol=1e-6, err_msg=k)


def test_feature_graph_epochs_equal_uncaptured_on_the_gpu():
    """The feature network's graphs (one per phase and token-entry count) on the real GPU."""
    from test_cuda_graphs import _fit, _sessions
    sessions = _sessions()
    kw = dict(features=True, strategy="interleaved", n_epochs=4, loss="cross-entropy")
    l0, p0, _ = _fit(CupyDevice(), sessions, use_graphs=False, **kw)
    graph = CupyDevice()
    l1, p1, et = _fit(graph, sessions, use_graphs=True, **kw)
    assert et.use_graphs and graph.stats["graph_launches"] > 0
    np.testing.assert_allclose([x[0] for x in l1], [x[0] for x in l0], rtol=1e-5)
    for k in ("theta", "T", "Wy", "By"):
        np.testing.assert_allclose(p1[k], p0[k], rtol=1e-4, atol=1e-6, err_msg=k)

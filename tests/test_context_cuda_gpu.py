"""The context-aware GRU's CUDA checks of test_context_cuda.py, run on a real GPU through
CupyDevice.

Skipped (with the reason) when CuPy is not installed or sees no CUDA device. The kernel and
step tests run on :class:`HostMirrorDevice` (NumPy arguments copied to the GPU per launch and
back); the model tests (fits of every context variant against the Numba CPU path, CUDA-graph
replays, device scoring against the CPU scorer through a model file, the session store) with
``cuda_device`` a plain CupyDevice.
"""
from __future__ import annotations

import pytest

from gru_engine.backends.device import cuda_available

pytestmark = pytest.mark.cuda

pytest.importorskip("cupy", reason="CuPy is not installed (pip install cupy-cuda12x): the GPU "
                    "tests of the context-aware GRU need CuPy and an NVIDIA GPU")
if not cuda_available():
    pytest.skip("CuPy sees no CUDA device: the GPU tests of the context-aware GRU need an "
                "NVIDIA GPU", allow_module_level=True)

from test_cuda_gpu import cuda_device, dev  # noqa: E402,F401  (the GPU fixtures)
from test_context_cuda import (  # noqa: E402,F401  (collected here against the GPU)
    cuda_pair, test_concat_gates_equal_the_cpu_bits, test_context_rows_sum,
    test_context_table_grad, test_device_auto_trains_context_on_the_device,
    test_feature_model_fit_with_an_inactive_id_subnet_equals_cpu, test_fits_equal_cpu,
    test_graph_replays_equal_uncaptured_steps, test_recommend_equals_cpu,
    test_scorers_and_evaluate_equal_cpu, test_session_store_on_the_device_answers_as_recommend,
    test_step_gradients_equal_cpu)


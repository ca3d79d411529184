"""The output-feature CUDA checks of test_output_features_cuda.py, run on a real GPU through
CupyDevice.

Skipped (with the reason) when CuPy is not installed or sees no CUDA device. The kernel and
step tests run on :class:`HostMirrorDevice` (NumPy arguments copied to the GPU per launch and
back); the model tests (fits of every strategy against the Numba CPU path, scoring,
recommendations, the session store, add_items and partial_fit on the device) with
``cuda_device`` a plain CupyDevice (CUDA graphs on, as in production).
"""
from __future__ import annotations

import pytest

from gru_engine.backends.device import cuda_available

pytestmark = pytest.mark.cuda

pytest.importorskip("cupy", reason="CuPy is not installed (pip install cupy-cuda12x): the GPU "
                    "tests of output features need CuPy and an NVIDIA GPU")
if not cuda_available():
    pytest.skip("CuPy sees no CUDA device: the GPU tests of output features need an NVIDIA GPU",
                allow_module_level=True)

from test_cuda_gpu import cuda_device, dev  # noqa: E402,F401  (the GPU fixtures)
from test_output_features_cuda import (  # noqa: E402,F401  (collected here against the GPU)
    fitted, record_init, test_add_items_scores_the_new_items_on_the_device,
    test_bag_accumulate, test_device_scores_equal_cpu_scorer,
    test_evaluate_and_recommend_equal_on_the_cpu, test_fits_equal_cpu, test_output_bag_grad,
    test_partial_fit_on_the_device_adds_and_trains_new_items,
    test_session_store_over_a_cuda_model, test_step_gradients_equal_cpu)


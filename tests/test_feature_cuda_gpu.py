"""The FeatureSessionGRU CUDA checks of test_feature_cuda.py, run on a real GPU through
CupyDevice.

Skipped (with the reason) when CuPy is not installed or sees no CUDA device. The kernel and
step tests run on :class:`HostMirrorDevice` (NumPy arguments copied to the GPU per launch and
back); the model tests (fits of every architecture and strategy against the Numba CPU path,
evaluation with device ranking, save/load) with ``cuda_device`` a plain CupyDevice.
"""
from __future__ import annotations

import pytest

from gru_engine.backends.device import cuda_available

pytestmark = pytest.mark.cuda

pytest.importorskip("cupy", reason="CuPy is not installed (pip install cupy-cuda12x): the GPU "
                    "tests of FeatureSessionGRU need CuPy and an NVIDIA GPU")
if not cuda_available():
    pytest.skip("CuPy sees no CUDA device: the GPU tests of FeatureSessionGRU need an NVIDIA GPU",
                allow_module_level=True)

from test_cuda_gpu import cuda_device, dev  # noqa: E402,F401  (the GPU fixtures)
from test_feature_cuda import (  # noqa: E402,F401  (collected here against the GPU)
    fitted_pair, record_init, test_bag_gather, test_bag_offsets_and_grad,
    test_device_scores_equal_cpu_scorer, test_dropout_masks_drawn_on_the_device,
    test_fit_evaluate_equal_cpu_and_device_ranking, test_fixed_dropout_masks_replace_the_drawn_ones,
    test_save_load_keeps_features_and_scores,
    test_scale_add_and_dot_sum, test_sparse_adagrad_masked, test_step_gradients_equal_cpu,
    test_step_gradients_frozen_and_inactive_subnets_equal_cpu, test_strategies_equal_cpu,
    test_training_steps_equal_cpu)


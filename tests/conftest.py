"""Fixtures shared by the CUDA-through-the-emulator model tests (test_cuda_model.py,
test_feature_cuda.py). The real-GPU test modules define their own ``cuda_device``."""
import pytest

from gru_engine import model as model_mod
from gru_engine.backends.device import EmulatedDevice


@pytest.fixture(scope="module")
def cuda_device():
    """The CPU emulator of the CUDA kernels, one per test module."""
    return EmulatedDevice()


@pytest.fixture
def cuda_model(monkeypatch, cuda_device):
    """SessionGRU and FeatureSessionGRU resolve device='cuda' (and 'auto') to ``cuda_device``."""
    monkeypatch.setattr(model_mod, "_resolve_device",
                        lambda name: None if name == "cpu" else cuda_device)
    return cuda_device

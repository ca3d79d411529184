"""Fixtures shared by the CUDA-through-the-emulator model tests (test_cuda_model.py,
test_feature_cuda.py). The real-GPU test modules define their own ``cuda_device``."""
from collections import Counter

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


# ---- kernel coverage: launches per test (read by test_cuda_emulated's coverage check) ---------
KERNEL_LAUNCHES_BY_TEST = {}  # (module name, test function name) -> Counter of kernel launches


@pytest.fixture(autouse=True)
def _record_kernel_launches(request):
    if request.node.get_closest_marker("cuda_emulated") is None:
        yield
        return
    from gru_engine.backends.device import kernel_launch_counts
    before = kernel_launch_counts()
    yield
    key = (request.module.__name__, request.function.__name__)
    KERNEL_LAUNCHES_BY_TEST.setdefault(key, Counter()).update(kernel_launch_counts() - before)


def pytest_collection_modifyitems(items):
    # The coverage check reads what the other tests launched: it runs last (stable sort).
    items.sort(key=lambda item: item.name == "test_every_kernel_is_launched_by_its_test")

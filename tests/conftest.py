"""Fixtures shared by the CUDA-through-the-emulator tests.

Two kinds of emulated test, two sets of emulator checks (gru_engine/backends/emulator.py):

* kernel tests (test_cuda_emulated.py, test_emulator_modes.py, test_cuda_trainer.py's step
  tests and the kernel tests of the extension files, those named in their ``KERNEL_TESTS``)
  launch kernels on an ``EmulatedDevice()``: :data:`~gru_engine.backends.emulator.STRICT`, the
  race detector on (the ThreadSanitizer-instrumented build of each ``.cu``);
* model-level tests (whole fits, evaluation, save/load, resume through the emulated CUDA
  backend, compared with the CPU or another run) run on :func:`model_level_device`:
  :data:`MODEL_CHECKS`, every check but the race detector (barriers, shuffled blocks, poison,
  guard zones stay on; they cost little), on the uninstrumented build, which makes a fit
  about 3-5x faster.

The races of the model-level kernels stay checked: each kernel launched without the race
detector must also be launched under it, with more than one block and more than one thread
per block where the model tests launch it so (test_cuda_emulated.py's
``test_every_model_level_kernel_runs_under_the_race_detector``, from the launches recorded here).
The real-GPU test modules define their own ``cuda_device``.
"""
import dataclasses
from collections import Counter

import numpy as np
import pytest

from gru_engine import model as model_mod
from gru_engine.backends.emulator import EmulatedDevice, EmulatedLibrary, default_checks

# The model-level tests' checks: the default (STRICT, or as GRU_ENGINE_CUDA_EMU_* say) less races.
MODEL_CHECKS = dataclasses.replace(default_checks(), races=False)


def model_level_device(**changes) -> EmulatedDevice:
    """An emulator for model-level tests: :data:`MODEL_CHECKS` with ``changes`` (e.g.
    ``block_order='forward'``)."""
    return EmulatedDevice(dataclasses.replace(MODEL_CHECKS, **changes))


@pytest.fixture(scope="module")
def cuda_device():
    """The CPU emulator of the CUDA kernels for model-level tests, one per test module."""
    return model_level_device()


@pytest.fixture
def cuda_model(monkeypatch, cuda_device):
    """SessionGRU and FeatureSessionGRU resolve device='cuda' (and 'auto') to ``cuda_device``."""
    monkeypatch.setattr(model_mod, "_resolve_device",
                        lambda name: None if name == "cpu" else cuda_device)
    return cuda_device


# ---- kernel coverage: launches per test (read by test_cuda_emulated's coverage checks) --------
KERNEL_LAUNCHES_BY_TEST = {}  # (module name, test function name) -> Counter of kernel launches
# (kernel, race detector on) -> the launch shapes seen, each as (min(blocks, 2), min(threads per
# block, 2)): (2, 2) is a launch of more than one block of more than one thread.
EMULATED_LAUNCH_SHAPES = {}


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


@pytest.fixture(autouse=True, scope="session")
def _record_launch_shapes():
    """Every emulated launch's shape, and whether the race detector watched it."""
    launch = EmulatedLibrary.launch

    def recorded(self, kernel, grid, block, values, shared_mem=0, checks=None):
        races = self.instrumented and (default_checks() if checks is None else checks).races
        EMULATED_LAUNCH_SHAPES.setdefault((kernel, races), set()).add(
            (min(int(np.prod(grid)), 2), min(int(np.prod(block)), 2)))
        return launch(self, kernel, grid, block, values, shared_mem, checks)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(EmulatedLibrary, "launch", recorded)
        yield


def pytest_collection_modifyitems(items):
    # The coverage checks read what the other tests launched: they run last (stable sort).
    items.sort(key=lambda item: item.name in ("test_every_kernel_is_launched_by_its_test",
               "test_every_model_level_kernel_runs_under_the_race_detector"))

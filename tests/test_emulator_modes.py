"""The emulator's GPU-failure modes, proved on deliberately broken kernels.

Each kernel of tests/cuda_fixtures/broken.cu (and racy.cu) has one GPU bug. Run with every check
off (``OFF``: blocks in order, no race detector, no barrier check, zeroed buffers without guard
zones -- the emulator before issue 16) it gives the right answer; run with the one mode named
below it fails (an exception, or a wrong answer). ``STRICT`` (every mode, the default of
``EmulatedDevice`` and of the whole emulated suite) catches every one.

| kernel                   | bug                                      | mode                          | with mode                          | without (OFF) |
|--------------------------|------------------------------------------|-------------------------------|------------------------------------|---------------|
| sum_plain                | missing atomic (out[0] += x, 40x256)     | races                         | raises: data race, global memory   | right sum     |
| running_sum_one_launch   | inter-block dependence in one launch     | block_order=reverse           | wrong values                       | right values  |
| running_sum_one_launch   | inter-block dependence in one launch     | block_order=per_launch, 4 seeds | wrong values (every seed)        | right values  |
| running_sum_one_launch   | inter-block dependence in one launch     | block_order=random, 4 seeds   | wrong values (every seed)          | right values  |
| running_sum_one_launch   | inter-block dependence in one launch     | races                         | raises: data race, different blocks | right values |
| barrier_two_sites        | __syncthreads() at two call sites        | barriers                      | raises: barrier divergence (sites) | right values  |
| barrier_after_return     | barrier skipped after an early return    | barriers                      | raises: barrier divergence (counts) | right values |
| copy_off_by_one          | out-of-bounds write (t <= n)             | guards                        | raises: DeviceMemoryError naming the buffer | right values |
| accumulate               | uninitialised read (empty, not zeros)    | poison                        | NaN values                         | right values  |
| block_sum_racy (racy.cu) | missing __syncthreads() (shared memory)  | races                         | raises: data race, shared memory   | wrong sum (thread shuffle + poisoned shared memory, always on) |

``test_table_matches_the_runs`` recomputes the table from the runs, so it cannot go stale.
"""
from __future__ import annotations

import dataclasses
import functools
import shutil
from pathlib import Path

import numpy as np
import pytest

from gru_engine.backends.device import DeviceMemoryError
from gru_engine.backends.emulator import OFF, STRICT, EmulatedDevice, EmulatedLibrary

pytestmark = [pytest.mark.cuda_emulated,
              pytest.mark.skipif(shutil.which("g++") is None, reason="g++ not found: the CUDA "
                                 "emulator compiles the fixture kernels with g++")]

FIXTURES = Path(__file__).parent / "cuda_fixtures"


@functools.lru_cache(maxsize=None)
def _lib(name):
    return EmulatedLibrary(FIXTURES / name)


def _launch(dev, lib, kernel, grid, block, args):
    lib.launch(kernel, grid, block, args, checks=dev.checks)
    dev.check_guards([a for a in args if isinstance(a, np.ndarray)])


def _out(dev, n, spare=False):
    """An output buffer of the device; with ``spare`` one element more that the kernel is not
    told about, so that an unguarded stray write lands in memory the test owns."""
    return dev.empty(n + 1)[:n] if spare else dev.empty(n)


# ---- the broken kernels: each returns True when the answer is right ---------------------------
def run_missing_atomic(dev):
    n = 40 * 256
    x = dev.to_device(np.ones(n, np.float32))
    out = dev.zeros(1)
    _launch(dev, _lib("broken.cu"), "sum_plain", 40, 256, [x, np.int32(n), out])
    return out[0] == n


def run_inter_block(dev):
    blocks, per = 12, 64
    xh = np.arange(blocks * per, dtype=np.float32) % 7
    x, partial, out = dev.to_device(xh), dev.zeros(blocks), _out(dev, blocks)
    _launch(dev, _lib("broken.cu"), "running_sum_one_launch", blocks, per, [x, partial, out])
    return np.array_equal(out, np.cumsum(xh.reshape(blocks, per).sum(1)))


def run_barrier_two_sites(dev):
    xh = np.arange(64, dtype=np.float32)
    x, out = dev.to_device(xh), _out(dev, 64)
    _launch(dev, _lib("broken.cu"), "barrier_two_sites", 1, 64, [x, out])
    return np.array_equal(out, xh[np.arange(64) ^ 1])


def run_barrier_after_return(dev):
    n = 50
    xh = np.arange(64, dtype=np.float32)
    x, out = dev.to_device(xh), _out(dev, 64)
    out[...] = 0
    _launch(dev, _lib("broken.cu"), "barrier_after_return", 1, 64, [x, np.int32(n), out])
    return np.array_equal(out[:n], xh[(np.arange(n) + 1) % n])


def run_out_of_bounds(dev):
    n = 1000
    xh = np.arange(n, dtype=np.float32)
    x, out = dev.to_device(xh), _out(dev, n, spare=not dev.checks.guards)
    _launch(dev, _lib("broken.cu"), "copy_off_by_one", 4, 256, [x, np.int32(n), out])
    return np.array_equal(out, xh)


def run_uninitialised(dev):
    n = 777
    xh = np.arange(n, dtype=np.float32)
    x, acc = dev.to_device(xh), dev.empty(n)  # BUG of the caller: empty where zeros are needed
    _launch(dev, _lib("broken.cu"), "accumulate", 4, 256, [x, np.int32(n), acc])
    return np.array_equal(acc, xh)


def run_missing_syncthreads(dev):
    xh = np.random.default_rng(0).random((3, 1000)).astype(np.float32)
    x, out = dev.to_device(xh), _out(dev, 3)
    _launch(dev, _lib("racy.cu"), "block_sum_racy", 3, 256, [x, np.int32(1000), out])
    return np.allclose(out, xh.sum(1), rtol=1e-4)


def _only(**mode):
    return dataclasses.replace(OFF, **mode)


# (kernel, bug, mode label, run, checks of the mode(s)); several checks = several block orders.
CASES = [
    ("sum_plain", "missing atomic", "races", run_missing_atomic, [_only(races=True)]),
    ("running_sum_one_launch", "inter-block dependence", "block_order=reverse", run_inter_block,
     [_only(block_order="reverse")]),
    ("running_sum_one_launch", "inter-block dependence", "block_order=per_launch", run_inter_block,
     [_only(block_order="per_launch", seed=s) for s in range(4)]),
    ("running_sum_one_launch", "inter-block dependence", "block_order=random", run_inter_block,
     [_only(block_order="random", seed=s) for s in range(4)]),
    ("running_sum_one_launch", "inter-block dependence", "races", run_inter_block,
     [_only(races=True)]),
    ("barrier_two_sites", "divergent barrier", "barriers", run_barrier_two_sites,
     [_only(barriers=True)]),
    ("barrier_after_return", "divergent barrier", "barriers", run_barrier_after_return,
     [_only(barriers=True)]),
    ("copy_off_by_one", "out-of-bounds write", "guards", run_out_of_bounds, [_only(guards=True)]),
    ("accumulate", "uninitialised read", "poison", run_uninitialised, [_only(poison=True)]),
]
IDS = [f"{c[0]}-{c[2]}" for c in CASES]


def _outcome(run, checks):
    """'right', 'wrong' or 'raises: <first words of the error>'."""
    try:
        return "right" if run(EmulatedDevice(checks)) else "wrong"
    except DeviceMemoryError as exc:
        return f"raises DeviceMemoryError: {exc}"
    except RuntimeError as exc:
        return f"raises: {str(exc).split(': ', 1)[1]}"


@functools.lru_cache(maxsize=None)
def _outcomes(case_index):
    kernel, bug, label, run, modes = CASES[case_index]
    return _outcome(run, OFF), [_outcome(run, m) for m in modes], _outcome(run, STRICT)


@pytest.mark.parametrize("i", range(len(CASES)), ids=IDS)
def test_broken_kernel_passes_without_its_mode(i):
    assert _outcomes(i)[0] == "right", CASES[i][:3]


@pytest.mark.parametrize("i", range(len(CASES)), ids=IDS)
def test_broken_kernel_fails_under_its_mode(i):
    kernel, bug, label, run, modes = CASES[i]
    with_mode = _outcomes(i)[1]
    assert all(o != "right" for o in with_mode), (kernel, label, with_mode)


@pytest.mark.parametrize("i", range(len(CASES)), ids=IDS)
def test_broken_kernel_fails_under_strict(i):
    assert _outcomes(i)[2] != "right", CASES[i][:3]


def test_error_messages_name_the_bug():
    def first(label):
        return _outcomes([c[2] for c in CASES].index(label))[1][0]

    assert "data race on global memory" in _outcomes(0)[1][0]
    assert "thread (" in _outcomes(0)[1][0] and "argument 2 (float32 (1,))" in _outcomes(0)[1][0]
    assert "different blocks of one launch" in _outcomes(4)[1][0]
    assert "two call sites" in _outcomes(5)[1][0] or "barrier divergence" in _outcomes(5)[1][0]
    assert "broken.cu:" in _outcomes(5)[1][0]  # the two __syncthreads() sites by file:line
    assert "times" in _outcomes(6)[1][0]
    oob = first("guards")
    assert "DeviceMemoryError" in oob and "float32 (1000,)" in oob and "after" in oob
    assert "test_emulator_modes.py" in oob  # the allocation site of the overrun buffer
    assert _outcomes(8)[1][0] == "wrong"  # NaN from the poison


def test_missing_syncthreads_in_shared_memory():
    """racy.cu: caught by the race detector; without it still wrong (the thread shuffle and the
    poisoned shared memory are always on)."""
    got = _outcome(run_missing_syncthreads, _only(races=True))
    assert got.startswith("raises: data race on shared memory"), got
    assert _outcome(run_missing_syncthreads, OFF) == "wrong"


def test_correct_twins_pass_under_strict():
    """No false alarm on the correct versions (the whole emulated suite is the larger proof)."""
    dev = EmulatedDevice(STRICT)
    n = 40 * 256
    x, out = dev.to_device(np.ones(n, np.float32)), dev.zeros(1)
    _launch(dev, _lib("broken.cu"), "sum_atomic", 40, 256, [x, np.int32(n), out])
    assert out[0] == n
    xh = np.arange(64, dtype=np.float32)
    x, o = dev.to_device(xh), dev.zeros(64)
    _launch(dev, _lib("broken.cu"), "barrier_uniform", 1, 64, [x, np.int32(50), o])
    np.testing.assert_array_equal(o[:50], xh[(np.arange(50) + 1) % 50])


def test_float_atomics_add_in_launch_order():
    """per_launch block order: a float atomicAdd over blocks (one thread each, as the loss
    kernels' loss_sum) changes in its last bits from launch to launch, as on a GPU; 'random'
    (one permutation per kernel and launch shape) repeats its bits, so two runs of one training
    stay comparable bit for bit. (Within a block the threads are shuffled afresh every launch
    in every mode.)"""
    xh = (np.random.default_rng(1).random(1024) * 1e3).astype(np.float32)

    def sums(checks, times=4):
        dev = EmulatedDevice(checks)
        x, got = dev.to_device(xh), []
        for _ in range(times):
            out = dev.zeros(1)
            _launch(dev, _lib("broken.cu"), "sum_atomic", xh.size, 1, [x, np.int32(xh.size), out])
            got.append(float(out[0]))
        return got

    assert len(set(sums(dataclasses.replace(STRICT, block_order="per_launch")))) > 1
    assert len(set(sums(STRICT))) == 1


def test_table_matches_the_runs():
    rows = {}
    for line in __doc__.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[0] and not cells[0].startswith(("kernel", "-")):
            rows[(cells[0], cells[2].split(",")[0])] = (cells[3], cells[4])
    for i, (kernel, bug, label, run, modes) in enumerate(CASES):
        off, with_mode, _ = _outcomes(i)
        want_with, want_off = rows[(kernel, label)]
        assert want_off.startswith("right") and off == "right", (kernel, label)
        if want_with.startswith("raises"):
            assert all(o.startswith("raises") for o in with_mode), (kernel, label, with_mode)
        else:
            assert all(o == "wrong" for o in with_mode), (kernel, label, with_mode)


# ---- guard zones and poison on CupyDevice (off by default: plain CuPy behaviour) -------------
def _guarded_overrun(device_mod):
    """multiply_inplace told n = 1003 on a buffer of 1000: writes 3 floats past its end."""
    gpu = device_mod.CupyDevice(guards=True, poison=True)
    x = gpu.empty(1000)
    assert np.isnan(gpu.to_host(x)).all()  # poisoned
    x[...] = 1.0
    m = gpu.to_device(np.full(1003, 2.0, np.float32))
    gpu.synchronize()  # clean so far
    gpu.launch("multiply_inplace", 4, 256, [x, m, 1003])
    with pytest.raises(DeviceMemoryError, match=r"after the device buffer float32 \(1000,\) "
                                                r"allocated at test_emulator_modes.py"):
        gpu.synchronize()


def test_cupy_device_guard_zones_on_a_stand_in_cupy(tmp_path, monkeypatch):
    """CupyDevice's guard/poison code path against the stand-in CuPy of test_cuda_emulated
    (kernels in the emulator); without guards it allocates exactly as CuPy does."""
    import sys

    from gru_engine.backends import device as device_mod
    from test_cuda_emulated import _fake_cupy_module
    fake, _ = _fake_cupy_module(tmp_path)
    monkeypatch.setitem(sys.modules, "cupy", fake)
    device_mod.cuda_available.cache_clear()
    device_mod._cupy_module.cache_clear()
    try:
        plain = device_mod.CupyDevice()
        assert plain.empty((4, 5)).nbytes == 80 and plain._alloc is None  # plain CuPy
        _guarded_overrun(device_mod)
    finally:
        device_mod.cuda_available.cache_clear()
        device_mod._cupy_module.cache_clear()


@pytest.mark.cuda
def test_cupy_device_guard_zones_on_the_gpu():
    from gru_engine.backends import device as device_mod
    if not device_mod.cuda_available():
        pytest.skip("needs CuPy and an NVIDIA GPU")
    _guarded_overrun(device_mod)

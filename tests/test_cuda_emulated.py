"""The CUDA kernels (kernels/*.cu), run through the CPU emulator, one test per kernel.

Every kernel output buffer is pre-filled with NaN (an unwritten element fails) and compared with
the float64 references of tests/naive.py on awkward sizes; the emulator runs them under its
checks (race detector, barrier check, shuffled blocks; tests/test_emulator_modes.py proves each
on broken kernels). Each kernel's test is named in KERNEL_TESTS and must launch it (counted
through the device interface). The training step and the scorer: tests/test_cuda_trainer.py.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

import naive as ref
from gru_engine.backends import kernels as K
from gru_engine.backends.cuda import BLOCK, topk_device
from gru_engine.backends.device import get_device
from gru_engine.backends.emulator import OFF, EmulatedDevice, EmulatedLibrary

pytestmark = [pytest.mark.cuda_emulated,
              pytest.mark.skipif(shutil.which("g++") is None, reason="g++ not found: the CUDA "
                                 "emulator compiles kernels/*.cu with g++")]

FIXTURES = Path(__file__).parent / "cuda_fixtures"
RTOL, ATOL = 1e-4, 1e-5

# Every extern "C" __global__ entry point of kernels/*.cu -> the test exercising it here.
KERNEL_TESTS = {
    "gru_cell_forward": "test_gru_cell_forward",
    "gru_cell_backward": "test_gru_cell_backward",
    "gather_rows": "test_gather_rows",
    "scatter_rows": "test_scatter_rows",
    "add_bias": "test_add_bias",
    "column_sum": "test_column_sum",
    "multiply_inplace": "test_multiply_inplace",
    "dropout_mask": "test_dropout_mask",
    "counter_add": "test_dropout_mask",
    "final_act_forward": "test_final_act",
    "final_act_backward": "test_final_act",
    "loss_cross_entropy": "test_loss_kernel",
    "loss_bpr_max": "test_loss_kernel",
    "loss_top1_max": "test_loss_kernel",
    "loss_bpr": "test_loss_kernel",
    "loss_top1": "test_loss_kernel",
    "adagrad_dense": "test_adagrad_dense",
    "sparse_claim": "test_sparse_adagrad",
    "sparse_combine": "test_sparse_adagrad",
    "sparse_adagrad": "test_sparse_adagrad",
    "rank_targets": "test_rank_targets",
    "topk_rows": "test_topk_rows",
}


@pytest.fixture(scope="module")
def dev():
    return EmulatedDevice()


GUARD = 64
_guarded = []


def nan(shape, dtype=np.float32):
    """An output buffer full of NaN (-7 for ints) inside guard zones that must stay untouched."""
    n = int(np.prod(shape))
    base = np.full(n + 2 * GUARD, 7.25e5 if np.dtype(dtype).kind == "f" else -123456789, dtype)
    view = base[GUARD:GUARD + n]
    view[:] = np.nan if np.dtype(dtype).kind == "f" else -7
    _guarded.append(base)
    return view.reshape(shape)


@pytest.fixture(autouse=True)
def _out_of_bounds_writes_fail():
    _guarded.clear()
    yield
    for base in _guarded:
        guards = np.concatenate([base[:GUARD], base[-GUARD:]])
        assert (guards == base[0]).all(), "a kernel wrote outside its output buffer"


def f32(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def close(a, b, rtol=RTOL, atol=ATOL):
    np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=rtol, atol=atol)


def grid(n):
    return max(1, (n + BLOCK - 1) // BLOCK)


# ---- coverage and the emulator itself ------------------------------------------------------
# Test modules holding the KERNEL_TESTS of the other kernel files.
KERNEL_TEST_MODULES = ("test_feature_cuda",  # kernels/features.cu
                       "test_user_cuda",  # kernels/user.cu
                       "test_output_features_cuda",  # kernels/output_features.cu
                       "test_context_cuda")  # kernels/context.cu


def _kernel_test_modules():
    import importlib
    return [importlib.import_module(name) for name in KERNEL_TEST_MODULES]


def test_every_kernel_has_an_emulated_test():
    found = {}
    for path in sorted(K.kernel_dir().glob("*.cu")):
        for name in K.parse_entry_points(path.read_text()):
            found[name] = path.name
    tests = dict(KERNEL_TESTS)
    for module in _kernel_test_modules():
        tests.update(module.KERNEL_TESTS)
        for test in set(module.KERNEL_TESTS.values()):
            assert callable(getattr(module, test, None)), test
    missing = sorted(set(found) - set(tests))
    assert not missing, f"kernels without an emulated test: {missing}"
    assert set(tests) <= set(found), sorted(set(tests) - set(found))
    for test in set(KERNEL_TESTS.values()):
        assert callable(globals().get(test)), test
    assert set(found) == set(K.kernel_index())  # every file is in KERNEL_FILES


def _kernel_tests():
    """(module name, kernel, test name) of every kernel test, and those not run in this session
    (tests/conftest.py records the launches of each test)."""
    import conftest
    expected = [("test_cuda_emulated", k, t) for k, t in KERNEL_TESTS.items()]
    for module in _kernel_test_modules():
        expected += [(module.__name__, k, t) for k, t in module.KERNEL_TESTS.items()]
    ran = conftest.KERNEL_LAUNCHES_BY_TEST
    return expected, sorted({f"{m}::{t}" for m, k, t in expected if (m, t) not in ran})


def test_every_kernel_is_launched_by_its_test():
    """Each test named in the KERNEL_TESTS maps really launches its kernel: launches counted
    through the device interface per test (tests/conftest.py records them; this test runs after
    the others, see pytest_collection_modifyitems there)."""
    import conftest
    expected, not_run = _kernel_tests()
    ran = conftest.KERNEL_LAUNCHES_BY_TEST
    not_launched = [f"{m}::{t} never launched {k}" for m, k, t in expected
                    if (m, t) in ran and ran[(m, t)][k] == 0]
    assert not not_launched, not_launched
    if not_run:
        pytest.skip(f"kernel tests not run in this session: {not_run}")


def test_every_model_level_kernel_runs_under_the_race_detector():
    """The model-level tests run without the race detector (conftest's MODEL_CHECKS); each
    kernel they launch is launched under it (STRICT) too, in this session, with more than one
    block and more than one thread per block wherever a launch without it had more than one
    (runs last, after every other test, as the check above)."""
    import conftest
    shapes = conftest.EMULATED_LAUNCH_SHAPES
    unwatched = {k: s for (k, races), s in shapes.items() if not races and k in K.kernel_index()}
    if not unwatched:
        pytest.skip("no kernel ran without the race detector in this session")
    _, not_run = _kernel_tests()
    if not_run:
        pytest.skip(f"kernel tests not run in this session: {not_run}")
    uncovered = []
    for kernel, seen in sorted(unwatched.items()):
        watched = shapes.get((kernel, True), set())
        for b, t in sorted(seen):
            if not any(wb >= b and wt >= t for wb, wt in watched):
                uncovered.append(f"{kernel}: launched with {'>1' if b > 1 else '1'} block(s) of "
                                 f"{'>1' if t > 1 else '1'} thread(s) only without the race "
                                 f"detector (under it: {sorted(watched)})")
    assert not uncovered, uncovered


@pytest.fixture(scope="module")
def racy_lib():
    return EmulatedLibrary(FIXTURES / "racy.cu")


def _sum_kernel(lib, name, x, block):
    out = nan((x.shape[0],))
    lib.launch(name, x.shape[0], block, [x, np.int32(x.shape[1]), out])
    return out


def test_emulator_block_reduction_correct(racy_lib):
    x = np.random.default_rng(0).random((3, 1000)).astype(np.float32)
    for block in (32, 64, 256, 1024):
        close(_sum_kernel(racy_lib, "block_sum_correct", x, block), x.sum(1, dtype=np.float64))


def test_emulator_catches_missing_syncthreads(racy_lib):
    x = np.random.default_rng(0).random((3, 1000)).astype(np.float32)
    with pytest.raises(RuntimeError, match="data race on shared memory"):
        _sum_kernel(racy_lib, "block_sum_racy", x, 256)
    # Without the race detector the shuffled threads and poisoned shared memory still give a
    # wrong sum.
    out = nan((3,))
    racy_lib.launch("block_sum_racy", 3, 256, [x, np.int32(1000), out], checks=OFF)
    assert not np.allclose(out, x.sum(1), rtol=1e-4), "race between warps went unnoticed"


def test_emulator_partial_warp_shuffle_is_poison(racy_lib):
    # A full-mask shuffle in a block of 100 threads reads lanes that do not exist: undefined on
    # a GPU, NaN here.
    x = np.ones((2, 100), np.float32)
    assert np.isnan(_sum_kernel(racy_lib, "block_sum_correct", x, 100)).all()


def test_emulator_reports_deadlock(racy_lib):
    with pytest.raises(RuntimeError, match="deadlock"):
        racy_lib.launch("divergent_barrier", 1, 32, [nan((32,))])


def test_device_checks_arguments(dev):
    x = np.zeros((4, 3), np.float32)
    with pytest.raises(ValueError, match="dtype"):
        dev.launch("add_bias", 1, 32, [x.astype(np.float64), np.zeros(3, np.float32), 4, 3])
    with pytest.raises(ValueError, match="takes 4 arguments"):
        dev.launch("add_bias", 1, 32, [x, np.zeros(3, np.float32), 4])
    with pytest.raises(ValueError, match="unknown CUDA kernel"):
        dev.launch("no_such_kernel", 1, 32, [])
    with pytest.raises(ValueError, match="overflows"):
        dev.launch("add_bias", 1, 32, [x, np.zeros(3, np.float32), 2 ** 40, 3])


def test_cuda_device_without_gpu_is_a_clear_error():
    from gru_engine.backends.device import cuda_available
    if cuda_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ValueError, match="CuPy"):
        get_device("cuda")


# ---- GRU cell ------------------------------------------------------------------------------
CELL_SHAPES = [(1, 1), (1, 37), (7, 45), (9, 33)]


def _cell_inputs(rng, B, H, dropout):
    reset = (rng.random(B) < 0.4).astype(np.uint8)
    reset[0] = 1 if B > 1 else reset[0]
    mask = None
    if dropout:
        mask = ((rng.random((B, H)) >= 0.3) / 0.7).astype(np.float32)
    h_prev = f32(rng, B, H)
    h_prev[reset == 1] = np.nan  # a reset row must not read its stale state
    gh = f32(rng, B, 3 * H)
    gh[reset == 1] = np.nan
    return f32(rng, B, 3 * H), gh, f32(rng, H), h_prev, reset, mask


@pytest.mark.parametrize("B,H", CELL_SHAPES)
@pytest.mark.parametrize("dropout", [False, True])
def test_gru_cell_forward(dev, B, H, dropout):
    rng = np.random.default_rng(B * 100 + H)
    gx, gh, bhn, hp, reset, mask = _cell_inputs(rng, B, H, dropout)
    out, saved, hpe = nan((B, H)), nan((B, 4 * H)), nan((B, H))
    dev.launch("gru_cell_forward", grid(B * H), BLOCK, [gx, gh, bhn, hp, reset, mask, out, saved, hpe, B, H])
    r_out, r_saved, r_hpe = ref.gru_forward(np.nan_to_num(gx), np.nan_to_num(gh), bhn,
                                            np.nan_to_num(hp), reset, mask)
    close(out, r_out)
    close(saved, r_saved)
    close(hpe, r_hpe)


@pytest.mark.parametrize("B,H", CELL_SHAPES)
@pytest.mark.parametrize("dropout", [False, True])
def test_gru_cell_backward(dev, B, H, dropout):
    rng = np.random.default_rng(B * 100 + H + 1)
    gx, gh, bhn, hp, reset, mask = _cell_inputs(rng, B, H, dropout)
    gh, hp = np.nan_to_num(gh), np.nan_to_num(hp)
    out, saved, hpe = nan((B, H)), nan((B, 4 * H)), nan((B, H))
    dev.launch("gru_cell_forward", grid(B * H), BLOCK, [gx, gh, bhn, hp, reset, mask, out, saved, hpe, B, H])
    dh = f32(rng, B, H)
    d_gx, d_gh = nan((B, 3 * H)), nan((B, 3 * H))
    dev.launch("gru_cell_backward", grid(B * H), BLOCK, [dh, saved, hpe, mask, d_gx, d_gh, B, H])
    r_gx, r_gh = ref.gru_backward(dh, gx, gh, bhn, hp, reset, mask)
    close(d_gx, r_gx)
    close(d_gh, r_gh)


def test_gru_reference_backward_matches_finite_differences():
    rng = np.random.default_rng(5)
    B, H = 3, 4
    gx, gh, bhn, hp = (rng.standard_normal(s) for s in ((B, 3 * H), (B, 3 * H), H, (B, H)))
    reset = np.array([0, 1, 0])
    mask = rng.random((B, H)) * 2
    dh = rng.standard_normal((B, H))
    d_gx, d_gh = ref.gru_backward(dh, gx, gh, bhn, hp, reset, mask)
    f = lambda gx_, gh_: np.sum(dh * ref.gru_forward(gx_, gh_, bhn, hp, reset, mask)[0])
    eps = 1e-6
    for arr, grad, which in ((gx, d_gx, 0), (gh, d_gh, 1)):
        num = np.zeros_like(arr)
        for idx in np.ndindex(arr.shape):
            a1, a2 = arr.copy(), arr.copy()
            a1[idx] += eps
            a2[idx] -= eps
            args1 = (a1, gh) if which == 0 else (gx, a1)
            args2 = (a2, gh) if which == 0 else (gx, a2)
            num[idx] = (f(*args1) - f(*args2)) / (2 * eps)
        if which == 1:  # gh of reset rows is ignored by the forward pass: no gradient there
            num[reset == 1] = grad[reset == 1]
        np.testing.assert_allclose(grad, num, rtol=1e-6, atol=1e-8)


# ---- tensor helpers -----------------------------------------------------------------------
def test_gather_rows(dev):
    rng = np.random.default_rng(1)
    src = f32(rng, 50, 13)
    idx = np.array([3, 3, 49, 0, 7], np.int32)
    bias, scale = f32(rng, 13), f32(rng, 5)
    out = nan((5, 13))
    dev.launch("gather_rows", grid(65), BLOCK, [src, 13, idx, 5, 13, None, None, out, 13])
    close(out, src[idx])
    out = nan((5, 13))
    dev.launch("gather_rows", grid(65), BLOCK, [src, 13, idx, 5, 13, bias, scale, out, 13])
    close(out, src[idx] * scale[:, None] + bias)
    vec = f32(rng, 50)  # width 1 from a vector (By, logq corrections)
    out = nan((5,))
    dev.launch("gather_rows", 1, BLOCK, [vec, 1, idx, 5, 1, None, None, out, 1])
    close(out, vec[idx])


def test_scatter_rows(dev):
    rng = np.random.default_rng(2)
    dst = f32(rng, 9, 7)
    before = dst.copy()
    src = f32(rng, 3, 7)
    idx = np.array([8, 0, 4], np.int32)
    dev.launch("scatter_rows", 1, BLOCK, [src, idx, 3, 7, dst])
    before[idx] = src
    close(dst, before)


def test_add_bias(dev):
    rng = np.random.default_rng(3)
    s, b = f32(rng, 5, 301), f32(rng, 301)
    want = s + b
    dev.launch("add_bias", grid(5 * 301), BLOCK, [s, b, 5, 301])
    close(s, want)


@pytest.mark.parametrize("rows,cols", [(1, 1), (7, 300), (64, 517)])
def test_column_sum(dev, rows, cols):
    a = f32(np.random.default_rng(rows), rows, cols + 5)
    out = nan((cols,))
    flat = a.reshape(-1)[5:]  # columns 5.. of a wider matrix (ld = cols + 5)
    dev.launch("column_sum", grid(cols), BLOCK, [flat, rows, cols + 5, cols, out])
    close(out, a[:, 5:].astype(np.float64).sum(0))


def test_multiply_inplace(dev):
    rng = np.random.default_rng(4)
    x, m = f32(rng, 333), f32(rng, 333)
    want = x.astype(np.float64) * m
    dev.launch("multiply_inplace", grid(333), BLOCK, [x, m, 333])
    close(x, want)


def test_dropout_mask(dev):
    n, p = 20001, 0.3
    m = nan((n,))
    dev.launch("dropout_mask", grid(n), BLOCK, [m, n, p, 7, None, 0, 0])
    np.testing.assert_allclose(np.unique(m), [0.0, 1 / 0.7], rtol=1e-6)
    assert abs((m == 0).mean() - p) < 0.02
    m2 = nan((n,))
    dev.launch("dropout_mask", grid(n), BLOCK, [m2, n, p, 7, None, 0, 0])
    np.testing.assert_array_equal(m, m2)  # deterministic for (seed, stream)
    dev.launch("dropout_mask", grid(n), BLOCK, [m2, n, p, 7, None, 0, 1])
    assert (m != m2).mean() > 0.2  # another stream gives another mask
    # stream = step[0] * stride + offset with the step read from device memory
    step = np.zeros(1, np.uint32)
    dev.launch("counter_add", 1, 1, [step, 3])
    dev.launch("counter_add", 1, 1, [step, 2])
    assert step[0] == 5
    m3 = nan((n,))
    dev.launch("dropout_mask", grid(n), BLOCK, [m3, n, p, 7, step, 4, 3])  # 5 * 4 + 3
    dev.launch("dropout_mask", grid(n), BLOCK, [m2, n, p, 7, None, 0, 23])
    np.testing.assert_array_equal(m3, m2)


@pytest.mark.parametrize("kind,param", [(0, 0.0), (1, 0.0), (2, 0.0), (3, 0.01), (4, 0.5)])
def test_final_act(dev, kind, param):
    rng = np.random.default_rng(kind)
    x = f32(rng, 211)
    x[:3] = [0.0, -0.0, 1e-3]
    y = nan((211,))
    dev.launch("final_act_forward", grid(211), BLOCK, [x, y, 211, kind, param])
    close(y, ref.final_act(kind, x, param))
    dy = f32(rng, 211)
    dx = nan((211,))
    dev.launch("final_act_backward", grid(211), BLOCK, [x, dy, dx, 211, kind, param])
    close(dx, dy * ref.final_act_grad(kind, x, param))


# ---- losses -------------------------------------------------------------------------------
LOSS_CASES = [
    ("cross-entropy", {}), ("cross-entropy", {"logq": True}),
    ("bpr-max", {"bpreg": 0.0, "elu": 0.0}), ("bpr-max", {"bpreg": 1.95, "elu": 0.5}),
    ("top1-max", {}), ("bpr", {}), ("top1", {}),
]
LOSS_SHAPES = [(1, 0), (1, 3), (7, 0), (5, 300), (3, 1000)]


def _launch_loss(dev, name, S, corr, row_mask, scale, opts):
    R, C = S.shape
    row_loss, loss_sum, dS = nan((R,)), np.zeros(1, np.float32), nan((R, C))
    kernel = "loss_" + name.replace("-", "_")
    if name == "cross-entropy":
        args = [S, R, C, corr, row_mask, scale, row_loss, loss_sum, dS]
    elif name == "bpr-max":
        args = [S, R, C, row_mask, scale, opts.get("bpreg", 0.0), opts.get("elu", 0.0),
                row_loss, loss_sum, dS]
    else:
        args = [S, R, C, row_mask, scale, row_loss, loss_sum, dS]
    dev.launch(kernel, R, BLOCK, args)
    return row_loss, loss_sum[0], dS


@pytest.mark.parametrize("name,opts", LOSS_CASES)
@pytest.mark.parametrize("R,n_sample", LOSS_SHAPES)
def test_loss_kernel(dev, name, opts, R, n_sample):
    rng = np.random.default_rng(R * 7 + n_sample)
    C = R + n_sample
    S = f32(rng, R, C, scale=2.0)
    S[:, -1] = S[:, 0]  # ties and duplicates of the positive score
    corr = f32(rng, C) if opts.get("logq") else None
    kw = dict(corr=corr, bpreg=opts.get("bpreg", 0.0), elu=opts.get("elu", 0.0))
    scale = 1.0 / 8
    row_loss, loss_sum, dS = _launch_loss(dev, name, S, corr, None, scale, opts)
    want = ref.loss_rows(name, S, **kw)
    close(row_loss, want, rtol=2e-4)
    close(loss_sum, want.sum() * scale, rtol=2e-4)
    close(dS, ref.loss_grad(name, S, **kw) * scale, rtol=2e-4, atol=1e-6)
    if R > 1:  # inactive rows of a shrunk batch: zero loss and gradient
        row_mask = np.ones(R, np.uint8)
        row_mask[1] = 0
        row_loss, loss_sum, dS = _launch_loss(dev, name, S, corr, row_mask, scale, opts)
        assert row_loss[1] == 0 and not dS[1].any()
        keep = row_mask == 1
        close(row_loss[keep], want[keep], rtol=2e-4)
        close(loss_sum, want[keep].sum() * scale, rtol=2e-4)


@pytest.mark.parametrize("name,opts", LOSS_CASES)
def test_loss_reference_gradient_matches_finite_differences(name, opts):
    rng = np.random.default_rng(11)
    R, C = 3, 7
    S = rng.standard_normal((R, C)) * 1.5
    corr = rng.standard_normal(C) if opts.get("logq") else None
    kw = dict(corr=corr, bpreg=opts.get("bpreg", 0.0), elu=opts.get("elu", 0.0))
    G = ref.loss_grad(name, S, **kw)
    eps = 1e-6
    num = np.zeros_like(S)
    for i, j in np.ndindex(S.shape):
        a, b = S.copy(), S.copy()
        a[i, j] += eps
        b[i, j] -= eps
        num[i, j] = (ref.loss_rows(name, a, **kw)[i] - ref.loss_rows(name, b, **kw)[i]) / (2 * eps)
    np.testing.assert_allclose(G, num, rtol=1e-5, atol=1e-8)


def test_loss_softmax_is_safe_for_large_scores(dev):
    S = np.array([[80.0, 90.0, -50.0, 85.0]], np.float32)
    for name in ("cross-entropy", "bpr-max", "top1-max"):
        row_loss, _, dS = _launch_loss(dev, name, S, None, None, 1.0, {})
        assert np.isfinite(row_loss).all() and np.isfinite(dS).all(), name
        close(row_loss, ref.loss_rows(name, S), rtol=2e-4)


# ---- optimiser ---------------------------------------------------------------------------
@pytest.mark.parametrize("momentum", [0.0, 0.3])
def test_adagrad_dense(dev, momentum):
    rng = np.random.default_rng(6)
    n = 1037
    p, g, acc, v = f32(rng, n), f32(rng, n), np.abs(f32(rng, n)), f32(rng, n)
    want = ref.adagrad(p, g, acc, v, 0.05, momentum)
    dev.launch("adagrad_dense", grid(n), BLOCK, [p, g, acc, v, n, 0.05, momentum])
    for got, w in zip((p, acc, v), want):
        close(got, w)


@pytest.mark.parametrize("W", [1, 13, 300])
@pytest.mark.parametrize("momentum", [0.0, 0.4])
@pytest.mark.parametrize("many_rows", [False, True])  # True: sparse_claim on more than one block
def test_sparse_adagrad(dev, W, momentum, many_rows):
    rng = np.random.default_rng(W)
    N = 40
    idx = np.array([5, 17, 5, 0, 39, 17, 5, 22], np.int32)
    if many_rows:  # rows of one item in both blocks, and items first met in the second block
        idx = np.concatenate([rng.integers(0, N // 2, BLOCK), rng.integers(0, N, 45)])
        idx = idx.astype(np.int32)
    n = len(idx)
    p, acc, v = f32(rng, N, W), np.abs(f32(rng, N, W)), f32(rng, N, W)
    G = f32(rng, n, W)
    want = ref.adagrad_sparse(p, G, idx, acc, v, 0.1, momentum)
    owner = np.full(N, 2 ** 31 - 1, np.int32)
    blk = min(BLOCK, 32 * ((W + 31) // 32))
    dev.launch("sparse_claim", grid(n), BLOCK, [idx, n, owner])
    dev.launch("sparse_combine", n, blk, [G, idx, n, W, owner])
    dev.launch("sparse_adagrad", n, blk, [p, acc, v, G, idx, n, W, owner, 0.1, momentum])
    for got, w in zip((p, acc, v), want):
        close(got, w)  # untouched rows compared exactly too (reference leaves them as they were)
    assert (owner == 2 ** 31 - 1).all(), "owner map must be restored for the next update"


# ---- evaluation --------------------------------------------------------------------------
@pytest.mark.parametrize("mode,code", [("conservative", 0), ("optimistic", 1), ("median", 2)])
@pytest.mark.parametrize("R,N", [(1, 1), (1, 257), (6, 1000)])
def test_rank_targets(dev, mode, code, R, N):
    rng = np.random.default_rng(N)
    S = rng.integers(0, 5, (R, N)).astype(np.float32)  # many ties
    S[0, :N // 3] = -np.inf
    targets = rng.integers(0, N, R).astype(np.int32)
    out = nan((R,))
    dev.launch("rank_targets", R, BLOCK, [S, R, N, targets, code, out])
    close(out, ref.ranks(S, targets, mode), rtol=0, atol=0)


@pytest.mark.parametrize("code", [0, 1, 2])
def test_rank_targets_nan_anywhere_gives_nan(dev, code):
    """A NaN score in a row (target or any other item) makes that row's rank NaN, in every tie
    mode (without the check a NaN elsewhere drops out of both counts and a NaN target gets
    rank 1 in 'standard' mode)."""
    R, N = 4, 600
    S = np.random.default_rng(2).standard_normal((R, N)).astype(np.float32)
    targets = np.array([5, 7, 9, 11], np.int32)
    S[0, 599] = np.nan          # a non-target item
    S[2, 9] = np.nan            # the target itself
    out = nan((R,))
    dev.launch("rank_targets", R, BLOCK, [S, R, N, targets, code, out])
    assert np.isnan(out[[0, 2]]).all() and np.isfinite(out[[1, 3]]).all()
    mode = ("conservative", "optimistic", "median")[code]
    close(out, ref.ranks(S, targets, mode), rtol=0, atol=0)


@pytest.mark.parametrize("R,N,k", [(1, 1, 1), (2, 5, 5), (3, 1000, 20), (2, 3001, 100), (1, 700, 256)])
def test_topk_rows(dev, R, N, k):
    rng = np.random.default_rng(N + k)
    S = rng.integers(-3, 4, (R, N)).astype(np.float32) / 2  # heavy ties
    S[0, rng.integers(0, N, N // 2)] = -np.inf
    if N > 10:
        S[-1, 3] = -0.0
        S[-1, 4] = 0.0
        S[-1, 7] = np.nan
    idx, vals = nan((R, k), np.int32), nan((R, k))
    dev.launch("topk_rows", R, BLOCK, [S, R, N, k, idx, vals], shared_mem=8 * k)
    S_ref = np.where(np.isnan(S), -np.inf, S) + 0.0  # NaN ranks last; -0 == +0
    want_idx, want_vals = ref.topk(S_ref, k)
    np.testing.assert_array_equal(idx, want_idx)
    np.testing.assert_array_equal(vals + 0.0, np.take_along_axis(S, want_idx, 1) + 0.0)


def test_topk_device_helper(dev):
    S = np.array([[1.0, 3.0, 3.0, -np.inf, 2.0]], np.float32)
    idx, vals = topk_device(dev, S, 3)
    np.testing.assert_array_equal(idx, [[1, 2, 4]])
    np.testing.assert_array_equal(vals, [[3.0, 3.0, 2.0]])


# ---- the CupyDevice code path, on a stand-in CuPy ----------------------------------------------
class _FakeCupyArray(np.ndarray):
    """NumPy array posing as cupy.ndarray (only for the CupyDevice plumbing test below)."""


def _fake_cupy_module(tmp_path):
    """A minimal stand-in for the parts of CuPy that CupyDevice uses. RawModule compiles the
    exact source CupyDevice hands to NVRTC (with its ``#line`` prefix) through the emulator;
    a ``numpy.uint64(0)`` in a pointer slot is passed as a null pointer, as CuPy does. Stream
    capture as in CUDA: between ``begin_capture`` and ``end_capture`` of a non-blocking
    ``cuda.Stream``, kernels, ``copyto`` and ``matmul`` are recorded, not run, and
    ``Graph.launch`` replays them; ``cuda.using_allocator(f)`` routes allocations through f."""
    import contextlib
    import types

    state = {"rec": None, "alloc": None}

    def alloc(make, shape, dtype):
        if state["alloc"] is not None:
            state["alloc"](int(np.prod(shape)) * np.dtype(dtype).itemsize)
        return make().view(_FakeCupyArray)

    def run(fn, *args, **kwargs):
        if state["rec"] is not None:
            state["rec"].append((fn, args, kwargs))
            return kwargs.get("out")
        return fn(*args, **kwargs)

    cp = types.ModuleType("cupy")
    as_fake = lambda a: alloc(lambda: np.ascontiguousarray(a), np.shape(a), np.asarray(a).dtype)
    cp.ndarray = _FakeCupyArray
    cp.empty = lambda shape, dtype=np.float32: alloc(lambda: np.empty(shape, dtype), shape, dtype)
    cp.zeros = lambda shape, dtype=np.float32: alloc(lambda: np.zeros(shape, dtype), shape, dtype)
    cp.full = lambda shape, v, dtype=np.float32: alloc(lambda: np.full(shape, v, dtype), shape, dtype)
    cp.asarray = lambda a, dtype=None: as_fake(np.array(a, dtype=dtype, copy=True))  # host->device copies
    cp.ascontiguousarray = as_fake
    cp.asnumpy = lambda a: np.array(a, copy=True).view(np.ndarray)
    cp.copyto = lambda dst, src: run(np.copyto, dst, src)
    cp.matmul = lambda a, b, out=None: run(np.matmul, a, b, out=out)
    compiled = []

    class Graph:
        def __init__(self, ops):
            self.ops = ops

        def launch(self, stream=None):
            for fn, args, kwargs in self.ops:
                fn(*args, **kwargs)

    class Stream:
        def __init__(self, non_blocking=False):
            assert non_blocking, "the legacy default stream cannot capture"

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def begin_capture(self):
            assert state["rec"] is None
            state["rec"] = []

        def end_capture(self):
            ops, state["rec"] = state["rec"], None
            return Graph(ops)

    @contextlib.contextmanager
    def using_allocator(fn):
        state["alloc"] = fn
        try:
            yield
        finally:
            state["alloc"] = None

    class RawModule:
        def __init__(self, code, options=()):
            assert code.startswith('#line 1 "') and "-std=c++17" in options
            path = tmp_path / f"module{len(compiled)}.cu"
            path.write_text(code)
            compiled.append(path)
            # Only the include folders CupyDevice names (as NVRTC, which sees no file beside the
            # source); the temp folder holds no common.cuh, so a missing -I fails the build.
            includes = [o[2:] for o in options if o.startswith("-I")]
            assert includes, "CupyDevice must put kernels/ on the NVRTC include path"
            self.lib = EmulatedLibrary(path, include_dirs=includes)

        def get_function(self, name):
            kinds = self.lib.entry_points[name]

            def call(grid, block, args, shared_mem=0):
                vals = [None if k[0] == "ptr" and isinstance(a, np.uint64) else
                        (a.view(np.ndarray) if isinstance(a, np.ndarray) else a)
                        for a, k in zip(args, kinds)]
                run(self.lib.launch, name, grid, block, vals, shared_mem)
            return call

    cp.RawModule = RawModule
    cp.cuda = types.SimpleNamespace(
        runtime=types.SimpleNamespace(getDeviceCount=lambda: 1),
        Device=lambda i: types.SimpleNamespace(use=lambda: None),
        get_current_stream=lambda: types.SimpleNamespace(synchronize=lambda: None),
        Stream=Stream, using_allocator=using_allocator)
    return cp, compiled


def test_cupy_device_code_path_on_a_stand_in_cupy(tmp_path, monkeypatch):
    """Not a GPU test: CupyDevice's plumbing (source loading with #line and -I, argument
    conversion, null pointers) against a stand-in CuPy whose kernels run in the emulator gives
    what EmulatedDevice gives. The Trainer and Scorer on it: test_cuda_trainer.py."""
    from gru_engine.backends import device as device_mod
    fake, compiled = _fake_cupy_module(tmp_path)
    monkeypatch.setitem(__import__("sys").modules, "cupy", fake)
    device_mod.cuda_available.cache_clear()
    device_mod._cupy_module.cache_clear()
    try:
        gpu = get_device("cuda")
        assert isinstance(gpu, device_mod.CupyDevice)
        rng = np.random.default_rng(8)
        src, idx = f32(rng, 50, 13), np.array([3, 3, 49, 0, 7], np.int32)
        S = f32(rng, 6, 300)
        targets = rng.integers(0, 300, 6).astype(np.int32)
        results = []
        for d in (gpu, EmulatedDevice()):
            out = d.empty((5, 13))
            d.launch("gather_rows", grid(65), BLOCK, [d.to_device(src), 13, d.to_device(idx), 5,
                                                      13, None, None, out, 13])
            rank = d.empty((6,))
            d.launch("rank_targets", 6, BLOCK, [d.to_device(S), 6, 300, d.to_device(targets), 2,
                                                rank])
            results.append((d.to_host(out), d.to_host(rank)))
        assert compiled and all(p.read_text().startswith('#line 1 "') for p in compiled)
        np.testing.assert_array_equal(results[0][0], results[1][0])
        np.testing.assert_array_equal(results[0][1], results[1][1])
        close(results[0][0], src[idx])
    finally:
        device_mod.cuda_available.cache_clear()
        device_mod._cupy_module.cache_clear()

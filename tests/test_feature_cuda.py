"""FeatureSessionGRU on CUDA (backends/cuda over a feature network, kernels/features.cu), run in
the CPU emulator.

The kernels of features.cu are checked against NumPy on awkward sizes; one training step of
the CUDA :class:`Trainer` against the CPU one (loss and every gradient,
with non-trivial previous hidden states and the same fixed dropout masks on both paths) per
architecture / combine mode / input mode / depth / loss; whole fits of every strategy against
the CPU fit (same schedule, same negative samples, no dropout: parameters and losses to float32
tolerance); ``FeatureSessionGRU(device='cuda')`` evaluation, save/load and device resolution.
As in tests/test_cuda_model.py, ``device='cuda'`` resolves to the ``cuda_device`` fixture (an
:class:`EmulatedDevice`; tests/test_feature_cuda_gpu.py runs the same tests on a real GPU).
"""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from gru_engine import params as hp
from gru_engine import model as model_mod
from gru_engine.backends import device as device_mod
from gru_engine.backends.cpu import Trainer as CPUTrainer
from gru_engine.backends.cpu_scoring import Scorer as CPUScorer
from gru_engine.backends.cuda import BLOCK, Scorer, Trainer
from gru_engine.backends.device import EmulatedDevice
from gru_engine.network import (K_DIRECT, L_H, L_HOFF, PARAM_KEYS, S_D0, S_D1, S_IN, S_KIND,
                                S_TAB, S_TCOLS, S_TOFF, S_TROWS, S_XOFF, T_OWN, build_layout)
from gru_engine.data import ItemIndex, build_sessions
from gru_engine.evaluation import evaluate_sessions
from gru_engine.feature_model import FeatureSessionGRU
from gru_engine.features import (CategoricalFeatures, DenseFeatures, TokenFeatures,
                                 encode_item_features)
from gru_engine.model import SessionGRU
from gru_engine.output_features import build as build_output_features
from test_cuda_model import _ScoresOnly  # noqa: E402  (tests/ is on sys.path)
from test_feature_model import N_ITEMS, _features  # noqa: E402

pytestmark = [pytest.mark.cuda_emulated,
              pytest.mark.skipif(shutil.which("g++") is None, reason="g++ not found: the CUDA "
                                 "emulator compiles kernels/*.cu with g++")]

_REAL_RESOLVE = model_mod._resolve_device

# Every entry point of kernels/features.cu -> its test here (checked by
# tests/test_cuda_emulated.py::test_every_kernel_has_an_emulated_test).
KERNEL_TESTS = {
    "bag_gather": "test_bag_gather",
    "bag_offsets": "test_bag_offsets_and_grad",
    "bag_grad": "test_bag_offsets_and_grad",
    "scale_add": "test_scale_add_and_dot_sum",
    "dot_sum": "test_scale_add_and_dot_sum",
    "sparse_adagrad_masked": "test_sparse_adagrad_masked",
}


@pytest.fixture(scope="module")
def dev():
    return EmulatedDevice()


def grid(n):
    return max(1, (n + BLOCK - 1) // BLOCK)


def nan(shape, dtype=np.float32):
    return np.full(shape, np.nan if np.dtype(dtype).kind == "f" else -7, dtype)


def close(a, b, rtol=1e-5, atol=1e-6):
    np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=rtol,
                               atol=atol)


def _csr(rng, n_items, n_rows, max_len):
    """Random bags (some empty, some with repeated rows): int32 indptr/indices, float32 weights."""
    lens = rng.integers(0, max_len + 1, n_items)
    indptr = np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)
    indices = rng.integers(0, n_rows, indptr[-1]).astype(np.int32)
    weights = rng.normal(size=indptr[-1]).astype(np.float32)
    return indptr, indices, weights


# ---- kernels of features.cu ------------------------------------------------------------------
def test_bag_gather(dev):
    rng = np.random.default_rng(0)
    indptr, indices, weights = _csr(rng, 9, 11, 4)
    table = rng.normal(size=(11, 13)).astype(np.float32)
    items = np.array([3, 0, 8, 3, 5, 1, 7], np.int32)
    n, col0, width = len(items), 4, 6
    want = np.zeros((n, width))
    for i, it in enumerate(items):
        for j in range(indptr[it], indptr[it + 1]):
            want[i] += weights[j] * table[indices[j], col0:col0 + width].astype(np.float64)
    out = nan((n, width))
    dev.launch("bag_gather", grid(n * width), BLOCK,
               [table, 13, col0, width, indptr, indices, weights, items, n, None, out])
    close(out, want)
    mask = rng.uniform(0, 2, (n, width)).astype(np.float32)
    out = nan((n, width))
    dev.launch("bag_gather", grid(n * width), BLOCK,
               [table, 13, col0, width, indptr, indices, weights, items, n, mask, out])
    close(out, want * mask)
    # raw values: out[i, indices[j]] += weights[j] (no table)
    raw_idx = rng.integers(0, width, len(indices)).astype(np.int32)
    want = np.zeros((n, width))
    for i, it in enumerate(items):
        for j in range(indptr[it], indptr[it + 1]):
            want[i, raw_idx[j]] += weights[j]
    out = nan((n, width))
    dev.launch("bag_gather", grid(n * width), BLOCK,
               [None, 0, 0, width, indptr, raw_idx, weights, items, n, None, out])
    close(out, want)


@pytest.mark.parametrize("many_rows", [False, True])  # True: bag_grad on more than one block
def test_bag_offsets_and_grad(dev, many_rows):
    rng = np.random.default_rng(1)
    indptr, indices, weights = _csr(rng, 10, 7, 3)
    items = np.array([2, 9, 2, 0, 4, 6], np.int32)
    if many_rows:
        items = rng.integers(0, 10, 45).astype(np.int32)
    n = len(items)
    offs = nan((n + 1,), np.int32)
    dev.launch("bag_offsets", 1, 1, [indptr, items, n, offs])
    lens = indptr[items + 1] - indptr[items]
    np.testing.assert_array_equal(offs, np.concatenate([[0], np.cumsum(lens)]))
    nnz, width, col0, ld = int(lens.sum()), 3, 2, 8
    dx = rng.normal(size=(n, width)).astype(np.float32)
    G, idx = nan((nnz, ld)), nan((nnz,), np.int32)
    dev.launch("bag_grad", grid(n * ld), BLOCK,
               [dx, width, indptr, indices, weights, items, n, offs, col0, ld, G, idx])
    want_G, want_idx = np.zeros((nnz, ld)), []
    e = 0
    for i, it in enumerate(items):
        for j in range(indptr[it], indptr[it + 1]):
            want_G[e, col0:col0 + width] = weights[j] * dx[i].astype(np.float64)
            want_idx.append(indices[j])
            e += 1
    close(G, want_G)
    np.testing.assert_array_equal(idx, want_idx)
    # summed per table row, the entry rows are the gradient of bag_gather's output
    table_grad = np.zeros((7, ld))
    np.add.at(table_grad, idx, G)
    ref = np.zeros((7, width))
    for i, it in enumerate(items):
        for j in range(indptr[it], indptr[it + 1]):
            ref[indices[j]] += weights[j] * dx[i]
    close(table_grad[:, col0:col0 + width], ref)


@pytest.mark.parametrize("n", [1, 37, 1000])
def test_scale_add_and_dot_sum(dev, n):
    rng = np.random.default_rng(n)
    x, y = rng.normal(size=n).astype(np.float32), rng.normal(size=n).astype(np.float32)
    a = np.array([0.7], np.float32)
    out = nan((n,))
    dev.launch("scale_add", grid(n), BLOCK, [out, x, a, n, 0])
    close(out, 0.7 * x.astype(np.float64))
    before = out.copy()
    dev.launch("scale_add", grid(n), BLOCK, [out, y, a, n, 1])
    close(out, before + 0.7 * y.astype(np.float64))
    for block in (32, BLOCK):
        res = nan((1,))
        dev.launch("dot_sum", 1, block, [x, y, n, res])
        close(res[0], x.astype(np.float64) @ y, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("momentum", [0.0, 0.4])
def test_sparse_adagrad_masked(dev, momentum):
    rng = np.random.default_rng(3)
    n_items, W, lr = 9, 5, 0.1
    p = rng.normal(size=(n_items, W)).astype(np.float32)
    acc = rng.uniform(0, 1, (n_items, W)).astype(np.float32)
    vel = rng.normal(size=(n_items, W)).astype(np.float32)
    idx = np.array([4, 1, 4, 7, 1, 2, 7], np.int32)  # rows 0..3 outputs, 4..6 inputs
    n_first = 4
    G = rng.normal(size=(len(idx), W)).astype(np.float32)
    m_first = np.array([1, 1, 0, 1, 0], np.float32)
    m_rest = np.array([0, 0, 1, 1, 0], np.float32)
    want = [a.astype(np.float64) for a in (p, acc, vel)]
    for item in np.unique(idx):
        rows = np.flatnonzero(idx == item)
        g = G[rows].astype(np.float64).sum(0)
        m = m_first if rows[0] < n_first else m_rest
        for c in np.flatnonzero(m):
            a = want[1][item, c] + g[c] ** 2
            want[1][item, c] = a
            step = g[c] / np.sqrt(a + 1e-6)
            if momentum > 0:
                want[2][item, c] = momentum * want[2][item, c] - lr * step
                want[0][item, c] += want[2][item, c]
            else:
                want[0][item, c] -= lr * step
    owner = np.full(n_items, 2 ** 31 - 1, np.int32)
    dev.launch("sparse_claim", 1, BLOCK, [idx, len(idx), owner])
    dev.launch("sparse_combine", len(idx), 32, [G, idx, len(idx), W, owner])
    dev.launch("sparse_adagrad_masked", len(idx), 32,
               [p, acc, vel, G, idx, len(idx), W, owner, n_first, m_first, m_rest, lr,
                momentum])
    for got, ref in zip((p, acc, vel), want):
        close(got, ref)
    assert (owner == 2 ** 31 - 1).all()


# ---- one training step: CUDA trainer vs CPU FeatureTrainer ------------------------------------
STEP_CASES = {
    "parallel-concat-constrained-ce": ("parallel", "concat", "constrained", (5,), (4,),
                                       "cross-entropy"),
    "parallel-concat-onehot-bprmax": ("parallel", "concat", "onehot", (5,), (4,), "bpr-max"),
    "parallel-concat-embedding-2layers": ("parallel", "concat", "embedding", (5, 4), (3, 4),
                                          "cross-entropy"),
    "parallel-sum-constrained-top1max": ("parallel", "sum", "constrained", (5,), (5,),
                                         "top1-max"),
    "parallel-sum-onehot-2layers": ("parallel", "sum", "onehot", (4, 5), (3, 5), "bpr-max"),
    "feature-concat-2layers-ce": ("feature", "concat", "constrained", (5,), (4, 3),
                                  "cross-entropy"),
    "feature-sum-bprmax": ("feature", "sum", "constrained", (5,), (4,), "bpr-max"),
}
KINDS = ["dense", "proj", "cat", "multi", "tok"]


def _step_pair(dev, arch, combine, mode, layers, flayers, loss, B=4, n_sample=3, seed=0,
               output_features=False):
    """A CUDA and a CPU trainer over one network (``output_features``: with output features
    whose rows are non-zero, :mod:`gru_engine.output_features`)."""
    rng = np.random.default_rng(seed)
    enc = encode_item_features(_features(KINDS), ItemIndex(np.arange(N_ITEMS) + 100))
    lay = build_layout(N_ITEMS, arch, combine, mode, list(layers), 3, list(flayers), enc, rng)
    params = {k: lay[k] for k in PARAM_KEYS}
    params["Wy"] *= 3
    params["T"] *= 2
    if output_features:
        params.update(build_output_features(enc, N_ITEMS, lay["Hc"]))
        params["Fy"][...] = rng.normal(size=params["Fy"].shape) * 0.5
        params["Fb"][...] = rng.normal(size=params["Fb"].shape) * 0.5
    params["theta"] += rng.normal(size=params["theta"].shape).astype(np.float32) * 0.1
    support = rng.integers(1, 10, N_ITEMS)
    ce = loss == "cross-entropy"
    hyper = hp.hyper(hp.validate(dict(
        hp.DEFAULTS, loss=loss, logq=1.0 if ce else 0.0, bpreg=0.5 if loss == "bpr-max" else 0.0,
        elu_param=0.5 if loss == "bpr-max" else 0.0, sample_alpha=0.5, learning_rate=0.1,
        batch_size=B, n_sample=n_sample, sample_store_size=100)))
    gpu = Trainer(dev, params, hyper, support, sum_mode=combine == "sum")
    cpu = CPUTrainer({k: v.copy() for k, v in params.items()}, hyper, support,
                     sum_mode=combine == "sum")
    return params, gpu, cpu, rng


def _device_grads(d, tr, params, n_wy, cols):
    """The CUDA trainer's step gradients as full-size host arrays (CPU forward_backward's)."""
    net, SI = tr.net, tr.net.SI
    C = len(cols)
    g = {k: np.zeros_like(params[k]) for k in ("theta", "T", "Wy", "By")}
    gtheta = d.to_host(tr.gtheta)
    for s, sn in enumerate(net.sub):
        if not (tr.active[s] and tr.train[s]):
            continue
        g["theta"][SI[s, S_D0]:SI[s, S_D1]] = gtheta[SI[s, S_D0]:SI[s, S_D1]]
        if SI[s, S_TAB] == T_OWN and s in tr.table_rows:
            rows, cols_t = SI[s, S_TROWS], SI[s, S_TCOLS]
            G, idx, n = tr.table_rows[s]
            GT, iT = d.to_host(G)[:n], d.to_host(idx)[:n]
            block = np.zeros((rows, cols_t), np.float64)
            np.add.at(block, iT, GT)
            g["T"][SI[s, S_TOFF]:SI[s, S_TOFF] + rows * cols_t] = block.ravel()
    G_wy = d.to_host(tr._buf("G_wy", (n_wy, net.Hc))).astype(np.float64)
    idx_wy = d.to_host(tr._buf("idx_wy", (n_wy,), np.int32))
    Wy = np.zeros(g["Wy"].shape)
    np.add.at(Wy, idx_wy, G_wy)
    g["Wy"] = Wy
    By = np.zeros(g["By"].shape)
    np.add.at(By, cols, d.to_host(tr._buf("dBy", (C,))))
    g["By"] = By
    return g


def _cpu_inputs(cpu, rng, B, n_sample):
    """Non-trivial previous hidden states, dropout masks (one factor per row for one-hot ID
    input, as the CPU draws them) and the step's columns / logq corrections."""
    SI, LI, wk = cpu.net.SI, cpu.net.LI, cpu.work
    wk.HP[:] = rng.normal(size=wk.HP.shape) * 0.5
    wk.MK[:] = rng.uniform(0.5, 1.5, size=wk.MK.shape)
    wk.M0f[:] = rng.uniform(0.5, 1.5, size=wk.M0f.shape)
    m0s, mks, hps = [], [], []
    for s in range(SI.shape[0]):
        din = SI[s, S_IN]
        M0 = wk.M0f[B * SI[s, S_XOFF]:B * (SI[s, S_XOFF] + din)].reshape(B, din)
        if SI[s, S_KIND] == K_DIRECT:
            M0[:] = M0[:, :1]
            m0s.append(M0[:, 0].copy())
        else:
            m0s.append(M0.copy())
    for g in range(LI.shape[0]):
        H = LI[g, L_H]
        a, b = B * LI[g, L_HOFF], B * (LI[g, L_HOFF] + H)
        mks.append(wk.MK[a:b].reshape(B, H).copy())
        hps.append(wk.HP[a:b].reshape(B, H).copy())
    in_items = rng.integers(0, N_ITEMS, B).astype(np.int32)
    cols = np.concatenate([rng.integers(0, N_ITEMS, B),
                           rng.integers(0, N_ITEMS, n_sample)]).astype(np.int32)
    cpu.out.lq[:len(cols)] = cpu.log_support[cols]
    cpu.out.lq[B:len(cols)] *= 0.5  # sample_alpha
    return in_items, cols, m0s, mks, hps


def _check_step(d, case, phase=None):
    arch, combine, mode, layers, flayers, loss = STEP_CASES[case]
    B, n_sample = 4, 3
    params, gpu, cpu, rng = _step_pair(d, arch, combine, mode, layers, flayers, loss, B,
                                       n_sample)
    if phase is not None:
        cpu.set_phase(*phase)
        gpu.set_phase(*phase)
    in_items, cols, m0s, mks, hps = _cpu_inputs(cpu, rng, B, n_sample)
    want_loss, want = cpu.forward_backward(in_items, B, cols, len(cols))
    for g, hp_ in enumerate(hps):
        gpu.h[g][:B] = d.to_device(hp_)
    masks = ([d.to_device(m) for m in m0s], [d.to_device(m) for m in mks])
    gpu.loss_sum.fill(0)
    n_wy = gpu.forward_backward(
        d.to_device(in_items), d.to_device(cols[:B]), d.to_device(np.zeros(B, np.uint8)),
        d.to_device(cols[B:]), masks=masks)
    got_loss = gpu.take_loss_sum()
    got = _device_grads(d, gpu, params, n_wy, cols)
    np.testing.assert_allclose(got_loss, want_loss, rtol=1e-5)
    for key in ("theta", "T", "Wy", "By"):
        a, b = got[key], want[key]
        assert np.abs(b).max() > 0, f"{key}: no gradient at all"
        err = np.abs(a - b).max() / np.abs(b).max()
        assert err < 2e-5, f"{key}: relative error {err:.2e}"
    return params, gpu, cpu


@pytest.mark.parametrize("case", sorted(STEP_CASES))
def test_step_gradients_equal_cpu(dev, case):
    _check_step(dev, case)


def test_step_gradients_frozen_and_inactive_subnets_equal_cpu(dev):
    """A residual phase over [id, dense, proj, cat, multi, tok]: the first three frozen, 'cat'
    trained, the last two inactive."""
    phase = ([True, True, True, True, False, False], [False, False, False, True, False, False],
             False, True)
    _check_step(dev, "parallel-concat-constrained-ce", phase)


# ---- whole fits: CUDA vs CPU ------------------------------------------------------------------
def _item_features(n_items, ids, seed=1):
    r = np.random.default_rng(seed)
    words = ["a", "b", "c", "d", "e", "f"]
    return {
        "dense": DenseFeatures(ids, r.normal(size=(n_items, 4))),
        "cat": CategoricalFeatures(ids[:-2], r.integers(0, 3, (n_items - 2, 2)), dim=3),
        "tok": TokenFeatures(ids, [" ".join(r.choice(words, r.integers(0, 4)))
                                   for _ in range(n_items)], dim=3, n_buckets=4),
    }


def _two_step_events(n_rows, n_items, seed):
    """n_rows sessions of 3 clicks: with batch_size=n_rows an epoch is exactly two steps."""
    rng = np.random.default_rng(seed)
    items = rng.integers(0, n_items, 3 * n_rows)
    items[:n_items] = np.arange(n_items)
    return {"SessionId": np.repeat(np.arange(n_rows), 3), "ItemId": items * 3 + 1,
            "Time": np.arange(3 * n_rows, dtype=float)}


def _markov_events(n_sessions, n_items, seed, max_len=6, t0=0.0):
    rng = np.random.default_rng(seed)
    sess, items = [], []
    for s in range(n_sessions):
        it = int(rng.integers(n_items))
        for _ in range(int(rng.integers(2, max_len + 1))):
            sess.append(s)
            items.append(it)
            it = (it + 1 + int(rng.integers(2))) % n_items if rng.random() < 0.85 \
                else int(rng.integers(n_items))
    return {"SessionId": np.array(sess), "ItemId": np.array(items) * 3 + 1,
            "Time": t0 + np.arange(len(sess), dtype=float)}


@pytest.fixture
def record_init(monkeypatch):
    """Copies of the initial parameters of every fit (in fit order)."""
    inits = []
    orig = FeatureSessionGRU._make_trainer

    def recording(self, p, params, *args, **kwargs):
        inits.append({k: np.array(v, copy=True) for k, v in params.items()
                      if isinstance(v, np.ndarray)})
        return orig(self, p, params, *args, **kwargs)
    monkeypatch.setattr(FeatureSessionGRU, "_make_trainer", recording)
    return inits


def _assert_fits_equal(cpu, gpu, init=None, tol=1e-4):
    assert (cpu.device_, gpu.device_) == ("cpu", "cuda")
    for key in ("SI", "LI", "indptr", "indices", "weights"):
        np.testing.assert_array_equal(gpu.params_[key], cpu.params_[key])
    for key in ("theta", "T", "Wy", "By"):
        a, b = gpu.params_[key], cpu.params_[key]
        assert a.dtype == np.float32 and isinstance(a, np.ndarray) and a.shape == b.shape, key
        if init is not None:
            a0 = init[key]
            assert np.abs(b - a0).max() > 0, f"{key} was not updated"
            d_err = np.abs((a - a0) - (b - a0)).max() / np.abs(b - a0).max()
            assert d_err < 1e-3, f"{key}: relative error of the update {d_err:.2e}"
        err = np.abs(a - b).max() / np.abs(b).max()
        assert err < tol, f"{key}: relative error {err:.2e}"
    np.testing.assert_allclose(gpu.loss_history_, cpu.loss_history_, rtol=1e-5)


BASE = dict(batch_size=6, n_sample=5, sample_store_size=50, n_epochs=1, learning_rate=0.05,
            momentum=0.3, random_state=11)
FIT_CASES = {
    "parallel-concat-ce": dict(architecture="parallel", combine="concat", layers=[5],
                               feature_layers=[3], loss="cross-entropy", logq=1.0),
    "parallel-sum-2layers-bprmax": dict(architecture="parallel", combine="sum", layers=[4, 5],
                                        feature_layers=[5], loss="bpr-max", bpreg=0.5,
                                        elu_param=0.5),
    "parallel-onehot-top1max": dict(architecture="parallel", combine="concat", layers=[5],
                                    feature_layers=[3, 4], loss="top1-max",
                                    constrained_embedding=False, final_act="elu-1"),
    "parallel-embedding": dict(architecture="parallel", combine="concat", layers=[5],
                               feature_layers=[3], constrained_embedding=False, embedding=4),
    "feature-concat-2layers": dict(architecture="feature", combine="concat", layers=[5],
                                   feature_layers=[4, 3], loss="bpr-max", bpreg=1.0),
    "parallel-no-negatives": dict(architecture="parallel", combine="concat", layers=[5],
                                  feature_layers=[3], n_sample=0, loss="cross-entropy"),
    "feature-sum": dict(architecture="feature", combine="sum", layers=[5], feature_layers=[4],
                        loss="cross-entropy", logq=1.0, sample_alpha=0.75),
}


@pytest.mark.parametrize("case", sorted(FIT_CASES))
def test_training_steps_equal_cpu(cuda_model, record_init, case):
    kw = {**BASE, **FIT_CASES[case]}
    data = _two_step_events(kw["batch_size"], 12, seed=3)
    feats = _item_features(12, np.arange(12) * 3 + 1)
    cpu = FeatureSessionGRU(**kw, device="cpu").fit(data, item_features=feats)
    gpu = FeatureSessionGRU(**kw, device="cuda").fit(data, item_features=feats)
    assert len(record_init) == 2
    for key in ("theta", "T", "Wy", "By"):
        np.testing.assert_array_equal(record_init[0][key], record_init[1][key])
    _assert_fits_equal(cpu, gpu, record_init[0])


@pytest.mark.parametrize("strategy,combine,loss", [
    ("alternating", "concat", "bpr-max"), ("residual", "concat", "top1-max"),
    ("interleaved", "sum", "cross-entropy"), ("simultaneous", "concat", "cross-entropy")])
def test_strategies_equal_cpu(cuda_model, record_init, strategy, combine, loss):
    """Four epochs over resets, a shrinking last batch and sample-store redraws: the phase of
    every epoch (and of every step under interleaved) follows the CPU plan."""
    kw = dict(layers=[5], batch_size=5, n_sample=4, sample_store_size=12, n_epochs=4,
              learning_rate=0.05, momentum=0.3, random_state=3, architecture="parallel",
              combine=combine, feature_layers=[5] if combine == "sum" else [3],
              strategy=strategy, loss=loss, bpreg=0.5, elu_param=0.5)
    data = _markov_events(30, 15, seed=2)
    feats = _item_features(15, np.arange(15) * 3 + 1)
    cpu = FeatureSessionGRU(**kw, device="cpu").fit(data, item_features=feats)
    gpu = FeatureSessionGRU(**kw, device="cuda").fit(data, item_features=feats)
    _assert_fits_equal(cpu, gpu, record_init[0])
    if strategy == "residual":  # later subnets stayed untouched until their block of epochs
        assert cpu.loss_history_[0] != cpu.loss_history_[-1]


def test_id_architecture_is_sessiongru_on_cuda(cuda_model):
    kw = dict(BASE, layers=[5], n_epochs=2, loss="bpr-max", bpreg=0.5)
    data = _markov_events(20, 10, seed=4)
    feat = FeatureSessionGRU(**kw, architecture="id", device="cuda").fit(data)
    plain = SessionGRU(**kw, device="cuda").fit(data)
    assert feat.device_ == "cuda" and isinstance(feat.scorer(), Scorer)
    for key in ("Wy", "By"):  # bit for bit in the emulator; a GPU's atomics may reorder sums
        np.testing.assert_allclose(feat.params_[key], plain.params_[key], rtol=1e-5, atol=1e-7)


def test_dropout_masks_drawn_on_the_device(cuda_model):
    """With dropout the device draws its own masks (as the ID-only CUDA path): a fit is
    reproducible (bit for bit in the emulator; a GPU's atomics may reorder sums), differs from
    the fit without dropout and stays finite."""
    kw = dict(BASE, layers=[5], feature_layers=[3], n_epochs=2, dropout_p_embed=0.3,
              dropout_p_hidden=0.4)
    data = _markov_events(20, 10, seed=5)
    feats = _item_features(10, np.arange(10) * 3 + 1)
    a = FeatureSessionGRU(**kw, device="cuda").fit(data, item_features=feats)
    b = FeatureSessionGRU(**kw, device="cuda").fit(data, item_features=feats)
    c = FeatureSessionGRU(**{**kw, "dropout_p_embed": 0.0, "dropout_p_hidden": 0.0},
                          device="cuda").fit(data, item_features=feats)
    for key in ("theta", "T", "Wy"):
        np.testing.assert_allclose(a.params_[key], b.params_[key], rtol=1e-5, atol=1e-7)
        assert np.isfinite(a.params_[key]).all()
        assert np.abs(a.params_[key] - c.params_[key]).max() > 1e-4, key


def test_fixed_dropout_masks_replace_the_drawn_ones(cuda_model, monkeypatch):
    """Trainer.fix_dropout_masks (the test hook): masks of ones under dropout_p > 0 give exactly
    the fit without dropout (the CPU's)."""
    make = FeatureSessionGRU._make_trainer

    def make_fixed(self, p, *args, **kwargs):
        trainer = make(self, p, *args, **kwargs)
        if p["device"] == "cuda":
            B, net = p["batch_size"], trainer.net
            trainer.fix_dropout_masks(
                [np.ones(B if sn.kind == K_DIRECT else (B, sn.din)) for sn in net.sub],
                [np.ones((B, h)) for h in net.LI[:, L_H]])
        return trainer
    monkeypatch.setattr(FeatureSessionGRU, "_make_trainer", make_fixed)
    kw = dict(BASE, layers=[5], feature_layers=[3], n_epochs=2, constrained_embedding=False)
    data = _markov_events(20, 10, seed=5)
    feats = _item_features(10, np.arange(10) * 3 + 1)
    gpu = FeatureSessionGRU(**kw, dropout_p_embed=0.5, dropout_p_hidden=0.5,
                            device="cuda").fit(data, item_features=feats)
    cpu = FeatureSessionGRU(**kw, device="cpu").fit(data, item_features=feats)
    _assert_fits_equal(cpu, gpu)


# ---- fit, evaluate, save/load ---------------------------------------------------------------
FIT = dict(layers=[16], feature_layers=[8], batch_size=16, n_sample=24, sample_store_size=2000,
           n_epochs=2, learning_rate=0.1, momentum=0.1, random_state=5, loss="cross-entropy",
           logq=1.0, architecture="parallel")


@pytest.fixture(scope="module")
def fitted_pair(cuda_device):
    """(CPU model, CUDA model, test events) fitted once for the module (not to be modified)."""
    train, test = _markov_events(150, 60, seed=7), _markov_events(50, 60, seed=8, t0=1e6)
    feats = _item_features(60, np.arange(60) * 3 + 1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(model_mod, "_resolve_device",
                   lambda name: None if name == "cpu" else cuda_device)
        yield (FeatureSessionGRU(**FIT, device="cpu").fit(train, item_features=feats),
               FeatureSessionGRU(**FIT, device="cuda").fit(train, item_features=feats), test)


def test_fit_evaluate_equal_cpu_and_device_ranking(fitted_pair):
    cpu, gpu, test = fitted_pair
    _assert_fits_equal(cpu, gpu)
    assert isinstance(gpu.scorer(), Scorer)
    assert isinstance(cpu.scorer(), CPUScorer)
    r_cpu, r_gpu = cpu.evaluate(test, cutoffs=(5, 20)), gpu.evaluate(test, cutoffs=(5, 20))
    assert r_cpu["n_events"] == r_gpu["n_events"] > 100
    assert r_cpu["recall@20"] > 0.5  # the fit learned something
    for key in ("recall@5", "recall@20", "mrr@20"):
        assert abs(r_gpu[key] - r_cpu[key]) <= 0.01 * r_cpu[key], (key, r_gpu[key], r_cpu[key])
    sessions, _, _ = build_sessions(test, gpu.item_index_)
    on_device = evaluate_sessions(gpu.scorer(), sessions, cutoffs=(1, 5, 20), batch_size=17,
                                  by_position=False)
    cython = evaluate_sessions(_ScoresOnly(gpu.scorer()), sessions, cutoffs=(1, 5, 20),
                               batch_size=17, by_position=False)
    for key in cython:
        if key != "seconds":
            assert on_device[key] == cython[key], key


def test_device_scores_equal_cpu_scorer(fitted_pair):
    _, gpu, _ = fitted_pair
    dev_sc = gpu.scorer()
    cpu_sc = CPUScorer(gpu.params_, False)
    rows, items = np.array([0, 2, 1]), np.array([3, 7, 7])
    for sc in (dev_sc, cpu_sc):
        sc.begin(3)
    for t, new in enumerate(([True] * 3, [False, True, False])):
        want = cpu_sc.score(rows, items + t, np.array(new)).copy()
        got = dev_sc.score(rows, items + t, np.array(new))
        close(got, want, rtol=1e-4, atol=1e-5)
    idx, vals = dev_sc.topk(rows, items, np.array([False] * 3), 4)
    want = cpu_sc.score(rows, items, np.array([False] * 3))
    close(vals, np.sort(want, axis=1)[:, ::-1][:, :4], rtol=1e-4, atol=1e-5)
    assert gpu.scorer().net is dev_sc.net  # device parameters uploaded once per model


def test_save_load_keeps_features_and_scores(fitted_pair, tmp_path):
    _, gpu, _ = fitted_pair
    path = tmp_path / "feature_gpu.npz"
    gpu.save(path)
    loaded = FeatureSessionGRU.load(path)
    assert isinstance(loaded.scorer(), CPUScorer)  # a loaded model scores on the CPU
    assert loaded.subnet_names_ == gpu.subnet_names_
    assert loaded.feature_info_ == gpu.feature_info_
    for key in PARAM_KEYS:
        np.testing.assert_array_equal(loaded.params_[key], gpu.params_[key])
    ids = gpu.item_index_.ids
    sessions = [[ids[1], ids[2], ids[3]], [ids[5]], [ids[7], ids[7]]]
    np.testing.assert_allclose(loaded.predict_next(sessions), gpu.predict_next(sessions),
                               rtol=1e-4, atol=1e-5)


# ---- device resolution --------------------------------------------------------------------------
def test_device_cuda_without_gpu_is_a_clear_error_and_auto_falls_back(monkeypatch):
    monkeypatch.setattr(model_mod, "_resolve_device", _REAL_RESOLVE)
    monkeypatch.setattr(device_mod, "cuda_available", lambda: False)
    data = _markov_events(20, 10, seed=6)
    feats = _item_features(10, np.arange(10) * 3 + 1)
    kw = dict(BASE, layers=[5], feature_layers=[3])
    m = FeatureSessionGRU(**kw, device="cuda")
    with pytest.raises(ValueError, match="CuPy and an NVIDIA GPU"):
        m.fit(data, item_features=feats)
    assert not hasattr(m, "device_")
    m = FeatureSessionGRU(**kw, device="auto").fit(data, item_features=feats)
    assert m.device_ == "cpu" and isinstance(m.scorer(), CPUScorer)


def test_device_auto_uses_the_resolved_device(cuda_model):
    data = _markov_events(20, 10, seed=6)
    m = FeatureSessionGRU(**dict(BASE, layers=[5], feature_layers=[3]), device="auto")
    m.fit(data, item_features=_item_features(10, np.arange(10) * 3 + 1))
    assert m.device_ == "cuda" and isinstance(m.scorer(), Scorer)


def test_real_device_resolution_on_a_stand_in_cupy(tmp_path, monkeypatch):
    """Not a GPU test: with a stand-in CuPy whose kernels run in the emulator (see
    test_cuda_emulated), the unpatched resolution gives FeatureSessionGRU(device='cuda') a
    CupyDevice, and its fit and scores through CupyDevice's plumbing match the CPU path."""
    import sys
    from test_cuda_emulated import _fake_cupy_module
    fake, _ = _fake_cupy_module(tmp_path)
    monkeypatch.setattr(model_mod, "_resolve_device", _REAL_RESOLVE)
    monkeypatch.setitem(sys.modules, "cupy", fake)
    device_mod.cuda_available.cache_clear()
    device_mod._cupy_module.cache_clear()
    try:
        kw = dict(BASE, layers=[5], feature_layers=[5], combine="sum", n_epochs=2)
        data = _markov_events(20, 10, seed=9)
        feats = _item_features(10, np.arange(10) * 3 + 1)
        gpu = FeatureSessionGRU(**kw, device="cuda").fit(data, item_features=feats)
        cpu = FeatureSessionGRU(**kw, device="cpu").fit(data, item_features=feats)
        assert isinstance(gpu.scorer().dev, device_mod.CupyDevice)
        _assert_fits_equal(cpu, gpu)
        sessions = [[1, 4, 7], [10]]
        close(gpu.predict_next(sessions), cpu.predict_next(sessions), rtol=1e-4, atol=1e-5)
    finally:
        device_mod.cuda_available.cache_clear()
        device_mod._cupy_module.cache_clear()

"""Output features (FeatureSessionGRU(output_features=True)) on the CUDA backend
(backends/cuda/output_features.py, kernels/output_features.cu), run in the CPU emulator.

The two kernels against NumPy on awkward sizes; one training step of the CUDA trainer against
the CPU one (loss and every gradient, the feature rows' included, with non-zero feature rows);
whole fits of every strategy and combine mode against the CPU fit (same schedule and negative
samples, no dropout: parameters, ``Fy``/``Fb`` included, to float32 tolerance), CUDA graphs on
equal to off bit for bit; a fitted model's evaluation, recommendations, session store,
``add_items`` and ``partial_fit`` on the device against the CPU scorer of the same parameters;
a CUDA-trained model file scores on the CPU. ``device='cuda'`` resolves to the ``cuda_device``
fixture (an :class:`EmulatedDevice`; tests/test_output_features_cuda_gpu.py runs the same tests
on a real GPU).
"""
from __future__ import annotations

import copy
import functools
import shutil

import numpy as np
import pytest

from conftest import model_level_device
from gru_engine import model as model_mod
from gru_engine.backends import cuda as cuda_mod
from gru_engine.backends.cpu_scoring import Scorer as CPUScorer
from gru_engine.backends.cuda import BLOCK, Scorer, Trainer
from gru_engine.feature_model import FeatureSessionGRU
from gru_engine.network import PARAM_KEYS
from gru_engine.output_features import OUTPUT_KEYS, effective_output
from gru_engine.serving import SessionStore
from test_feature_cuda import (_cpu_inputs, _device_grads, _item_features, _markov_events,
                               _step_pair, close, dev, grid, record_init)  # noqa: F401

pytestmark = [pytest.mark.cuda_emulated,
              pytest.mark.skipif(shutil.which("g++") is None, reason="g++ not found: the CUDA "
                                 "emulator compiles kernels/*.cu with g++")]

_REAL_RESOLVE = model_mod._resolve_device

# Every entry point of kernels/output_features.cu -> its test here (checked by
# tests/test_cuda_emulated.py::test_every_kernel_has_an_emulated_test).
KERNEL_TESTS = {
    "bag_accumulate": "test_bag_accumulate",
    "output_bag_grad": "test_output_bag_grad",
}


def _bags(rng, n_items, n_rows, max_len):
    """Random output bags (some empty, some with a row twice): int32 CSR, float32 weights."""
    lens = rng.integers(0, max_len + 1, n_items)
    lens[0] = max_len
    indptr = np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)
    indices = rng.integers(0, n_rows, indptr[-1]).astype(np.int32)
    if indptr[-1] >= 2:
        indices[1] = indices[0]
    return indptr, indices, rng.normal(size=indptr[-1]).astype(np.float32)


# ---- kernels ----------------------------------------------------------------------------------
@pytest.mark.parametrize("col0,width,ld,out_ld", [(0, 7, 8, 7), (7, 1, 8, 1), (2, 33, 40, 35)])
def test_bag_accumulate(dev, col0, width, ld, out_ld):
    rng = np.random.default_rng(width)
    n_items, n_rows, n = 13, 9, 11
    indptr, indices, weights = _bags(rng, n_items, n_rows, 4)
    F = rng.normal(size=(n_rows, ld)).astype(np.float32)
    items = rng.integers(0, n_items, n).astype(np.int32)
    items[:2] = [0, 0]  # a repeated item
    out = rng.normal(size=(n, out_ld)).astype(np.float32)
    want = out.astype(np.float64)
    for i, it in enumerate(items):
        for j in range(indptr[it], indptr[it + 1]):
            want[i, :width] += weights[j] * F[indices[j], col0:col0 + width]
    dev.launch("bag_accumulate", grid(n * width), BLOCK,
               [F, ld, col0, width, indptr, indices, weights, items, n, out, out_ld])
    close(out, want)
    assert np.isfinite(out).all()


@pytest.mark.parametrize("Hc,max_bag", [(5, 3), (33, 1), (6, 4)])
def test_output_bag_grad(dev, Hc, max_bag):
    rng = np.random.default_rng(Hc)
    n_items, n_rows, n = 10, 7, 9
    indptr, indices, weights = _bags(rng, n_items, n_rows, max_bag)
    items = rng.integers(0, n_items, n).astype(np.int32)
    items[:2] = [0, 0]
    gW = rng.normal(size=(n, Hc)).astype(np.float32)
    gb = rng.normal(size=n).astype(np.float32)
    G = np.full((n * max_bag + 3, Hc + 1), np.nan, np.float32)  # rows past the layout: untouched
    idx = np.full(n * max_bag + 3, -7, np.int32)
    spare0 = 100
    dev.launch("output_bag_grad", grid(n * max_bag * (Hc + 1)), BLOCK,
               [gW, gb, Hc, indptr, indices, weights, items, n, max_bag, spare0, G, idx])
    want_G = np.zeros((n * max_bag, Hc + 1))
    want_idx = np.zeros(n * max_bag, np.int64)
    for c, it in enumerate(items):
        for s in range(max_bag):
            e = c * max_bag + s
            j = indptr[it] + s
            if j < indptr[it + 1]:
                want_G[e] = weights[j] * np.append(gW[c], gb[c])
                want_idx[e] = indices[j]
            else:
                want_idx[e] = spare0 + c
    close(G[:n * max_bag], want_G)
    np.testing.assert_array_equal(idx[:n * max_bag], want_idx)
    assert np.isnan(G[n * max_bag:]).all() and (idx[n * max_bag:] == -7).all()


# ---- one training step: CUDA vs CPU -------------------------------------------------------------
@pytest.mark.parametrize("arch,combine,loss", [("parallel", "concat", "cross-entropy"),
                                               ("parallel", "sum", "bpr-max"),
                                               ("feature", "concat", "top1-max")])
def test_step_gradients_equal_cpu(dev, arch, combine, loss):
    B, n_sample = 4, 3
    params, gpu, cpu, rng = _step_pair(dev, arch, combine, "constrained", (5,), (5,), loss, B,
                                       n_sample, output_features=True)
    in_items, cols, m0s, mks, hps = _cpu_inputs(cpu, rng, B, n_sample)
    cols[1] = cols[B] = cols[0]  # a target repeated among the targets and the samples
    cpu.out.lq[:len(cols)] = cpu.log_support[cols]  # their logq corrections, as _cpu_inputs
    cpu.out.lq[B:len(cols)] *= 0.5
    want_loss, want = cpu.forward_backward(in_items, B, cols, len(cols))
    for g, h in enumerate(hps):
        gpu.h[g][:B] = dev.to_device(h)
    gpu.loss_sum.fill(0)
    n_wy = gpu.forward_backward(
        dev.to_device(in_items), dev.to_device(cols[:B]), dev.to_device(np.zeros(B, np.uint8)),
        dev.to_device(cols[B:]), masks=([dev.to_device(m) for m in m0s],
                                        [dev.to_device(m) for m in mks]))
    got = _device_grads(dev, gpu, params, n_wy, cols)
    of = gpu.output_features
    G = dev.to_host(gpu._buf("G_of", (gpu.n_of, of.W))).astype(np.float64)
    idx = dev.to_host(gpu._buf("idx_of", (gpu.n_of,), np.int32))
    assert gpu.n_of == len(cols) * of.max_bag
    assert (idx[idx >= of.n_rows] < of.n_rows + len(cols)).all()
    F = np.zeros((of.F.shape[0], of.W))
    np.add.at(F, idx, G)
    assert not F[of.n_rows:].any()  # padding slots are zero rows of the spare rows
    got["Fy"], got["Fb"] = F[:of.n_rows, :-1], F[:of.n_rows, -1]
    np.testing.assert_allclose(gpu.take_loss_sum(), want_loss, rtol=1e-5)
    for key in ("theta", "T", "Wy", "By", "Fy", "Fb"):
        a, b = got[key], want[key]
        assert np.abs(b).max() > 0, f"{key}: no gradient at all"
        err = np.abs(a - b).max() / np.abs(b).max()
        assert err < 2e-5, f"{key}: relative error {err:.2e}"


# ---- whole fits: CUDA vs CPU ------------------------------------------------------------------
TRAINED = ("theta", "T", "Wy", "By", "Fy", "Fb")


def _assert_fits_equal(cpu, gpu, init, tol=1e-4):
    assert (cpu.device_, gpu.device_) == ("cpu", "cuda")
    for key in ("oindptr", "oindices", "oweights"):
        np.testing.assert_array_equal(gpu.params_[key], cpu.params_[key])
    for key in TRAINED:
        a, b, a0 = gpu.params_[key], cpu.params_[key], init[key]
        assert a.dtype == np.float32 and a.shape == b.shape, key
        assert np.abs(b - a0).max() > 0, f"{key} was not updated"
        err = np.abs((a - a0) - (b - a0)).max() / np.abs(b - a0).max()
        assert err < tol, f"{key}: relative error of the update {err:.2e}"
    np.testing.assert_allclose(gpu.loss_history_, cpu.loss_history_, rtol=1e-5)


KW = dict(layers=[5], batch_size=5, n_sample=4, sample_store_size=12, learning_rate=0.05,
          momentum=0.3, random_state=3, output_features=True, n_threads=1)


@pytest.mark.parametrize("arch,strategy,combine,loss", [
    ("parallel", "simultaneous", "concat", "cross-entropy"),
    ("parallel", "alternating", "sum", "bpr-max"),
    ("parallel", "residual", "concat", "top1-max"),
    ("feature", "interleaved", "concat", "cross-entropy")])
def test_fits_equal_cpu(cuda_model, record_init, arch, strategy, combine, loss):
    """Four epochs over resets, a shrinking last batch and sample-store redraws; the residual
    strategy updates only the trained subnet's output block of ``Fy`` (the bias always)."""
    kw = dict(KW, n_epochs=4, architecture=arch, strategy=strategy, combine=combine, loss=loss,
              feature_layers=[5] if combine == "sum" else [3], bpreg=0.5, elu_param=0.5,
              logq=1.0 if loss == "cross-entropy" else 0.0)
    data = _markov_events(30, 15, seed=2)
    feats = _item_features(15, np.arange(15) * 3 + 1)
    cpu = FeatureSessionGRU(**kw, device="cpu").fit(data, item_features=feats)
    gpu = FeatureSessionGRU(**kw, device="cuda").fit(data, item_features=feats)
    assert len(record_init) == 2
    for key in TRAINED:
        np.testing.assert_array_equal(record_init[0][key], record_init[1][key])
    _assert_fits_equal(cpu, gpu, record_init[0])


def test_cuda_graphs_equal_uncaptured_bit_for_bit(monkeypatch, record_init):
    """CUDA graphs forced on in the emulator (blocks in a fixed order): the same bits as the
    kernel-by-kernel fit, with graph replays, and the CPU fit's parameters."""
    kw = dict(KW, n_epochs=3, feature_layers=[3], loss="bpr-max", bpreg=0.5)
    data = _markov_events(40, 15, seed=4)
    feats = _item_features(15, np.arange(15) * 3 + 1)
    fits = []
    for graphs in (False, True):
        device = model_level_device(block_order="forward")
        monkeypatch.setattr(model_mod, "_resolve_device",
                            lambda name, d=device: None if name == "cpu" else d)
        monkeypatch.setattr(cuda_mod, "Trainer", functools.partial(Trainer, use_graphs=graphs))
        fits.append(FeatureSessionGRU(**kw, device="cuda").fit(data, item_features=feats))
        assert (device.stats["graph_launches"] > 0) == graphs
    for key in TRAINED:
        np.testing.assert_array_equal(fits[0].params_[key], fits[1].params_[key], err_msg=key)
    assert fits[0].loss_history_ == fits[1].loss_history_
    cpu = FeatureSessionGRU(**kw, device="cpu").fit(data, item_features=feats)
    _assert_fits_equal(cpu, fits[1], record_init[0])


# ---- a fitted model: scoring, new items, files ------------------------------------------------
FIT = dict(layers=[16], feature_layers=[8], batch_size=16, n_sample=24, sample_store_size=2000,
           n_epochs=2, learning_rate=0.1, momentum=0.1, random_state=5, loss="cross-entropy",
           logq=1.0, architecture="parallel", output_features=True, n_threads=1)
HELD = np.arange(50, 60) * 3 + 1  # items absent from training, known by their features


@pytest.fixture(scope="module")
def fitted(cuda_device):
    """(CPU model, CUDA model, test events, item features): fitted once without the items
    HELD (not to be modified)."""
    train, test = _markov_events(150, 60, seed=7), _markov_events(50, 60, seed=8, t0=1e6)
    keep = ~np.isin(train["ItemId"], HELD)
    train = {k: v[keep] for k, v in train.items()}
    feats = _item_features(60, np.arange(60) * 3 + 1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(model_mod, "_resolve_device",
                   lambda name: None if name == "cpu" else cuda_device)
        yield (FeatureSessionGRU(**FIT, device="cpu").fit(train, item_features=feats),
               FeatureSessionGRU(**FIT, device="cuda").fit(train, item_features=feats), test,
               feats)


def _on_cpu(model, tmp_path, name):
    """The model saved and loaded: the same parameters, scored by the CPU."""
    path = tmp_path / f"{name}.npz"
    model.save(path)
    loaded = FeatureSessionGRU.load(path)
    assert isinstance(loaded.scorer(), CPUScorer)
    return loaded


def test_device_scores_equal_cpu_scorer(fitted):
    cpu, gpu, _, _ = fitted
    for key in TRAINED:  # the fits agree
        err = np.abs(gpu.params_[key] - cpu.params_[key]).max() / np.abs(cpu.params_[key]).max()
        assert err < 1e-4, (key, err)
    dev_sc, cpu_sc = gpu.scorer(), CPUScorer(gpu.params_, False)
    assert isinstance(dev_sc, Scorer)
    Wy, By = dev_sc.net.scoring_output()
    want_W, want_b = effective_output(gpu.params_)
    close(dev_sc.dev.to_host(Wy), want_W, rtol=1e-5, atol=1e-6)
    close(dev_sc.dev.to_host(By), want_b, rtol=1e-5, atol=1e-6)
    assert np.abs(want_W - gpu.params_["Wy"]).max() > 1e-3  # the features' part counts
    rows, items = np.array([0, 2, 1]), np.array([3, 7, 7])
    for sc in (dev_sc, cpu_sc):
        sc.begin(3)
    for t, new in enumerate(([True] * 3, [False, True, False])):
        want = cpu_sc.score(rows, items + t, np.array(new)).copy()
        close(dev_sc.score(rows, items + t, np.array(new)), want, rtol=1e-4, atol=1e-5)


def test_evaluate_and_recommend_equal_on_the_cpu(fitted, tmp_path):
    _, gpu, test, _ = fitted
    loaded = _on_cpu(gpu, tmp_path, "gpu")
    for key in OUTPUT_KEYS + PARAM_KEYS:
        np.testing.assert_array_equal(loaded.params_[key], gpu.params_[key])
    r_dev, r_cpu = gpu.evaluate(test, cutoffs=(5, 20)), loaded.evaluate(test, cutoffs=(5, 20))
    assert r_dev["n_events"] == r_cpu["n_events"] > 100 and r_cpu["recall@20"] > 0.3
    for key in ("recall@5", "recall@20", "mrr@5", "mrr@20"):
        assert r_dev[key] == pytest.approx(r_cpu[key], abs=1e-9), key
    ids = gpu.item_index_.ids
    for session in ([ids[1], ids[2], ids[3]], [ids[5]], [ids[7], ids[7]]):
        a, sa = gpu.recommend(session, k=10)
        b, sb = loaded.recommend(session, k=10)
        np.testing.assert_array_equal(a, b)
        close(sa, sb, rtol=1e-4, atol=1e-5)


def test_session_store_over_a_cuda_model(fitted):
    _, gpu, _, _ = fitted
    store = SessionStore(gpu)
    assert store.cuda
    ids = gpu.item_index_.ids
    clicks = [ids[1], ids[2], ids[3]]
    for t, item in enumerate(clicks):
        got = store.step(["u"], [item], k=10)
        want, _ = gpu.recommend(clicks[:t + 1], k=10)
        np.testing.assert_array_equal(got.items[0], want)


def test_add_items_scores_the_new_items_on_the_device(fitted, cuda_model, tmp_path):
    cpu, gpu, _, feats = fitted
    m = copy.deepcopy(gpu)  # a copy to grow (the fixture stays)
    n0 = m.n_items_
    new = m.add_items(feats)
    assert set(HELD) <= set(new) and m.n_items_ == n0 + len(new)
    sc = m.scorer()
    assert isinstance(sc, Scorer) and sc.n_items == m.n_items_
    session = [int(m.item_index_.ids[1]), int(m.item_index_.ids[2])]
    recs, scores = m.recommend(session, k=m.n_items_)
    assert set(HELD) & set(recs[:30].tolist())  # new items are recommended
    on_cpu = _on_cpu(m, tmp_path, "grown")
    want_recs, want_scores = on_cpu.recommend(session, k=m.n_items_)
    np.testing.assert_array_equal(recs[:20], want_recs[:20])
    close(scores, want_scores, rtol=1e-4, atol=1e-5)
    # the CPU-trained model grown the same way gives the same new items, scored alike
    c = FeatureSessionGRU.load(_save(cpu, tmp_path, "cpu"))
    np.testing.assert_array_equal(c.add_items(feats), new)
    np.testing.assert_array_equal(c.params_["oindptr"], m.params_["oindptr"])


def test_partial_fit_on_the_device_adds_and_trains_new_items(fitted, cuda_model, tmp_path):
    _, gpu, test, feats = fitted
    m = copy.deepcopy(gpu)
    n0 = m.n_items_
    fy0 = m.params_["Fy"].copy()
    m.partial_fit(_markov_events(60, 60, seed=9), item_features=feats, n_epochs=1)
    assert m.device_ == "cuda" and m.n_items_ > n0 and set(HELD) <= set(m.item_index_.ids)
    assert np.any(m.params_["Wy"][n0:] != 0) and np.any(m.params_["Fy"] != fy0)
    assert isinstance(m.scorer(), Scorer)
    assert np.isfinite(m.evaluate(test, cutoffs=(20,))["recall@20"])


def _save(model, tmp_path, name="copy"):
    path = tmp_path / f"{name}.npz"
    model.save(path)
    return path


def test_cupy_device_path_on_a_stand_in_cupy(tmp_path, monkeypatch, record_init):
    """Not a GPU test: with a stand-in CuPy whose kernels run in the emulator (see
    test_cuda_emulated), FeatureSessionGRU(output_features=True, device='cuda') gets a
    CupyDevice (CUDA graphs on by default): its fit, add_items and scores through CupyDevice's
    plumbing match the CPU path."""
    import sys
    from gru_engine.backends import device as device_mod
    from test_cuda_emulated import _fake_cupy_module
    fake, _ = _fake_cupy_module(tmp_path)
    monkeypatch.setattr(model_mod, "_resolve_device", _REAL_RESOLVE)
    monkeypatch.setitem(sys.modules, "cupy", fake)
    device_mod.cuda_available.cache_clear()
    device_mod._cupy_module.cache_clear()
    try:
        kw = dict(KW, n_epochs=2, feature_layers=[3], loss="cross-entropy", logq=1.0)
        data = _markov_events(30, 15, seed=9)
        keep = ~np.isin(data["ItemId"], [43])
        data = {k: v[keep] for k, v in data.items()}
        feats = _item_features(15, np.arange(15) * 3 + 1)
        gpu = FeatureSessionGRU(**kw, device="cuda").fit(data, item_features=feats)
        cpu = FeatureSessionGRU(**kw, device="cpu").fit(data, item_features=feats)
        _assert_fits_equal(cpu, gpu, record_init[0])
        for m in (gpu, cpu):
            np.testing.assert_array_equal(m.add_items(feats), [43])
        assert isinstance(gpu.scorer().dev, device_mod.CupyDevice)
        sessions = [[1, 4, 7], [10, 43]]
        close(gpu.predict_next(sessions), cpu.predict_next(sessions), rtol=1e-4, atol=1e-5)
    finally:
        device_mod.cuda_available.cache_clear()
        device_mod._cupy_module.cache_clear()

"""The context-aware GRU (gru_engine.context) on the CUDA backend (kernels/context.cu,
backends/cuda/context.py), run in the CPU emulator.

The kernels of context.cu against float64 NumPy and bit for bit against the CPU backend's Numba
kernels; one training step of the CUDA trainer against the CPU one (loss and every gradient,
context tables included, with random non-zero tables, shared context rows, non-trivial states
and the same dropout masks) per input mode and context variant; whole fits against the CPU
fit (no dropout: parameters, tables and losses to float32 tolerance) for each variant (concat,
multiply, output multiply, a categorical column, a FeatureSessionGRU whose ID subnet is off in
some epochs; crops and drops of augmented sessions); CUDA-graph replays equal to uncaptured
steps bit for bit; and scoring on the device (``evaluate``, ``recommend(times=, now=)``,
``SessionStore``) against the CPU scorer of the same parameters, through a model file. As in tests/test_cuda_model.py, ``device='cuda'``
resolves to the ``cuda_device`` fixture (tests/test_context_cuda_gpu.py: a real GPU).
"""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from gru_engine import params as hp
from gru_engine.backends.cpu import Trainer as CPUTrainer
from gru_engine.backends.cpu.context_step import (_row_sums, context_input_backward,
                                                  context_input_gates, make_ctx)
from gru_engine.backends.cuda import BLOCK, Trainer
from gru_engine.backends.cuda.ops import grid
from gru_engine.backends.device import EmulatedDevice
from gru_engine.context import config, table_widths
from gru_engine.context_scoring import ContextScorer, DeviceContextScorer
from gru_engine.feature_model import FeatureSessionGRU
from gru_engine.features import CategoricalFeatures
from gru_engine.model import SessionGRU
from gru_engine.network import PARAM_KEYS, build_layout
from test_context import (  # noqa: E402  (tests/ is on sys.path)
    T0, _mixed_data, _type_data, check_store_answers_as_recommend)
from test_feature_cuda import _cpu_inputs, _device_grads  # noqa: E402
from test_feature_model import N_ITEMS  # noqa: E402

pytestmark = [pytest.mark.cuda_emulated,
              pytest.mark.skipif(shutil.which("g++") is None, reason="g++ not found: the CUDA "
                                 "emulator compiles kernels/*.cu with g++")]

# Every entry point of kernels/context.cu -> its test here (checked by
# tests/test_cuda_emulated.py::test_every_kernel_has_an_emulated_test).
KERNEL_TESTS = {
    "context_rows_sum": "test_context_rows_sum",
    "context_table_grad": "test_context_table_grad",
}


@pytest.fixture(scope="module")
def dev():
    return EmulatedDevice()


def _rows(rng, R, sizes):
    """(R, F) int32 table rows, feature f's in its own range; rows 0 and 2 share theirs."""
    off = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    rows = (rng.integers(0, min(sizes), (R, len(sizes))) + off).astype(np.int32)
    rows[2] = rows[0]
    return rows


# ---------------------------------------------------------------------------------------------
# kernels
# ---------------------------------------------------------------------------------------------
def test_context_rows_sum(dev):
    rng = np.random.default_rng(0)
    sizes, R, W = (5, 3, 4), 11, 37
    table = rng.normal(size=(sum(sizes), W)).astype(np.float32)
    rows = _rows(rng, R, sizes)
    want = table.astype(np.float64)[rows].sum(axis=1)
    # base 1, written: the modulation 1 + sum, bit for bit the CPU kernel's
    out = np.full((R, W), np.nan, np.float32)
    dev.launch("context_rows_sum", grid(R * W), BLOCK, [table, W, rows, R, 3, 1.0, 0, out, W])
    np.testing.assert_allclose(out, 1.0 + want, rtol=1e-5, atol=1e-6)
    cpu = np.zeros((R, W), np.float32)
    _row_sums(table, rows, R, cpu, 1.0)
    np.testing.assert_array_equal(out, cpu)
    # accumulated into the first W of out_ld columns (the concat gates), the rest untouched
    ld = W + 5
    gx = rng.normal(size=(R, ld)).astype(np.float32)
    out = gx.copy()
    dev.launch("context_rows_sum", grid(R * W), BLOCK, [table, W, rows, R, 3, 0.0, 1, out, ld])
    np.testing.assert_allclose(out[:, :W], gx[:, :W] + want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(out[:, W:], gx[:, W:])


def _cpu_ctx(cin, table, rows, R):
    ctx = make_ctx((cin, 0), table.copy(), np.zeros((0, 1), np.float32), R,
                   np.zeros((0, rows.shape[1]), np.int32), np.zeros((0, 1), np.int32))
    ctx.rin[:] = rows
    return ctx


@pytest.mark.parametrize("multiply", [False, True])
def test_context_table_grad(dev, multiply):
    rng = np.random.default_rng(1)
    sizes, R, W = (6, 2, 3), 9, 29
    rows = _rows(rng, R, sizes)
    D = rng.normal(size=(R, W)).astype(np.float32)
    raw = rng.normal(size=(R, W)).astype(np.float32) if multiply else None
    want = np.zeros((sum(sizes), W))
    for i in range(R):
        for f in range(len(sizes)):
            want[rows[i, f]] += D[i] * (raw[i] if multiply else 1.0)
    G = rng.normal(size=(sum(sizes), W)).astype(np.float32)
    G0 = G.copy()
    dev.launch("context_table_grad", grid(3 * W), BLOCK, [D, raw, rows, R, 3, W, G])
    np.testing.assert_allclose(G, G0 + want, rtol=1e-5, atol=1e-5)
    # from zero: bit for bit the CPU kernel's gradient
    G = np.zeros((sum(sizes), W), np.float32)
    dev.launch("context_table_grad", grid(3 * W), BLOCK, [D, raw, rows, R, 3, W, G])
    ctx = _cpu_ctx(2 if multiply else 1, np.zeros((sum(sizes), W), np.float32), rows, R)
    if multiply:
        ctx.xraw[:] = raw
    context_input_backward(ctx, D.copy(), R)
    np.testing.assert_array_equal(G, ctx.gin)


def test_concat_gates_equal_the_cpu_bits(dev):
    rng = np.random.default_rng(2)
    sizes, R, W = (4, 7), 6, 15
    table = rng.normal(size=(sum(sizes), W)).astype(np.float32)
    rows = _rows(rng, R, sizes)
    gx = rng.normal(size=(R, W)).astype(np.float32)
    out = gx.copy()
    dev.launch("context_rows_sum", grid(R * W), BLOCK, [table, W, rows, R, 2, 0.0, 1, out, W])
    cpu = gx.copy()
    context_input_gates(_cpu_ctx(1, table, rows, R), cpu, R)
    np.testing.assert_array_equal(out, cpu)


# ---------------------------------------------------------------------------------------------
# one training step: every gradient against the CPU trainer
# ---------------------------------------------------------------------------------------------
STEP_CASES = {  # input mode, layers, context_input, context_output, context_transition, loss
    "onehot-concat": ("onehot", [5], "concat", "none", "none", "cross-entropy"),
    "onehot-multiply-out": ("onehot", [5], "multiply", "multiply", "none", "bpr-max"),
    "embedding-multiply": ("embedding", [5, 4], "multiply", "none", "none", "cross-entropy"),
    "embedding-concat-out": ("embedding", [4], "concat", "multiply", "none", "top1-max"),
    "constrained-multiply-out": ("constrained", [5], "multiply", "multiply", "none",
                                 "cross-entropy"),
    "constrained-out": ("constrained", [4, 3], "none", "multiply", "none", "bpr-max"),
    "constrained-transition": ("constrained", [5, 3], "none", "none", "multiply",
                               "cross-entropy"),
    "onehot-concat-transition": ("onehot", [4], "concat", "multiply", "multiply", "bpr-max"),
}


@pytest.mark.parametrize("case", sorted(STEP_CASES))
def test_step_gradients_equal_cpu(dev, case):
    mode, layers, cin, cout, ctr, loss = STEP_CASES[case]
    B, n_sample, sizes_in, sizes_out = 4, 3, (4, 3), (5,)
    rng = np.random.default_rng(len(case))
    lay = build_layout(N_ITEMS, "id", "concat", mode, list(layers), 3, list(layers), [], rng)
    params = {k: lay[k] for k in PARAM_KEYS}
    params["Wy"] *= 3
    params["theta"] += rng.normal(size=params["theta"].shape).astype(np.float32) * 0.1
    p = dict(context_input=cin, context_output=cout, context_transition=ctr)
    on = {"context_in": cin != "none", "context_out": cout != "none",
          "context_h": ctr != "none"}
    widths = dict(zip(on, table_widths(p, lay)))
    rows = {"context_in": sum(sizes_in), "context_out": sum(sizes_out),
            "context_h": sum(sizes_in)}
    tables = {k: rng.normal(0, 0.5, (rows[k] if on[k] else 0, widths[k])).astype(np.float32)
              for k in on}
    support = rng.integers(1, 10, N_ITEMS)
    hyper = hp.hyper(hp.validate(dict(
        hp.DEFAULTS, loss=loss, logq=1.0 if loss == "cross-entropy" else 0.0, bpreg=0.5,
        elu_param=0.5, sample_alpha=0.5, batch_size=B, n_sample=n_sample,
        sample_store_size=100)))
    F_in = len(sizes_in) if on["context_in"] or on["context_h"] else 0
    F_out = len(sizes_out) if on["context_out"] else 0

    def ctx():
        return make_ctx(config(p), tables["context_in"].copy(), tables["context_out"].copy(),
                        B, np.zeros((0, F_in), np.int32), np.zeros((0, F_out), np.int32),
                        Ch=tables["context_h"].copy())
    cpu = CPUTrainer({k: v.copy() for k, v in params.items()}, hyper, support, context=ctx())
    gpu = Trainer(dev, params, hyper, support, sum_mode=False, context=ctx())
    rin, rout = _rows(rng, B, sizes_in), _rows(rng, B, sizes_out)
    cpu.cx.rin[:, :F_in] = rin[:, :F_in]
    cpu.cx.rout[:, :F_out] = rout[:, :F_out]
    gpu.context.set_rows(rin, rout)
    in_items, cols, m0s, mks, hps = _cpu_inputs(cpu, rng, B, n_sample)
    want_loss, want = cpu.forward_backward(in_items, B, cols, len(cols))
    for g, hp_ in enumerate(hps):
        gpu.h[g][:B] = dev.to_device(hp_)
    masks = ([dev.to_device(m) for m in m0s], [dev.to_device(m) for m in mks])
    gpu.loss_sum.fill(0)
    n_wy = gpu.forward_backward(
        dev.to_device(in_items), dev.to_device(cols[:B]), dev.to_device(np.zeros(B, np.uint8)),
        dev.to_device(cols[B:]), masks=masks)
    np.testing.assert_allclose(gpu.take_loss_sum(), want_loss, rtol=1e-5)
    got = _device_grads(dev, gpu, params, n_wy, cols)
    got.update(gpu.context.grads())
    keys = ["theta", "Wy", "By"] + ["T"] * (mode != "constrained") + [k for k in on if on[k]]
    for key in keys:
        a, b = got[key], want[key]
        assert np.abs(b).max() > 0, f"{key}: no gradient at all"
        err = np.abs(a - b).max() / np.abs(b).max()
        assert err < 2e-5, f"{key}: relative error {err:.2e}"


# ---------------------------------------------------------------------------------------------
# fits: CUDA against CPU
# ---------------------------------------------------------------------------------------------
BASE = dict(layers=[6], n_epochs=2, batch_size=8, n_sample=5, sample_store_size=60,
            learning_rate=0.1, momentum=0.3, n_threads=1, random_state=3)
FIT_CASES = {
    "concat-onehot": dict(context_input="concat", constrained_embedding=False),
    "concat-constrained": dict(context_input="concat", context_time=["gap", "hour"]),
    "multiply-embedding": dict(context_input="multiply", constrained_embedding=False,
                               embedding=4, layers=[5, 4], loss="bpr-max", bpreg=0.5),
    "multiply-onehot": dict(context_input="multiply", constrained_embedding=False,
                            loss="top1-max", final_act="elu-1"),
    "output-multiply": dict(context_output="multiply", momentum=0.0),
    "column-concat-output": dict(context_input="concat", context_output="multiply",
                                 context_columns=["Type"]),
    "column-only-multiply": dict(context_input="multiply", context_time=[],
                                 context_columns=["Type"], logq=1.0),
    "transition": dict(context_transition="multiply", layers=[6, 4]),
    "transition-column-all": dict(context_input="concat", context_output="multiply",
                                  context_transition="multiply", context_columns=["Type"],
                                  constrained_embedding=False, embedding=4),
}
TRAINED = ("theta", "T", "Wy", "By", "context_in", "context_out", "context_h")
FIT_SESSIONS = 60  # 257 events of the first 60 sessions: resets, a shrinking last batch


def _assert_fits_equal(cpu, gpu, tol=2e-5, same_device=False):
    assert same_device or (cpu.device_, gpu.device_) == ("cpu", "cuda")
    for key in TRAINED:
        a, b = gpu.params_[key], cpu.params_[key]
        assert isinstance(a, np.ndarray) and a.dtype == np.float32 and a.shape == b.shape, key
        if b.size == 0 or (key == "T" and cpu.subnet_names_ == ["id"]
                           and cpu.input_mode_ == "constrained"):
            continue  # a side without context / the ID subnet's input is Wy itself
        assert np.abs(b).max() > 0, f"{key} was never updated"
        err = np.abs(a - b).max() / np.abs(b).max()
        assert err < tol, f"{key}: relative error {err:.2e}"
    np.testing.assert_allclose(gpu.loss_history_, cpu.loss_history_, rtol=1e-5)


@pytest.mark.parametrize("case", sorted(FIT_CASES))
def test_fits_equal_cpu(cuda_model, case):
    kw = {**BASE, **FIT_CASES[case]}
    data = _mixed_data(n_sessions=FIT_SESSIONS)
    cpu = SessionGRU(**kw).fit(data)
    gpu = SessionGRU(**kw, device="cuda").fit(data)
    _assert_fits_equal(cpu, gpu)


@pytest.mark.parametrize("case", ["transition-column-all", "column-only-multiply"])
def test_augmented_fits_equal_cpu(cuda_model, case):
    """Crops and drops redrawn every epoch: each kept click trains with its own context rows
    on the device as on the CPU (``Trainer.select_events``)."""
    kw = {**BASE, **FIT_CASES[case], "n_epochs": 3, "augment_crop_p": 0.5,
          "augment_drop_p": 0.3}
    data = _mixed_data(n_sessions=FIT_SESSIONS)
    cpu = SessionGRU(**kw).fit(data)
    gpu = SessionGRU(**kw, device="cuda").fit(data)
    _assert_fits_equal(cpu, gpu)


def test_feature_model_fit_with_an_inactive_id_subnet_equals_cpu(cuda_model):
    """Alternating strategy: the ID subnet (with the input context) sits out every other
    epoch, while the tables keep their momentum updates."""
    data = _mixed_data(n_sessions=FIT_SESSIONS)
    feats = {"cat": CategoricalFeatures(np.arange(30), np.arange(30) % 4, dim=3)}
    kw = dict(BASE, n_epochs=3, architecture="parallel", feature_layers=[4],
              strategy="alternating", context_input="multiply", context_output="multiply",
              context_columns=["Type"])
    cpu = FeatureSessionGRU(**kw).fit(data, item_features=feats)
    gpu = FeatureSessionGRU(**kw, device="cuda").fit(data, item_features=feats)
    _assert_fits_equal(cpu, gpu)


@pytest.mark.parametrize("case", [
    dict(context_input="multiply", context_output="multiply", context_columns=["Type"],
         constrained_embedding=False, embedding=4),
    dict(context_input="concat", context_transition="multiply", constrained_embedding=False)])
def test_graph_replays_equal_uncaptured_steps(cuda_model, monkeypatch, case):
    kw = {**BASE, **case}
    data = _mixed_data(n_sessions=FIT_SESSIONS)
    runs = {}
    make = SessionGRU._make_trainer
    for graphs in (False, True):
        def make_with(self, *args, **kwargs):
            trainer = make(self, *args, **kwargs)
            trainer.use_graphs = graphs
            return trainer
        monkeypatch.setattr(SessionGRU, "_make_trainer", make_with)
        cuda_model.reset_stats()
        m = SessionGRU(**kw, device="cuda").fit(data)
        runs[graphs] = (m, cuda_model.stats["graph_launches"])
    assert runs[False][1] == 0 and runs[True][1] > 10
    if isinstance(cuda_model, EmulatedDevice):  # the same bits
        for key in TRAINED:
            np.testing.assert_array_equal(runs[True][0].params_[key],
                                          runs[False][0].params_[key])
        assert runs[True][0].loss_history_ == runs[False][0].loss_history_
    else:  # a GPU: atomics in the sparse updates add in any order
        _assert_fits_equal(runs[False][0], runs[True][0], same_device=True)


# ---------------------------------------------------------------------------------------------
# scoring on the device
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cuda_pair(cuda_device, tmp_path_factory):
    """A CUDA-trained context model (concat + output multiply + transition + a column) and the
    same model read back from its file (a CPU model)."""
    from gru_engine import model as model_mod
    mp = pytest.MonkeyPatch()
    mp.setattr(model_mod, "_resolve_device", lambda name: None if name == "cpu" else cuda_device)
    data = _mixed_data()
    m = SessionGRU(**dict(BASE, n_epochs=3, **FIT_CASES["transition-column-all"]),
                   device="cuda").fit(data)
    path = tmp_path_factory.mktemp("ctx") / "m.npz"
    m.save(path)
    yield m, SessionGRU.load(path), data
    mp.undo()


def test_scorers_and_evaluate_equal_cpu(cuda_pair, cuda_device):
    gpu, cpu, data = cuda_pair
    assert getattr(cpu, "device_", "cpu") == "cpu" and gpu.device_ == "cuda"
    assert isinstance(gpu.scorer(), DeviceContextScorer)
    assert isinstance(cpu.scorer(), ContextScorer) and not isinstance(cpu.scorer(),
                                                                     DeviceContextScorer)
    before = cuda_device.stats["kernels"]["rank_targets"]
    r_gpu = gpu.evaluate(data, cutoffs=(5, 20))
    assert cuda_device.stats["kernels"]["rank_targets"] > before  # ranked on the device
    r_cpu = cpu.evaluate(data, cutoffs=(5, 20))
    assert r_gpu["n_events"] == r_cpu["n_events"] > 400
    for key in ("recall@5", "recall@20", "mrr@5", "mrr@20"):
        assert r_gpu[key] == pytest.approx(r_cpu[key], rel=1e-4), key
    sc_gpu, sc_cpu = gpu.scorer(), cpu.scorer()
    rng = np.random.default_rng(0)
    rin = np.stack([rng.integers(0, s, 4) for s in (21, 24, 7, 3)], 1) + [0, 21, 45, 52]
    rout = rin[:, :3]
    for sc in (sc_gpu, sc_cpu):
        sc.begin(4)
        sc.set_context(rin, rout)
    items, new = np.array([1, 5, 9, 1], np.int32), np.ones(4, bool)
    np.testing.assert_allclose(sc_gpu.score(np.arange(4), items, new),
                               sc_cpu.score(np.arange(4), items, new), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="set_context"):
        sc_gpu.score(np.arange(3), items[:3], new[:3])


def test_recommend_equals_cpu(cuda_pair):
    gpu, cpu, data = cuda_pair
    sid, items, times, types = (data[k] for k in ("SessionId", "ItemId", "Time", "Type"))
    for s in (0, 3, 7):
        i = np.flatnonzero(sid == s)
        req = dict(times=times[i], now=times[i[-1]] + 400.0, columns={"Type": types[i]})
        a, b = gpu.recommend(items[i], 10, **req), cpu.recommend(items[i], 10, **req)
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_allclose(a[1], b[1], rtol=1e-5, atol=1e-6)
    later = gpu.recommend(items[:2], 10, times=[T0, T0 + 5], now=T0 + 10 ** 5,
                          columns={"Type": ["view", "view"]})
    sooner = gpu.recommend(items[:2], 10, times=[T0, T0 + 5], now=T0 + 6,
                           columns={"Type": ["view", "view"]})
    assert not np.array_equal(later[1], sooner[1])  # the request's time changes the answer
    with pytest.raises(ValueError, match="times="):
        gpu.recommend([1])


def test_session_store_on_the_device_answers_as_recommend(cuda_pair):
    from gru_engine.serving import SessionStore
    gpu, cpu, data = cuda_pair
    store = SessionStore(gpu, capacity=2, k=5)
    assert store.cuda  # the states live on the device
    check_store_answers_as_recommend(store, cpu, data)


def test_device_auto_trains_context_on_the_device(cuda_model):
    m = SessionGRU(**dict(BASE, n_epochs=1, context_input="concat", context_time=[],
                          context_columns=["Type"]), device="auto").fit(_type_data(60))
    assert m.device_ == "cuda" and isinstance(m.scorer(), DeviceContextScorer)


def test_session_store_new_items_keep_the_context(cuda_model):
    """FeatureSessionGRU with context on the device: clicks on new items with features (the
    store builds a scorer over the grown bags) still score with the context tables."""
    import copy
    from gru_engine.serving import SessionStore
    data = _mixed_data()
    feats = {"cat": CategoricalFeatures(np.arange(30), np.arange(30) % 4, dim=3)}
    cpu = FeatureSessionGRU(**dict(BASE, n_epochs=1, architecture="parallel",
                                   feature_layers=[4], context_input="multiply",
                                   context_output="multiply")).fit(data, item_features=feats)
    gpu = copy.deepcopy(cpu)
    gpu.device_ = "cuda"
    new = {"cat": CategoricalFeatures([40, 41], [1, 2])}
    a, b = SessionStore(cpu, capacity=4, k=5), SessionStore(gpu, capacity=4, k=5)
    assert b.cuda and not a.cuda
    for n, (sids, clicks) in enumerate((([0, 1], [3, 41]), ([0, 1], [40, 5]), ([0], [7]))):
        t = [T0 + 60.0 * n + 7 * j for j in range(len(sids))]
        ra, rb = (s.step(sids, clicks, times=t, item_features=new) for s in (a, b))
        assert not ra.unknown_item.any() and not rb.unknown_item.any()
        assert isinstance(b._slots.scorer, DeviceContextScorer)
        np.testing.assert_array_equal(rb.items, ra.items)
        np.testing.assert_allclose(rb.scores, ra.scores, rtol=1e-5, atol=1e-5)


def test_output_context_learns_on_the_device_with_dropout(cuda_model):
    """What only the next event's time tells (test_context._gap_data), learned on the device
    with dropout masks drawn there, and evaluated there."""
    from test_context import _gap_data, _model
    data = _gap_data()
    m = _model(context_output="multiply", context_time=["gap"], dropout_p_hidden=0.1,
               dropout_p_embed=0.1, device="cuda").fit(data)
    assert m.device_ == "cuda"
    assert m.evaluate(data, cutoffs=(1,))["recall@1"] > 0.95

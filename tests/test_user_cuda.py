"""The user-level GRU on the CUDA backend (backends/cuda/user_trainer.py, kernels/user.cu), run in
the CPU emulator.

The kernels of user.cu against NumPy (outputs pre-filled with NaN); whole fits of
``SessionGRU(user_layers > 0, device='cuda')`` against the CPU user trainer's fit of the same
model (same user-parallel schedule, negative samples and user-dropout masks, no network
dropout): parameters, losses and session-aware metrics to float32 rounding, per user mode x
user input, deeper / embedded / sampled / momentum networks and user dropout; a CUDA-trained
model file loads and scores on the CPU. As in tests/test_cuda_model.py, ``device='cuda'``
resolves to the ``cuda_device`` fixture (tests/test_cuda_gpu.py runs the fit parity on a GPU).
"""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from gru_engine.backends.cuda import BLOCK
from gru_engine.evaluation import evaluate_session_aware
from gru_engine.model import SessionGRU
from gru_engine.session_aware import build_user_sessions
from gru_engine.synthetic import session_aware_events, session_aware_split

pytestmark = [pytest.mark.cuda_emulated,
              pytest.mark.skipif(shutil.which("g++") is None, reason="g++ not found: the CUDA "
                                 "emulator compiles kernels/*.cu with g++")]

# Every entry point of kernels/user.cu -> its test here (checked by
# tests/test_cuda_emulated.py::test_every_kernel_has_an_emulated_test).
KERNEL_TESTS = {
    "select_rows": "test_select_rows",
    "state_grad": "test_state_grad",
    "tanh_rows_backward": "test_tanh_rows_backward",
    "add_inplace": "test_add_inplace",
}

LEARNED = ("theta", "T", "Wy", "By", "U")
PARAM_ATOL = 2e-5  # float32 rounding over a few hundred Adagrad steps (measured <= 1.2e-6)


@pytest.fixture(scope="module")
def dev():
    from gru_engine.backends.device import EmulatedDevice
    return EmulatedDevice()


def grid(n):
    return max(1, (n + BLOCK - 1) // BLOCK)


def nan(shape):
    return np.full(shape, np.nan, np.float32)


def f32(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


# ---- kernels ---------------------------------------------------------------------------------
def test_select_rows(dev):
    rng = np.random.default_rng(0)
    n, width, dst_ld, src_ld = 37, 5, 9, 7
    flag = (rng.random(n) < 0.4).astype(np.uint8)
    src = f32(rng, n, src_ld)
    dst = f32(rng, n, dst_ld)
    want = dst.copy()
    want[flag == 1, :width] = src[flag == 1, :width]
    dev.launch("select_rows", grid(n * width), BLOCK, [dst, dst_ld, src, src_ld, flag, n, width])
    assert np.array_equal(dst, want)
    want[flag == 1, :width] = 0.0  # src NULL: the flagged rows are zeroed
    dev.launch("select_rows", grid(n * width), BLOCK, [dst, dst_ld, None, 0, flag, n, width])
    assert np.array_equal(dst, want)


@pytest.mark.parametrize("with_mask", [False, True])
def test_state_grad(dev, with_mask):
    rng = np.random.default_rng(1)
    n, H, ld, off = 19, 6, 15, 4
    dh, dgh_wh = f32(rng, n, H), f32(rng, n, H)
    saved = rng.random((n, 4 * H)).astype(np.float32)
    mask = rng.uniform(0, 2, (n, H)).astype(np.float32) if with_mask else None
    out = nan((n, ld))
    dev.launch("state_grad", grid(n * H), BLOCK,
               [dh, mask, saved, dgh_wh, out.reshape(-1)[off:], ld, n, H])
    g = dh.astype(np.float64) * (1.0 if mask is None else mask)
    want = g * saved[:, H:2 * H] + dgh_wh
    np.testing.assert_allclose(out[:, off:off + H], want, rtol=1e-6, atol=1e-6)
    assert np.isnan(out[:, :off]).all() and np.isnan(out[:, off + H:]).all()


def test_tanh_rows_backward(dev):
    rng = np.random.default_rng(2)
    n, width = 23, 11
    dh0, h0 = f32(rng, n, width), np.tanh(f32(rng, n, width))
    flag = (rng.random(n) < 0.5).astype(np.uint8)
    out = nan((n, width))
    dev.launch("tanh_rows_backward", grid(n * width), BLOCK, [dh0, h0, flag, out, n, width])
    want = np.where(flag[:, None] == 1, dh0 * (1.0 - h0.astype(np.float64) ** 2), 0.0)
    np.testing.assert_allclose(out, want, rtol=1e-6, atol=1e-7)


def test_add_inplace(dev):
    rng = np.random.default_rng(3)
    x, y = f32(rng, 301), f32(rng, 301)
    want = x + y
    dev.launch("add_inplace", grid(301), BLOCK, [x, y, 301])
    assert np.array_equal(x, want)


# ---- fits: CUDA (emulated) against the CPU user trainer ---------------------------------------
def _data(seed=0):
    ev, _ = session_aware_events(n_users=24, sessions_per_user=4, n_items=36, n_tastes=6,
                                 persistent=True, seed=seed)
    return session_aware_split(ev)


def _model(device, **kw):
    base = dict(layers=[8], batch_size=8, n_sample=0, n_epochs=2, random_state=1, n_threads=1,
                user_layers=5, device=device)
    base.update(kw)
    return SessionGRU(**base)


def _metrics(m, train, test):
    te, _, _ = build_user_sessions(test, m.item_index_)
    hi, _, _ = build_user_sessions(train, m.item_index_)
    return evaluate_session_aware(m.scorer(), te, hi, cutoffs=(5, 10))


def _assert_same_fit(kw, atol=PARAM_ATOL, data=None):
    train, test = _data() if data is None else data
    cpu = _model("cpu", **kw).fit(train)
    cuda = _model("cuda", **kw).fit(train)
    assert cpu.device_ == "cpu" and cuda.device_ == "cuda"
    for k in LEARNED:
        a, b = np.asarray(cpu.params_[k]), np.asarray(cuda.params_[k])
        assert a.shape == b.shape, k
        np.testing.assert_allclose(b, a, rtol=0, atol=atol, err_msg=k)
    assert np.array_equal(cpu.params_["UI"], cuda.params_["UI"])
    np.testing.assert_allclose(cuda.loss_history_, cpu.loss_history_, rtol=1e-6)
    one_epoch = _model("cpu", **dict(kw, n_epochs=1)).fit(train)  # same initial parameters
    assert np.abs(one_epoch.params_["U"] - cpu.params_["U"]).max() > 1e-4, "U did not train"
    return cpu, cuda, train, test


@pytest.mark.parametrize("mode", ["all", "init", "both"])
@pytest.mark.parametrize("user_input", ["items", "hidden"])
def test_fit_equals_cpu_every_mode_and_input(cuda_model, mode, user_input):
    cpu, cuda, train, test = _assert_same_fit(dict(user_mode=mode, user_input=user_input))
    r_cpu, r_cuda = _metrics(cpu, train, test), _metrics(cuda, train, test)
    assert r_cuda["user_aware"] and r_cuda["n_users_with_history"] > 0
    for key in ("recall@5", "mrr@5", "recall@10", "mrr@10"):
        assert r_cuda[key] == r_cpu[key], key


@pytest.mark.parametrize("kw", [
    # two layers (h0 and its gradient on both), embedding input (GEMM path), sampled negatives,
    # momentum, a shrinking batch (batch_size does not divide the rows)
    dict(layers=[8, 6], embedding=4, n_sample=5, momentum=0.3, batch_size=6, user_mode="both",
         user_input="hidden", loss="bpr-max"),
    dict(layers=[7], n_sample=3, momentum=0.2, user_mode="both", user_input="items",
         loss="cross-entropy", constrained_embedding=False),  # one-hot input
    # user dropout: its masks are drawn from the same generator on both devices
    dict(user_mode="all", user_input="items", user_dropout=0.4),
])
def test_fit_equals_cpu_deeper_sampled_momentum_dropout(cuda_model, kw):
    _assert_same_fit(kw)


def test_cuda_trained_model_file_loads_and_scores_on_the_cpu(cuda_model, tmp_path):
    train, test = _data()
    m = _model("cuda", user_mode="both", user_input="items").fit(train)
    m.save(tmp_path / "m.npz")
    m2 = SessionGRU.load(tmp_path / "m.npz")
    for k in LEARNED + ("UI",):
        assert np.array_equal(m.params_[k], m2.params_[k]), k
    r1, r2 = _metrics(m, train, test), _metrics(m2, train, test)
    assert r2["user_aware"]
    assert r1["recall@10"] == r2["recall@10"] and r1["mrr@10"] == r2["mrr@10"]
    ids = m.item_index_.ids
    history = [list(ids[[1, 2, 3]]), list(ids[[4, 5]])]
    got = m.recommend([ids[7], ids[8]], k=5, user_sessions=history)
    want = m2.recommend([ids[7], ids[8]], k=5, user_sessions=history)
    assert np.array_equal(got[0], want[0])


@pytest.mark.parametrize("mode,user_input", [("all", "items"), ("init", "hidden"),
                                             ("both", "hidden")])
def test_device_scorer_equals_cpu_scorer(cuda_model, mode, user_input):
    """A CUDA-trained model scores on the device (UserScorer of backends/cuda): the same
    session-aware metrics, user-state scores and recommendations as the CPU scorer of the
    same parameters."""
    from gru_engine.backends.cpu_user_scoring import UserScorer as CPUUserScorer
    from gru_engine.backends.cuda.user_scorer import UserScorer
    train, test = _data()
    m = _model("cuda", user_mode=mode, user_input=user_input, layers=[8, 6]).fit(train)
    dev_sc, cpu_sc = m.scorer(), m._build_scorer(device="cpu")
    assert isinstance(dev_sc, UserScorer) and isinstance(cpu_sc, CPUUserScorer)
    te, _, _ = build_user_sessions(test, m.item_index_)
    hi, _, _ = build_user_sessions(train, m.item_index_)
    r_dev = evaluate_session_aware(dev_sc, te, hi, cutoffs=(5, 10))
    r_cpu = evaluate_session_aware(cpu_sc, te, hi, cutoffs=(5, 10))
    assert r_dev["user_aware"] and r_dev["n_users_with_history"] > 0
    for key in ("recall@5", "mrr@5", "recall@10", "mrr@10"):
        assert r_dev[key] == r_cpu[key], key
    # scores of first and later clicks, with and without a user state, in one batch
    rows, users = np.arange(4), hi.user_ids[[0, 3, 5, 0]]
    known = np.array([True, True, False, True])
    clicks = [np.array([1, 4, 7, 9], np.int32), np.array([2, 2, 5, 11], np.int32)]
    got, want = [], []
    for sc, out in ((dev_sc, got), (cpu_sc, want)):
        sc.begin(4)
        sc.begin_users(hi)
        sc.start_sessions(rows, users, known)
        for t, items in enumerate(clicks):
            out.append(np.array(sc.score(rows, items, np.full(4, t == 0))))
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    assert np.abs(got[0][0] - got[0][2]).max() > 1e-4  # the user state matters
    ids = m.item_index_.ids
    history = [list(ids[[1, 2, 3]]), list(ids[[4, 5]])]
    on_dev = m.recommend([ids[7], ids[8]], k=5, user_sessions=history)
    from gru_engine.backends.cpu_user_scoring import OneUser
    from gru_engine.session_aware import one_user_history
    cpu_sc.begin_users(one_user_history([m.item_index_.to_index(np.asarray(s)) for s in history]))
    want_rec = m._recommend(OneUser(cpu_sc, 0), m.item_index_.to_index(np.asarray(ids[[7, 8]])),
                            5, None)
    assert np.array_equal(on_dev[0], want_rec[0])
    np.testing.assert_allclose(on_dev[1], want_rec[1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode,user_input", [("all", "items"), ("init", "hidden")])
def test_session_store_keeps_user_states_of_a_cuda_model(cuda_model, mode, user_input,
                                                        tmp_path):
    from test_user_level import _data as store_data
    from test_user_level import check_store_keeps_user_states
    train, _ = store_data()
    m = _model("cuda", user_mode=mode, user_input=user_input).fit(train)
    check_store_keeps_user_states(m, train, tmp_path)


def test_device_auto_trains_a_user_model_on_the_resolved_device(cuda_model):
    train, _ = _data()
    m = _model("auto", n_epochs=1).fit(train)
    assert m.device_ == "cuda" and "U" in m.params_

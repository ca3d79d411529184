"""SessionGRU(device='cuda') end to end through the CUDA backend, run in the CPU emulator.

The fixture ``cuda_model`` (tests/conftest.py) makes the model resolve ``device='cuda'`` to the
device of the ``cuda_device`` fixture (here an :class:`EmulatedDevice`; tests/test_cuda_gpu.py
runs the same tests with a real :class:`CupyDevice`). Each test compares the CUDA path with the
Numba CPU path of the same model (both train the same flat network of ``gru_engine.network``,
through ``backends.cpu.Trainer`` and ``backends.cuda.Trainer``): the training steps per loss /
input mode / depth / dropout (same fixed masks on both paths), a small fit's metrics, device
ranking against the Cython evaluator, save/load, NaN refusal and device resolution.
"""
from __future__ import annotations

import copy
import shutil

import numpy as np
import pytest

from gru_engine import ModelFitError, NotFittedError
from gru_engine import model as model_mod
from gru_engine.backends import device as device_mod
from gru_engine.backends.cpu_scoring import Scorer as CPUScorer
from gru_engine.backends.cuda import Scorer
from gru_engine.data import build_sessions
from gru_engine.evaluation import evaluate_sessions
from gru_engine.model import SessionGRU

pytestmark = [pytest.mark.cuda_emulated,
              pytest.mark.skipif(shutil.which("g++") is None, reason="g++ not found: the CUDA "
                                 "emulator compiles kernels/*.cu with g++")]


_REAL_RESOLVE = model_mod._resolve_device


TRAINED = ("theta", "T", "Wy", "By")  # the learned arrays of a network's parameters


def _flat(params):
    for k in TRAINED:
        yield k, params[k]


def _two_step_events(n_rows, n_items, seed):
    """n_rows sessions of 3 clicks: with batch_size=n_rows an epoch is exactly two steps (the
    first from zero hidden state, which gives Wh no gradient; the second carries the state)."""
    rng = np.random.default_rng(seed)
    items = rng.integers(0, n_items, 3 * n_rows)
    items[:n_items] = np.arange(n_items)  # every item occurs (n_items <= 3 * n_rows)
    return {"SessionId": np.repeat(np.arange(n_rows), 3), "ItemId": items * 3 + 1,
            "Time": np.arange(3 * n_rows, dtype=float)}


def _markov_events(n_sessions, n_items, seed, max_len=7, t0=0.0):
    """Sessions where the next item mostly follows the current one (learnable)."""
    rng = np.random.default_rng(seed)
    sess, items, times = [], [], []
    t = t0
    for s in range(n_sessions):
        it = int(rng.integers(n_items))
        for _ in range(int(rng.integers(2, max_len + 1))):
            sess.append(s)
            items.append(it)
            times.append(t)
            t += 1.0
            it = (it + 1 + int(rng.integers(2))) % n_items if rng.random() < 0.85 \
                else int(rng.integers(n_items))
    return {"SessionId": np.array(sess), "ItemId": np.array(items), "Time": np.array(times)}


def _fixed_masks(monkeypatch, kw, B, seed):
    """Make both backends' trainers use the same inverted-dropout masks in every step (one
    factor per row for one-hot input, repeated over its input width as the CPU holds it)."""
    rng = np.random.default_rng(seed)
    layers = kw["layers"]
    onehot = not kw.get("constrained_embedding", True) and kw.get("embedding", 0) == 0
    if onehot:
        width = 3 * layers[0]
    elif kw.get("constrained_embedding", True):
        width = layers[-1]
    else:
        width = kw["embedding"]
    pe, ph = kw["dropout_p_embed"], kw["dropout_p_hidden"]
    embed = ((rng.random((B, 1 if onehot else width)) >= pe) / (1 - pe)).astype(np.float32)
    embed = np.repeat(embed, width, axis=1) if onehot else embed
    hidden = [((rng.random((B, H)) >= ph) / (1 - ph)).astype(np.float32) for H in layers]
    make = SessionGRU._make_trainer

    def make_fixed(self, *args, **kwargs):
        trainer = make(self, *args, **kwargs)
        trainer.fix_dropout_masks([embed], hidden)
        return trainer
    monkeypatch.setattr(SessionGRU, "_make_trainer", make_fixed)


def _record_init(monkeypatch):
    """Copies of the initial parameters of every fit (in fit order)."""
    inits = []
    make = SessionGRU._make_trainer

    def recording(self, p, params, *args, **kwargs):
        inits.append({k: np.array(params[k], copy=True) for k in TRAINED})
        return make(self, p, params, *args, **kwargs)
    monkeypatch.setattr(SessionGRU, "_make_trainer", recording)
    return inits


BASE = dict(batch_size=8, n_sample=7, sample_store_size=70, n_epochs=1, learning_rate=0.05,
            momentum=0.3, random_state=11, logq=0.0)

STEP_CASES = {
    "cross-entropy": dict(loss="cross-entropy"),
    "cross-entropy-logq": dict(loss="cross-entropy", logq=1.0, sample_alpha=0.75),
    "bpr-max": dict(loss="bpr-max", bpreg=1.0, elu_param=0.5),
    "bpr-max-noelu": dict(loss="bpr-max", bpreg=0.5),
    "top1-max": dict(loss="top1-max", final_act="elu-1"),
    "bpr": dict(loss="bpr"),
    "top1": dict(loss="top1", final_act="leaky-0.1"),
    "no-negatives": dict(loss="cross-entropy", n_sample=0),
}
INPUTS = {"onehot": dict(constrained_embedding=False),
          "embedding": dict(constrained_embedding=False, embedding=5),
          "constrained": dict(constrained_embedding=True)}


def _step_parity(monkeypatch, kw, dropout):
    kw = {**BASE, **kw}
    if dropout:
        kw.update(dropout_p_embed=0.25, dropout_p_hidden=0.4)
        _fixed_masks(monkeypatch, kw, kw["batch_size"], seed=len(repr(kw)))
    data = _two_step_events(kw["batch_size"], 12, seed=len(kw["layers"]))
    inits = _record_init(monkeypatch)
    cpu = SessionGRU(**kw, device="cpu").fit(data)
    gpu = SessionGRU(**kw, device="cuda").fit(data)
    assert (cpu.device_, gpu.device_) == ("cpu", "cuda")
    # the same initial parameters, updated by the steps
    assert len(inits) == 2 and all(np.array_equal(inits[0][k], inits[1][k]) for k in TRAINED)
    got, want, start = dict(_flat(gpu.params_)), dict(_flat(cpu.params_)), inits[0]
    assert sorted(got) == sorted(want) == sorted(start)
    for name, b in want.items():
        a, a0 = got[name], start[name]
        assert a.dtype == np.float32 and isinstance(a, np.ndarray) and a.shape == b.shape, name
        if b.size <= 1 and name == "T":  # constrained input: no table of its own
            continue
        assert np.abs(b - a0).max() > 0, f"{name} was not updated by the step"
        err = np.abs(a - b).max() / np.abs(b).max()
        assert err < 1e-4, f"{name}: relative error {err:.2e}"
        # the update itself (not only the parameters) agrees
        d_err = np.abs((a - a0) - (b - a0)).max() / np.abs(b - a0).max()
        assert d_err < 1e-3, f"{name}: relative error of the update {d_err:.2e}"
    assert len(cpu.loss_history_) == len(gpu.loss_history_) == 1
    np.testing.assert_allclose(gpu.loss_history_[0], cpu.loss_history_[0], rtol=1e-5)


@pytest.mark.parametrize("case", sorted(STEP_CASES))
def test_training_steps_equal_cpu_every_loss(cuda_model, monkeypatch, case):
    _step_parity(monkeypatch, dict(layers=[6], **STEP_CASES[case]), dropout=False)


@pytest.mark.parametrize("inputs", sorted(INPUTS))
@pytest.mark.parametrize("layers", [[6], [7, 5]])
@pytest.mark.parametrize("dropout", [False, True], ids=["nodrop", "dropout"])
def test_training_steps_equal_cpu_inputs_layers_dropout(cuda_model, monkeypatch, inputs, layers,
                                                   dropout):
    _step_parity(monkeypatch, dict(layers=layers, loss="cross-entropy", logq=1.0,
                                   **INPUTS[inputs]), dropout)


def test_epoch_with_resets_shrinking_batch_and_store_redraws_equals_cpu(cuda_model):
    """A whole epoch: rows carry hidden state, restart sessions, shrink at the end; the sample
    store (3 steps' worth) is redrawn mid-epoch on both paths from the same generator."""
    kw = dict(layers=[6, 5], batch_size=5, n_sample=4, sample_store_size=12, n_epochs=2,
              learning_rate=0.02, momentum=0.1, random_state=4, loss="bpr-max", bpreg=0.5,
              elu_param=0.5, constrained_embedding=False, embedding=4)
    data = _markov_events(30, 15, seed=2)
    cpu = SessionGRU(**kw, device="cpu").fit(data)
    gpu = SessionGRU(**kw, device="cuda").fit(data)
    got = dict(_flat(gpu.params_))
    assert sorted(got) == sorted(dict(_flat(cpu.params_)))
    for name, b in _flat(cpu.params_):
        a = got[name]
        err = np.abs(a - b).max() / np.abs(b).max()
        assert err < 1e-4, f"{name}: relative error {err:.2e}"
    np.testing.assert_allclose(gpu.loss_history_, cpu.loss_history_, rtol=1e-5)


# ---- a small fit, evaluation on the device ----------------------------------------------------
FIT = dict(layers=[24], batch_size=16, n_sample=32, sample_store_size=2000, n_epochs=2,
           learning_rate=0.1, momentum=0.1, random_state=5, loss="cross-entropy", logq=1.0)


@pytest.fixture(scope="module")
def data():
    return _markov_events(300, 150, seed=7), _markov_events(100, 150, seed=8, t0=1e6)


@pytest.fixture(scope="module")
def fitted_pair(cuda_device, data):
    """(CPU model, CUDA model) fitted once for the module (tests must not modify them)."""
    train, _ = data
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(model_mod, "_resolve_device",
                   lambda name: None if name == "cpu" else cuda_device)
        yield (SessionGRU(**FIT, device="cpu").fit(train),
               SessionGRU(**FIT, device="cuda").fit(train))


class _ScoresOnly:
    """A scorer without ``rank``: the evaluator then ranks with the Cython kernel."""

    def __init__(self, scorer):
        self.inner, self.n_items = scorer, scorer.n_items

    def begin(self, n_rows):
        self.inner.begin(n_rows)

    def score(self, rows, items, new_session):
        return self.inner.score(rows, items, new_session)


def test_fit_metrics_equal_cpu_and_device_ranking_equals_cython(fitted_pair, data):
    cpu, gpu = fitted_pair
    _, test = data
    assert isinstance(gpu.scorer(), Scorer) and isinstance(cpu.scorer(), CPUScorer)
    r_cpu = cpu.evaluate(test, cutoffs=(5, 20))
    r_gpu = gpu.evaluate(test, cutoffs=(5, 20))  # rank kernel on the device
    assert r_cpu["n_events"] == r_gpu["n_events"] > 200
    assert r_cpu["recall@20"] > 0.3  # the fit learned something: the comparison means something
    for key in ("recall@20", "mrr@20"):
        assert abs(r_gpu[key] - r_cpu[key]) <= 0.01 * r_cpu[key], (key, r_gpu[key], r_cpu[key])
    sessions, _, _ = build_sessions(test, gpu.item_index_)
    for mode in ("conservative", "standard", "median"):
        on_device = evaluate_sessions(gpu.scorer(), sessions, cutoffs=(1, 5, 20), mode=mode,
                                      batch_size=37, by_position=False)
        cython = evaluate_sessions(_ScoresOnly(gpu.scorer()), sessions, cutoffs=(1, 5, 20),
                                   mode=mode, batch_size=37, by_position=False)
        for key in cython:
            if key != "seconds":
                assert on_device[key] == cython[key], (mode, key)


def test_save_load_cpu_scores_equal_cuda_scores(fitted_pair, tmp_path):
    _, gpu = fitted_pair
    path = tmp_path / "gpu_model.npz"
    gpu.save(path)
    loaded = SessionGRU.load(path)
    assert isinstance(loaded.scorer(), CPUScorer)
    ids = gpu.item_index_.ids
    sessions = [[ids[1], ids[2], ids[3]], [ids[5]], [ids[7], ids[7]]]
    np.testing.assert_allclose(loaded.predict_next(sessions), gpu.predict_next(sessions),
                               rtol=1e-5, atol=1e-5)
    got_ids, got_scores = gpu.recommend([ids[1], ids[2]], k=10)
    want_ids, want_scores = loaded.recommend([ids[1], ids[2]], k=10)
    np.testing.assert_allclose(got_scores, want_scores, rtol=1e-5, atol=1e-5)
    assert (got_ids == want_ids).mean() >= 0.8  # near-ties may swap


def test_scorer_reuses_device_parameters_until_they_change(fitted_pair, cuda_model, data):
    gpu = copy.deepcopy(fitted_pair[1])  # a copy carries no device parameters
    first = gpu.scorer()
    assert gpu.scorer().net is first.net  # no upload per scorer() / predict_next call
    np.testing.assert_array_equal(cuda_model.to_host(first.net.p["Wy"]), gpu.params_["Wy"])
    gpu.params_ = {**gpu.params_, "By": gpu.params_["By"] + 1.0}  # new dict: uploaded again
    second = gpu.scorer()
    assert second.net is not first.net
    np.testing.assert_array_equal(cuda_model.to_host(second.net.p["By"]), gpu.params_["By"])
    gpu.set_params(n_epochs=1).fit(data[0])  # a fit gives new parameters
    assert gpu.scorer().net is not second.net


def test_nan_in_a_cuda_model_is_refused_by_device_evaluation(fitted_pair, data):
    gpu = copy.deepcopy(fitted_pair[1])
    assert gpu.device_ == "cuda"
    gpu.params_["Wy"][3, 0] = np.nan  # item 3 scores NaN in every row
    with pytest.raises(ModelFitError, match="NaN"):
        gpu.evaluate(data[1], cutoffs=(20,))


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning",
                            "ignore:invalid value encountered:RuntimeWarning")
def test_cuda_fit_that_diverges_raises_and_leaves_model_unfitted(cuda_model):
    m = SessionGRU(**{**FIT, "learning_rate": 1e30, "loss": "bpr-max", "n_epochs": 3},
                   device="cuda")
    with pytest.raises(ModelFitError, match="epoch"):
        m.fit(_markov_events(40, 10, seed=1))
    with pytest.raises(NotFittedError):
        m.predict_next([[1]])


def test_device_auto_uses_the_resolved_device(cuda_model, data):
    m = SessionGRU(**{**FIT, "n_epochs": 1}, device="auto").fit(data[0])
    assert m.device_ == "cuda" and isinstance(m.scorer(), Scorer)


# ---- device resolution without a GPU (independent of the machine) -----------------------------
def test_device_cuda_without_gpu_is_a_clear_error_and_auto_falls_back(monkeypatch, data):
    monkeypatch.setattr(model_mod, "_resolve_device", _REAL_RESOLVE)
    monkeypatch.setattr(device_mod, "cuda_available", lambda: False)
    m = SessionGRU(**FIT, device="cuda")  # __init__ only stores
    with pytest.raises(ValueError, match="CuPy and an NVIDIA GPU"):
        m.fit(data[0])
    assert not hasattr(m, "device_")
    m = SessionGRU(**{**FIT, "n_epochs": 1}, device="auto").fit(data[0])
    assert m.device_ == "cpu" and isinstance(m.scorer(), CPUScorer)


def test_cpu_device_never_asks_for_cuda(monkeypatch, data):
    def no_cuda():
        raise AssertionError("device='cpu' must not look for CuPy")
    monkeypatch.setattr(model_mod, "_resolve_device", _REAL_RESOLVE)
    monkeypatch.setattr(device_mod, "cuda_available", no_cuda)
    m = SessionGRU(**{**FIT, "n_epochs": 1}, device="cpu").fit(data[0])
    assert m.device_ == "cpu"


def test_real_device_resolution_on_a_stand_in_cupy(tmp_path, monkeypatch, data):
    """Not a GPU test: with a stand-in CuPy module whose kernels run in the emulator (see
    test_cuda_emulated), the unpatched resolution gives SessionGRU(device='cuda'|'auto') a
    CupyDevice, and fit/evaluate through CupyDevice's plumbing match the CPU path."""
    import sys
    from test_cuda_emulated import _fake_cupy_module
    fake, _ = _fake_cupy_module(tmp_path)
    monkeypatch.setattr(model_mod, "_resolve_device", _REAL_RESOLVE)
    monkeypatch.setitem(sys.modules, "cupy", fake)
    device_mod.cuda_available.cache_clear()
    device_mod._cupy_module.cache_clear()
    try:
        kw = {**FIT, "n_epochs": 1}
        train, test = data
        gpu = SessionGRU(**kw, device="auto").fit(train)
        assert gpu.device_ == "cuda"
        assert isinstance(gpu.scorer().dev, device_mod.CupyDevice)
        cpu = SessionGRU(**kw, device="cpu").fit(train)
        np.testing.assert_allclose(gpu.params_["Wy"], cpu.params_["Wy"], rtol=1e-4, atol=1e-5)
        r_gpu, r_cpu = gpu.evaluate(test, cutoffs=(20,)), cpu.evaluate(test, cutoffs=(20,))
        assert abs(r_gpu["recall@20"] - r_cpu["recall@20"]) <= 0.01 * r_cpu["recall@20"]
    finally:
        device_mod.cuda_available.cache_clear()
        device_mod._cupy_module.cache_clear()

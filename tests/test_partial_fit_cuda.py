"""``partial_fit`` of CUDA-trained extension models (context-aware, user-level, output
features), run in the CPU emulator: the CUDA trainers return and accept the optimiser state
of every trained table under the CPU trainer's keys, so a warm start continues the Adagrad
accumulators and velocities of the extension's tables on either device; a fit plus a
``partial_fit`` on the device gives the CPU's parameters and optimiser state to float32
rounding (no dropout). As in tests/test_cuda_model.py, ``device='cuda'`` resolves to the
``cuda_device`` fixture.
"""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from gru_engine.feature_model import FeatureSessionGRU
from gru_engine.model import SessionGRU
from test_context import _mixed_data  # noqa: E402  (tests/ is on sys.path)
from test_context_cuda import BASE, FIT_CASES
from test_feature_cuda import _item_features, _markov_events
from test_user_cuda import _data as _user_data

pytestmark = [pytest.mark.cuda_emulated,
              pytest.mark.skipif(shutil.which("g++") is None, reason="g++ not found: the CUDA "
                                 "emulator compiles kernels/*.cu with g++")]


def _context_case():
    return (SessionGRU, dict(BASE, n_epochs=1, **FIT_CASES["transition-column-all"]),
            _mixed_data(), {}, {"context_in", "context_out", "context_h"})


def _user_case():
    train, _ = _user_data()
    return (SessionGRU, dict(layers=[8], batch_size=8, n_sample=3, n_epochs=1, momentum=0.2,
                             random_state=1, n_threads=1, user_layers=5, user_mode="both",
                             user_input="items"), train, {}, {"U"})


def _output_case():
    data = _markov_events(30, 15, seed=2)
    feats = _item_features(15, np.arange(15) * 3 + 1)
    return (FeatureSessionGRU, dict(layers=[5], batch_size=5, n_sample=4, sample_store_size=12,
                                    learning_rate=0.05, momentum=0.3, random_state=3,
                                    output_features=True, n_threads=1, n_epochs=1),
            data, {"item_features": feats}, {"Fy", "Fb"})


CASES = {"context": _context_case, "user": _user_case, "output": _output_case}


def _rel_err(a, b):
    return np.abs(a - b).max() / max(np.abs(b).max(), 1e-30)


def _assert_same(cuda, cpu, keys, tol=1e-4):
    assert set(cuda.params_) == set(cpu.params_)
    for key in keys:
        a, b = cuda.params_[key], cpu.params_[key]
        assert a.shape == b.shape, key
        if b.size:
            assert _rel_err(a, b) < tol, f"{key}: relative error {_rel_err(a, b):.2e}"
    np.testing.assert_allclose(cuda.loss_history_, cpu.loss_history_, rtol=1e-5)


@pytest.mark.parametrize("case", list(CASES))
def test_partial_fit_on_the_device_continues_the_extension_state_as_the_cpu(cuda_model, case):
    cls, kw, data, fit_args, extension = CASES[case]()
    models = {}
    for device in ("cpu", "cuda"):
        m = cls(**kw, device=device).fit(data, **fit_args)
        state = m.optimizer_state_
        assert set(state["acc"]) == set(state["vel"]) == {"theta", "T", "Wy", "By"} | extension
        for key in extension:
            assert state["acc"][key].shape == m.params_[key].shape
            assert np.any(state["acc"][key] > 0), f"{key}: no optimiser state"
        m.partial_fit(data, n_epochs=2, **fit_args)
        assert m.device_ == device and len(m.loss_history_) == 3
        models[device] = m
    cpu, cuda = models["cpu"], models["cuda"]
    _assert_same(cuda, cpu, ["theta", "T", "Wy", "By"] + sorted(extension))
    for kind in ("acc", "vel"):
        for key in sorted(extension):
            a, b = cuda.optimizer_state_[kind][key], cpu.optimizer_state_[kind][key]
            assert a.shape == b.shape and _rel_err(a, b) < 1e-4, (kind, key)


def test_a_cuda_fit_continues_on_the_cpu_with_its_tables_state(cuda_model):
    """Across devices: the state a CUDA fit returns is what a CPU warm start reads."""
    cls, kw, data, fit_args, extension = _context_case()
    cpu = cls(**kw, device="cpu").fit(data)
    moved = cls(**kw, device="cuda").fit(data).set_params(device="cpu")
    for m in (cpu, moved):
        m.partial_fit(data, n_epochs=2)
    assert moved.device_ == "cpu"
    _assert_same(moved, cpu, ["theta", "T", "Wy", "By"] + sorted(extension))


def test_partial_fit_on_the_device_with_a_new_column_value_equals_cpu(cuda_model):
    """A value new to the vocabulary grows ``context_in`` and ``context_h`` (and their state)
    before the device trainer is built: the warm start on CUDA then equals the CPU's."""
    from test_context import _transition_data
    kw = dict(BASE, n_epochs=1, context_input="concat", context_transition="multiply",
              context_time=[], context_columns=["Type"])
    new = _transition_data(seed=4)
    new["Type"] = np.where((new["Type"] == "cart") & (np.arange(len(new["Type"])) % 2 == 1),
                           "basket", new["Type"])
    models = {}
    for device in ("cpu", "cuda"):
        m = SessionGRU(**kw, device=device).fit(_transition_data())
        m.partial_fit(new, n_epochs=1)
        assert [list(v) for v in m.context_vocab_] == [["basket", "cart", "view"]]
        models[device] = m
    assert np.any(models["cpu"].params_["context_h"][1])  # rows: unknown, basket, cart, view
    _assert_same(models["cuda"], models["cpu"],
                 ["theta", "T", "Wy", "By", "context_in", "context_h"])

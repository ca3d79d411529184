"""A training step's work side by side on two Numba threads (backends/cpu/overlap.py, the
input and hidden products of ``gru.gemm_pair``): which output rows may be updated beside the
backward, and training that gives the same parameters, bit for bit, as on one thread."""
import numba
import numpy as np
import pytest

from gru_engine import SessionGRU
from gru_engine.backends.cpu import Trainer
from gru_engine.backends.cpu.gru import gemm_pair
from gru_engine.backends.cpu.overlap import mark_early_rows
from gru_engine.backends.cpu.step import step_forward_output
from gru_engine.backends.cpu.update import release_all
from gru_engine.feature_model import FeatureSessionGRU
from gru_engine.features import CategoricalFeatures
from gru_engine.network import PARAM_KEYS, build_layout
from gru_engine.params import DEFAULTS, hyper, validate

two_threads = pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2,
                                 reason="needs two Numba threads")


def _events(n=720, n_items=40, seed=0):
    rng = np.random.default_rng(seed)
    return {"SessionId": np.repeat(np.arange(n // 6), 6), "ItemId": rng.integers(0, n_items, n),
            "Time": np.arange(n, dtype=np.float64)}


def test_gemm_pair_is_the_two_products():
    rng = np.random.default_rng(1)
    a0, b0 = rng.random((5, 3), np.float32), rng.random((3, 12), np.float32)
    a1, b1 = rng.random((5, 4), np.float32), rng.random((4, 12), np.float32)
    c0, c1 = np.empty((5, 12), np.float32), np.empty((5, 12), np.float32)
    gemm_pair(a0, b0, c0, a1, b1, c1)
    s0, s1 = np.empty_like(c0), np.empty_like(c1)
    np.dot(a0, b0, s0)
    np.dot(a1, b1, s1)
    assert np.array_equal(c0, s0) and np.array_equal(c1, s1)


def test_output_rows_of_input_items_wait_for_the_backward():
    """Early rows: the step's output rows except its (constrained-ID) input items' rows."""
    n_items, B, n_sample = 12, 4, 5
    rng = np.random.default_rng(2)
    lay = build_layout(n_items, "id", "concat", "constrained", [6], 3, [6], [], rng,
                       np.float64)
    hy = hyper(validate(dict(DEFAULTS, n_sample=n_sample, batch_size=B,
                             sample_store_size=100)))
    tr = Trainer({k: lay[k] for k in PARAM_KEYS}, hy, np.ones(n_items, np.int64))
    items = np.array([3, 7, 3, 11], np.int32)  # 11: not among the columns
    cols = np.array([7, 0, 3, 1, 5, 3, 9, 2, 0], np.int32)
    in_buf = tr.rows["in_items"]
    in_buf[:B] = items
    tr.out.cols[:B + n_sample] = cols
    sp = tr.sparse
    step_forward_output(tr.net, tr.active, False, in_buf, B, B + n_sample, tr.work, tr.out, sp,
                        tr.hyper, None, None, None, False)
    n_out = sp.counts[1]
    assert n_out == len(np.unique(cols))
    mark_early_rows(tr.net, tr.active, tr.train, in_buf, B, sp)
    rows = sp.rowsY[:n_out]
    assert np.array_equal(sp.early[:n_out], ~np.isin(rows, items))
    assert not sp.early[:n_out].all() and sp.early[:n_out].any()
    # a frozen subnet adds no input gradient: all its output rows are early
    tr.train[:] = False
    mark_early_rows(tr.net, tr.active, tr.train, in_buf, B, sp)
    assert sp.early[:n_out].all()
    sp.early[:] = False
    release_all(tr.net.SI, sp)


class _Kept(SessionGRU):
    def _make_trainer(self, *args, **kwargs):
        self.trainer = super()._make_trainer(*args, **kwargs)
        return self.trainer


class _KeptFeature(FeatureSessionGRU):
    def _make_trainer(self, *args, **kwargs):
        self.trainer = super()._make_trainer(*args, **kwargs)
        return self.trainer


BASE = dict(layers=[8], n_epochs=2, batch_size=8, n_sample=20, logq=1.0, sample_alpha=0.5,
            random_state=1, dropout_p_hidden=0.3, momentum=0.2)


@two_threads
@pytest.mark.parametrize("kw", [
    dict(constrained_embedding=True, embedding=0, dropout_p_embed=0.2),
    dict(constrained_embedding=True, embedding=0, momentum=0.0, layers=[8, 6]),
    dict(constrained_embedding=False, embedding=5, layers=[8, 6]),
    dict(constrained_embedding=False, embedding=0),
], ids=["constrained", "constrained-2layers", "embedding-2layers", "onehot"])
def test_two_threads_train_as_one(kw):
    """Every row updated beside the backward or after it, every product on one thread or the
    other: the parameters are bit-identical (and the two-thread path ran)."""
    events = _events()
    one = _Kept(**dict(BASE, **kw), n_threads=1).fit(events)
    two = _Kept(**dict(BASE, **kw), n_threads=2).fit(events)
    assert not one.trainer.flags[3] and two.trainer.flags[3]
    for k in ("theta", "T", "Wy", "By"):
        assert np.array_equal(one.params_[k], two.params_[k]), k


@two_threads
@pytest.mark.parametrize("kw", [dict(strategy="alternating", feature_layers=[4]),
                                dict(combine="sum", feature_layers=[8])],
                         ids=["alternating", "sum"])
def test_two_threads_train_feature_subnets_as_one(kw):
    events = _events()
    feats = {"cat": CategoricalFeatures(np.arange(40), np.arange(40) % 5, dim=3)}
    fits = [_KeptFeature(**BASE, **kw, architecture="parallel", constrained_embedding=True,
                         embedding=0, n_threads=n).fit(events, item_features=feats)
            for n in (1, 2)]
    assert fits[1].trainer.flags[3]
    for k in ("theta", "T", "Wy", "By"):
        assert np.array_equal(fits[0].params_[k], fits[1].params_[k]), k

"""CUDA-graph capture of the training step (``Device.capture``, ``backends.cuda.Trainer`` with
``use_graphs``), proven in the CPU emulator, for the ID-only network (GRU4Rec, each input mode)
and a feature network (bags of varying size: one graph per table-entry count).

The emulator's capture has CUDA's semantics: the captured work is recorded, not run; a replay
re-reads the same buffers with the scalars baked in at capture; allocating or reading back
inside a capture is refused. Runs compared bit for bit use an emulator that schedules blocks in
a fixed order (by default it shuffles them, so float atomics such as the loss sum may add in
another order from run to run, as on a GPU). So a graph epoch equals the kernel-by-kernel epoch bit for bit
only if every per-step value reaches the captured kernels through device memory, and a
per-step value passed as a scalar (frozen) is caught here.
"""
from __future__ import annotations

import functools
import logging
import shutil

import numpy as np
import pytest

from conftest import model_level_device
from gru_engine import params as hp
from gru_engine.backends import device as device_mod
from gru_engine.backends.cuda import Trainer
from gru_engine.backends.device import EmulatedDevice, GraphCaptureError
from gru_engine.data import ItemIndex, build_sessions
from gru_engine.features import CategoricalFeatures, DenseFeatures, TokenFeatures, encode_item_features
from gru_engine.network import PARAM_KEYS, build_layout, epoch_plan
from gru_engine.sampling import seed_numba

pytestmark = [pytest.mark.cuda_emulated,
              pytest.mark.skipif(shutil.which("g++") is None, reason="g++ not found: the CUDA "
                                 "emulator compiles kernels/*.cu with g++")]

N_ITEMS = 40
B = 6


def _device():
    """The model-level emulator (conftest) with blocks run in order: reproducible bits."""
    return model_level_device(block_order="forward")


def _sessions(seed=3, n_sessions=20):
    rng = np.random.default_rng(seed)
    sess, items = [], []
    for s in range(n_sessions):
        n = int(rng.integers(2, 9))
        sess += [s] * n
        items += list(rng.integers(0, N_ITEMS, n))
    items[:N_ITEMS] = range(N_ITEMS)  # every item occurs
    data = {"SessionId": np.array(sess), "ItemId": np.array(items),
            "Time": np.arange(len(sess), dtype=float)}
    return build_sessions(data)[0]


def _params(mode, layers, seed=0, k_embed=5, features=False, combine="concat"):
    """A flat network (``gru_engine.network``) with non-trivial weights and biases: the ID
    subnet alone (GRU4Rec) or, with ``features``, ID + dense + categorical + token subnets."""
    rng = np.random.default_rng(seed)
    enc = []
    if features:
        r = np.random.default_rng(1)
        ids = np.arange(N_ITEMS)
        words = np.array(["a", "b", "c", "d"])
        enc = encode_item_features({
            "dense": DenseFeatures(ids, r.normal(size=(N_ITEMS, 4))),
            "cat": CategoricalFeatures(ids, r.integers(0, 5, (N_ITEMS, 2)), dim=3),
            "tok": TokenFeatures(ids, [" ".join(r.choice(words, r.integers(0, 4)))
                                       for _ in range(N_ITEMS)], dim=3, n_buckets=4),
        }, ItemIndex(ids))
    lay = build_layout(N_ITEMS, "parallel" if features else "id", combine, mode, list(layers),
                       k_embed, [layers[-1]] if combine == "sum" else [4], enc, rng)
    p = {k: lay[k] for k in PARAM_KEYS}
    p["theta"] = p["theta"] + rng.uniform(-0.1, 0.1, p["theta"].shape).astype(np.float32)
    p["By"] = rng.uniform(-0.1, 0.1, N_ITEMS).astype(np.float32)
    return p, lay["names"]


def _hyper(loss="bpr-max", n_sample=5, dropout=False):
    return hp.Hyper(loss=hp.LOSS_CODES[loss], final_act=0, final_act_param=0.0, logq=0.0,
                    bpreg=0.5, elu_param=0.5, learning_rate=0.05, momentum=0.1,
                    dropout_p_embed=0.2 if dropout else 0.0,
                    dropout_p_hidden=0.3 if dropout else 0.0, batch_size=B, n_sample=n_sample,
                    sample_alpha=0.5, sample_store_size=4 * max(n_sample, 1))


def _fit(device, sessions, *, use_graphs, mode="constrained", layers=(7,), dropout=False,
         n_sample=5, n_epochs=2, loss="bpr-max", features=False, strategy="simultaneous"):
    """Epochs through the Trainer; returns (per-run losses, host params, trainer);
    ``trainer.full_steps`` lists each epoch's number of full (R == batch_size) steps."""
    seed_numba(11)
    params, names = _params(mode, list(layers), features=features)
    plan = epoch_plan(strategy, len(names), n_epochs) if features else None
    et = Trainer(device, params, _hyper(loss, n_sample, dropout),
                 sessions.item_support(N_ITEMS), sum_mode=False, plan=plan, names=names,
                 seed=9, use_graphs=use_graphs)
    et.fill_store()
    order_rng = np.random.default_rng(5)
    losses, et.full_steps = [], []
    for _ in range(n_epochs):
        et.start_epoch(sessions.items, order_rng.permutation(sessions.n_sessions),
                       sessions.offsets)
        et.full_steps.append(int((et._rows == B).sum()))
        assert 0 < et.full_steps[-1] < len(et._rows)  # and a shrinking tail, run uncaptured
        while et.rows_left():
            losses.append(et.run(7))  # several host syncs per epoch, as with a progress bar
    return losses, et.host_params(), et


@functools.lru_cache(maxsize=None)
def _uncaptured(**kw):
    """The kernel-by-kernel result (losses, params) of ``_fit`` (computed once per setting)."""
    losses, params, _ = _fit(_device(), _sessions(), use_graphs=False, **kw)
    return losses, params


TRAINED = ("theta", "T", "Wy", "By")


def _assert_same_bits(a, b):
    for k in TRAINED:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def _differs(a, b):
    return any(not np.array_equal(a[k], b[k]) for k in TRAINED)


@pytest.fixture(scope="module")
def sessions():
    return _sessions()  # as _uncaptured uses


@pytest.mark.parametrize("mode,layers,dropout", [("constrained", (7,), False),
                                                  ("constrained", (7, 5), True),
                                                  ("onehot", (6,), True),
                                                  ("embedding", (6, 4), True)])
def test_graph_epochs_equal_uncaptured_bit_for_bit(sessions, mode, layers, dropout):
    dev_graph = _device()
    l0, p0 = _uncaptured(mode=mode, layers=layers, dropout=dropout)
    l1, p1, et = _fit(dev_graph, sessions, use_graphs=True, mode=mode, layers=layers,
                      dropout=dropout)
    assert l0 == l1  # (loss sum, events, finite) of every run() call, exactly
    _assert_same_bits(p0, p1)
    # every full step but the very first (which sizes the scratch buffers) was a replay
    assert dev_graph.stats["graph_launches"] == sum(et.full_steps) - 1
    assert len(et.store.samples) == 20 and len(et._rows) > 4  # the store (4 steps' worth)
    # is redrawn several times per epoch, while a graph is replayed


def test_graph_without_negative_samples(sessions):
    l0, p0 = _uncaptured(n_sample=0, loss="top1")
    dev = _device()
    l1, p1, _ = _fit(dev, sessions, use_graphs=True, n_sample=0, loss="top1")
    assert l0 == l1 and dev.stats["graph_launches"] > 0
    _assert_same_bits(p0, p1)


def _frozen_mask_stream(self, offset):
    """The WRONG way: the step index as a kernel scalar (frozen when captured)."""
    return [None, 0, self.n_steps * self.masks_per_step + offset]


def test_a_per_step_scalar_frozen_in_the_graph_is_caught(sessions, monkeypatch):
    right, p_right = _uncaptured(mode="constrained", layers=(7, 5), dropout=True)
    monkeypatch.setattr(Trainer, "_mask_stream", _frozen_mask_stream)
    # uncaptured, the scalar version draws the very same masks ...
    l0, p0, _ = _fit(_device(), sessions, use_graphs=False, layers=(7, 5), dropout=True)
    assert l0 == right
    _assert_same_bits(p0, p_right)
    # ... but a graph replays the masks of the step it was captured at
    l1, p1, _ = _fit(_device(), sessions, use_graphs=True, layers=(7, 5), dropout=True)
    assert l1 != right and _differs(p1, p_right)


def test_capture_refuses_allocation_and_read_back():
    dev = EmulatedDevice()
    x = dev.zeros((3,))
    with pytest.raises(GraphCaptureError, match="allocation"):
        dev.capture(lambda: dev.zeros((3,)))
    with pytest.raises(GraphCaptureError, match="read-back"):
        dev.capture(lambda: dev.to_host(x))
    with pytest.raises(GraphCaptureError, match="out="):
        dev.capture(lambda: dev.gemm(x.reshape(1, 3), x.reshape(3, 1)))
    # recorded, not run; replays read the buffers' current contents
    src, dst = dev.to_device(np.array([1.0, 2.0, 3.0], np.float32)), dev.zeros((3,))
    g = dev.capture(lambda: (dev.copy(dst, src), dev.launch("add_bias", 1, 32, [dst, src, 1, 3])))
    assert g.n_nodes == 2 and (dst == 0).all()
    g.launch()
    np.testing.assert_array_equal(dst, [2.0, 4.0, 6.0])
    src[:] = 5.0
    g.launch()
    np.testing.assert_array_equal(dst, [10.0, 10.0, 10.0])


def test_failed_capture_falls_back_to_kernel_by_kernel(sessions, monkeypatch, caplog):
    """A capture that allocates (here: scratch buffers dropped just before capture) is refused;
    the trainer logs it and trains uncaptured, with the same bits."""
    right, p_right = _uncaptured(mode="constrained", layers=(7,), dropout=False)
    real_capture = Trainer._capture

    def capture_after_dropping_buffers(self, *args):
        self._flat = {}
        return real_capture(self, *args)

    monkeypatch.setattr(Trainer, "_capture", capture_after_dropping_buffers)
    dev = _device()
    with caplog.at_level(logging.WARNING, logger="gru_engine"):
        got, p_got, et = _fit(dev, sessions, use_graphs=True)
    assert "capture of the training step failed" in caplog.text
    assert dev.stats["graph_launches"] == 0 and not et.use_graphs
    assert got == right
    _assert_same_bits(p_got, p_right)


# Host-side calls of one full step with carried rows (``src``), kernel by kernel: (kernels,
# GEMMs, copies). ID-only, L layers, constrained input: 6L + 13 kernels (per layer a state
# gather, the cell forward and backward, 2 column sums and a bias; the input gather; 2 output
# gathers, bias, loss, column sum; one dense Adagrad over the subnet's theta; 2 x 3 sparse
# Adagrad kernels for Wy and By; the logq-free loss needs no more), 5L + 3 GEMMs, L + 3 copies.
# One-hot input: its gather adds the bias (no GEMM, no bias kernel, 3 GEMMs fewer), and 3 more
# kernels update its table rows; embedding input: 3 more kernels for its table. Dropout adds
# L + 1 masks, 2 input-mask multiplies and the step-counter kernel. The feature network (ID +
# dense + categorical + token subnets of one layer) runs each subnet's forward and backward; in
# a trainer with graphs its bag tables' updates are padded to capacity (1 copy each).
HOST_CALLS = {
    ("constrained", (7,), False, False): (19, 8, 4),
    ("constrained", (7,), False, True): (24, 8, 4),
    ("constrained", (7, 5), False, False): (25, 13, 5),
    ("onehot", (7,), False, False): (21, 5, 3),
    ("embedding", (7,), False, False): (22, 8, 3),
    ("constrained", (7,), True, False): (63, 22, 8),
}


@pytest.mark.parametrize("mode,layers,features,dropout", sorted(HOST_CALLS))
def test_host_calls_per_full_step(mode, layers, features, dropout):
    """Host-side calls of a full step kernel by kernel (HOST_CALLS), and as a graph replay:
    5 input copies, 1 graph launch and 1 kernel adding the step loss to the caller's slot."""
    dev = EmulatedDevice()
    rng = np.random.default_rng(2)
    params, _ = _params(mode, list(layers), features=features)
    tr = Trainer(dev, params, _hyper(dropout=dropout), np.ones(N_ITEMS), sum_mode=False,
                 use_graphs=True)
    batch = [rng.integers(0, N_ITEMS, B).astype(np.int32),
             rng.integers(0, N_ITEMS, B).astype(np.int32), np.zeros(B, np.uint8),
             rng.integers(0, N_ITEMS, 5).astype(np.int32), np.arange(B, dtype=np.int32)]
    counts = []
    for _ in range(3):  # warm-up (direct), capture + first replay, replay
        dev.reset_stats()
        tr.step(*batch)
        counts.append(tuple(dev.stats[k] for k in ("launches", "gemms", "copies",
                                                   "graph_launches")))
    assert counts[0] == (*HOST_CALLS[(mode, layers, features, dropout)], 0)
    assert counts[2] == (1, 0, 5, 1)
    assert tr.n_steps == 3
    assert np.isfinite(tr.take_loss_sum())


@pytest.mark.parametrize("strategy", ["simultaneous", "interleaved", "residual"])
def test_feature_network_graph_epochs_equal_uncaptured(sessions, strategy):
    """The feature network gets CUDA graphs too: one per phase (interleaved: per trained
    subnet; residual: per block of epochs), whatever the number of table entries of the step's
    token and categorical bags (captured steps pad them to capacity); the epochs equal the
    kernel-by-kernel ones (exact entry counts) bit for bit."""
    kw = dict(features=True, strategy=strategy, n_epochs=4, loss="cross-entropy")
    l0, p0, _ = _fit(_device(), sessions, use_graphs=False, **kw)
    dev = _device()
    l1, p1, et = _fit(dev, sessions, use_graphs=True, **kw)
    assert l0 == l1
    _assert_same_bits(p0, p1)
    assert dev.stats["graph_launches"] > 0
    # one graph per phase whatever the bags' sizes: every full step but each phase's first
    # (which runs directly) is a replay
    assert len(et._warm) == {"simultaneous": 1, "interleaved": 4, "residual": 4}[strategy]
    assert dev.stats["graph_launches"] == sum(et.full_steps) - len(et._warm)


def test_cupy_device_capture_on_a_stand_in_cupy(sessions, tmp_path, monkeypatch):
    """Not a GPU test: CupyDevice's capture code (non-blocking stream, refusing allocator,
    graph launch) against the stand-in CuPy of test_cuda_emulated, whose stream capture
    records and replays like CUDA's; graphs are on by default on a CupyDevice."""
    import sys
    from test_cuda_emulated import _fake_cupy_module
    fake, _ = _fake_cupy_module(tmp_path)
    monkeypatch.setitem(sys.modules, "cupy", fake)
    device_mod.cuda_available.cache_clear()
    device_mod._cupy_module.cache_clear()
    try:
        gpu = device_mod.get_device("cuda")
        right, p_right = _uncaptured(mode="constrained", layers=(7, 5), dropout=True)
        got, p_got, et = _fit(gpu, sessions, use_graphs=None, layers=(7, 5), dropout=True)
        assert et.use_graphs and gpu.stats["graph_launches"] > 0
        # (the stand-in's kernels run in shuffled block order: equal to float32 rounding)
        np.testing.assert_allclose([x[0] for x in got], [x[0] for x in right], rtol=1e-6)
        for k in TRAINED:
            np.testing.assert_allclose(p_got[k], p_right[k], rtol=1e-6, atol=1e-7, err_msg=k)
    finally:
        device_mod.cuda_available.cache_clear()
        device_mod._cupy_module.cache_clear()

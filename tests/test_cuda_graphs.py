"""CUDA-graph capture of the training step (``Device.capture``, ``CudaTrainer`` with
``use_graphs``), proven in the CPU emulator.

The emulator's capture has CUDA's semantics: the captured work is recorded, not run; a replay
re-reads the same buffers with the scalars baked in at capture; allocating or reading back
inside a capture is refused. So a graph epoch equals the kernel-by-kernel epoch bit for bit
only if every per-step value reaches the captured kernels through device memory, and a
per-step value passed as a scalar (frozen) is caught here.
"""
from __future__ import annotations

import functools
import logging
import shutil

import numpy as np
import pytest

from gru_engine.backends import device as device_mod
from gru_engine.backends.cuda import CudaTrainer, EpochTrainer
from gru_engine.backends.device import EmulatedDevice, GraphCaptureError
from gru_engine.data import build_sessions
from gru_engine.sampling import seed_numba

pytestmark = [pytest.mark.cuda_emulated,
              pytest.mark.skipif(shutil.which("g++") is None, reason="g++ not found: the CUDA "
                                 "emulator compiles kernels/*.cu with g++")]

N_ITEMS = 40
B = 6


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


def _params(mode, layers, seed=0, k_embed=5):
    rng = np.random.default_rng(seed)
    in0 = {"onehot": N_ITEMS, "embedding": k_embed, "constrained": layers[-1]}[mode]
    p = {"Wx": [], "bx": [], "Wh": [], "bhn": []}
    for l, H in enumerate(layers):
        n_in = in0 if l == 0 else layers[l - 1]
        p["Wx"].append(rng.uniform(-0.3, 0.3, (n_in, 3 * H)).astype(np.float32))
        p["bx"].append(rng.uniform(-0.1, 0.1, 3 * H).astype(np.float32))
        p["Wh"].append(rng.uniform(-0.3, 0.3, (H, 3 * H)).astype(np.float32))
        p["bhn"].append(rng.uniform(-0.1, 0.1, H).astype(np.float32))
    p["Wy"] = rng.uniform(-0.3, 0.3, (N_ITEMS, layers[-1])).astype(np.float32)
    p["By"] = rng.uniform(-0.1, 0.1, N_ITEMS).astype(np.float32)
    if mode == "embedding":
        p["E"] = rng.uniform(-0.3, 0.3, (N_ITEMS, k_embed)).astype(np.float32)
    return p


def _fit(device, sessions, *, use_graphs, mode="constrained", layers=(7,), dropout=False,
         n_sample=5, n_epochs=2, loss="bpr-max"):
    """Two epochs through EpochTrainer; returns (per-run losses, host params, trainer);
    ``trainer.full_steps`` lists each epoch's number of full (R == batch_size) steps."""
    seed_numba(11)
    et = EpochTrainer(device, _params(mode, list(layers)), batch_size=B, n_sample=n_sample,
                      sample_alpha=0.5, sample_store_size=4 * max(n_sample, 1),
                      item_support=sessions.item_support(N_ITEMS), loss=loss, bpreg=0.5,
                      elu_param=0.5, constrained_embedding=mode == "constrained",
                      learning_rate=0.05, momentum=0.1,
                      dropout_p_embed=0.2 if dropout else 0.0,
                      dropout_p_hidden=0.3 if dropout else 0.0, seed=9, use_graphs=use_graphs)
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
    losses, params, _ = _fit(EmulatedDevice(), _sessions(), use_graphs=False, **kw)
    return losses, params


def _assert_same_bits(a, b):
    for k in a:
        for l, (x, y) in enumerate(zip(a[k] if isinstance(a[k], list) else [a[k]],
                                       b[k] if isinstance(b[k], list) else [b[k]])):
            np.testing.assert_array_equal(x, y, err_msg=f"{k}[{l}]")


def _differs(a, b):
    return any(not np.array_equal(x, y) for k in a
               for x, y in zip(a[k] if isinstance(a[k], list) else [a[k]],
                               b[k] if isinstance(b[k], list) else [b[k]]))


@pytest.fixture(scope="module")
def sessions():
    return _sessions()  # as _uncaptured uses


@pytest.mark.parametrize("mode,layers,dropout", [("constrained", (7,), False),
                                                  ("constrained", (7, 5), True),
                                                  ("onehot", (6,), True),
                                                  ("embedding", (6, 4), True)])
def test_graph_epochs_equal_uncaptured_bit_for_bit(sessions, mode, layers, dropout):
    dev_graph = EmulatedDevice()
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
    dev = EmulatedDevice()
    l1, p1, _ = _fit(dev, sessions, use_graphs=True, n_sample=0, loss="top1")
    assert l0 == l1 and dev.stats["graph_launches"] > 0
    _assert_same_bits(p0, p1)


def _frozen_mask_stream(self, offset):
    """The WRONG way: the step index as a kernel scalar (frozen when captured)."""
    return [None, 0, self.n_steps * (self.net.L + 1) + offset]


def test_a_per_step_scalar_frozen_in_the_graph_is_caught(sessions, monkeypatch):
    right, p_right = _uncaptured(mode="constrained", layers=(7, 5), dropout=True)
    monkeypatch.setattr(CudaTrainer, "_mask_stream", _frozen_mask_stream)
    # uncaptured, the scalar version draws the very same masks ...
    l0, p0, _ = _fit(EmulatedDevice(), sessions, use_graphs=False, layers=(7, 5), dropout=True)
    assert l0 == right
    _assert_same_bits(p0, p_right)
    # ... but a graph replays the masks of the step it was captured at
    l1, p1, _ = _fit(EmulatedDevice(), sessions, use_graphs=True, layers=(7, 5), dropout=True)
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
    real_capture = CudaTrainer._capture

    def capture_after_dropping_buffers(self):
        self._flat = {}
        real_capture(self)

    monkeypatch.setattr(CudaTrainer, "_capture", capture_after_dropping_buffers)
    dev = EmulatedDevice()
    with caplog.at_level(logging.WARNING, logger="gru_engine"):
        got, p_got, et = _fit(dev, sessions, use_graphs=True)
    assert "capture of the training step failed" in caplog.text
    assert dev.stats["graph_launches"] == 0 and not et.trainer.use_graphs
    assert got == right
    _assert_same_bits(p_got, p_right)


@pytest.mark.parametrize("dropout", [False, True])
def test_host_calls_per_full_step(dropout):
    """Host-side calls of one full step with carried rows (``src``), 1 layer, constrained
    input: kernel by kernel 22 kernels (10L + 12), 8 GEMMs (5L + 3) and 4 copies (L + 3),
    +5 kernels with dropout (L + 1 masks, 2 embedding-mask multiplies, the step counter);
    as a graph replay 1 graph
    launch, 5 input copies and 1 kernel (adding the step loss to the caller's slot)."""
    dev = EmulatedDevice()
    rng = np.random.default_rng(2)
    tr = CudaTrainer(dev, _params("constrained", [7]), batch_size=B, n_sample=5,
                     dropout_p_embed=0.2 if dropout else 0.0,
                     dropout_p_hidden=0.3 if dropout else 0.0, use_graphs=True)
    batch = [rng.integers(0, N_ITEMS, B).astype(np.int32),
             rng.integers(0, N_ITEMS, B).astype(np.int32), np.zeros(B, np.uint8),
             rng.integers(0, N_ITEMS, 5).astype(np.int32), np.arange(B, dtype=np.int32)]
    counts = []
    for _ in range(3):  # warm-up (direct), capture + first replay, replay
        dev.reset_stats()
        tr.step(*batch)
        counts.append({k: dev.stats[k] for k in ("launches", "gemms", "copies",
                                                 "graph_launches")})
    extra = 5 if dropout else 0
    assert counts[0] == {"launches": 22 + extra, "gemms": 8, "copies": 4, "graph_launches": 0}
    assert counts[2] == {"launches": 1, "gemms": 0, "copies": 5, "graph_launches": 1}
    assert tr.n_steps == 3
    assert np.isfinite(tr.take_loss_sum())


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
        assert et.trainer.use_graphs and gpu.stats["graph_launches"] > 0
        assert got == right
        _assert_same_bits(p_got, p_right)
    finally:
        device_mod.cuda_available.cache_clear()
        device_mod._cupy_module.cache_clear()

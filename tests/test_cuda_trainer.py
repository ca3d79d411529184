"""The CUDA Trainer and Scorer (``gru_engine.backends.cuda``) on the ID-only network (GRU4Rec),
step by step against the float64 reference of ``tests/naive.py``, in the CPU emulator.

Parameters are drawn per layer (as the reference holds them) and put into the flat network of
``gru_engine.network`` (``from_layers``); the trainer's result is read back per layer
(``subnet_views``). Every loss, input mode, depth, dropout with fixed and with drawn masks, no
negative samples, a shrinking batch with carried rows and a final activation; the scorer's
scores, ranks and top-k; and the CupyDevice code path on a stand-in CuPy.
"""
from __future__ import annotations

import shutil
import zlib

import numpy as np
import pytest

from conftest import model_level_device
import naive as ref
from gru_engine import params as hp
from gru_engine.backends.cuda import BLOCK, Scorer, Trainer
from gru_engine.backends.device import EmulatedDevice, get_device
from gru_engine.data import build_sessions
from gru_engine.network import from_layers, subnet_views
from gru_engine.sampling import seed_numba

pytestmark = [pytest.mark.cuda_emulated,
              pytest.mark.skipif(shutil.which("g++") is None, reason="g++ not found: the CUDA "
                                 "emulator compiles kernels/*.cu with g++")]

N_ITEMS = 53
B = 6


@pytest.fixture(scope="module")
def dev():
    return EmulatedDevice()


def grid(n):
    return max(1, (n + BLOCK - 1) // BLOCK)


def close(a, b, rtol=1e-5, atol=1e-6):
    np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=rtol,
                               atol=atol)


def f32(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def _layer_params(rng, mode, layers, k_embed=6):
    """Per-layer parameters (the reference's layout): Wx/bx/Wh/bhn lists, Wy, By, E."""
    in0 = {"onehot": N_ITEMS, "embedding": k_embed, "constrained": layers[-1]}[mode]
    params = {"Wx": [], "bx": [], "Wh": [], "bhn": []}
    for l, H in enumerate(layers):
        i = in0 if l == 0 else layers[l - 1]
        params["Wx"].append(f32(rng, i, 3 * H, scale=0.3))
        params["bx"].append(f32(rng, 3 * H, scale=0.1))
        params["Wh"].append(f32(rng, H, 3 * H, scale=0.3))
        params["bhn"].append(f32(rng, H, scale=0.1))
    params["Wy"] = f32(rng, N_ITEMS, layers[-1], scale=0.3)
    params["By"] = f32(rng, N_ITEMS, scale=0.1)
    if mode == "embedding":
        params["E"] = f32(rng, N_ITEMS, k_embed, scale=0.3)
    return params


def _per_layer(flat, mode):
    """The ID subnet's parameters of a flat network, per layer (the reference's layout)."""
    v = subnet_views(flat, 0)
    out = {k: [np.array(a) for a in v[k]] for k in ("bx", "Wh", "bhn")}
    out["Wx"] = [np.array(v["table"] if w is None else w) for w in v["Wx"]]
    out["Wy"], out["By"] = np.array(flat["Wy"]), np.array(flat["By"])
    if mode == "embedding":
        out["E"] = np.array(v["table"])
    return out


def _hyper(loss, n_sample, *, final_act=(0, 0.0), logq=0.0, momentum=0.2, bpreg=0.0, elu=0.0,
           dropout=False):
    return hp.Hyper(loss=hp.LOSS_CODES[loss], final_act=final_act[0],
                    final_act_param=final_act[1], logq=logq, bpreg=bpreg, elu_param=elu,
                    learning_rate=0.05, momentum=momentum,
                    dropout_p_embed=0.25 if dropout else 0.0,
                    dropout_p_hidden=0.4 if dropout else 0.0, batch_size=B, n_sample=n_sample,
                    sample_alpha=0.5, sample_store_size=10 * max(n_sample, 1))


def _drawn_masks(dev, trainer, R, t, layers):
    """The masks the trainer's dropout_mask launches draw at step t (same seed and streams:
    stream t * (S + G) + s for subnet s's input, + S + g for layer g)."""
    sn = trainer.net.sub[0]
    per = trainer.masks_per_step
    emb = np.full((R,) if sn.kind == 2 else (R, sn.din), np.nan, np.float32)
    dev.launch("dropout_mask", grid(emb.size), BLOCK,
               [emb, emb.size, 0.25, trainer.seed, None, 0, t * per])
    hid = []
    for l, H in enumerate(layers):
        m = np.full((R, H), np.nan, np.float32)
        dev.launch("dropout_mask", grid(m.size), BLOCK,
                   [m, m.size, 0.4, trainer.seed, None, 0, t * per + 1 + l])
        hid.append(m)
    return emb, hid


def _run_step_parity(dev, mode, layers, loss, *, dropout=False, final_act=(0, 0.0), logq=0.0,
                     momentum=0.2, n_steps=2, shrink=False, opts=None, draw=False, n_sample=7):
    opts = opts or {}
    rng = np.random.default_rng(zlib.crc32(repr((mode, layers, loss, opts)).encode()))
    params = _layer_params(rng, mode, layers)
    support = rng.integers(1, 50, N_ITEMS)
    trainer = Trainer(dev, from_layers(params, mode),
                      _hyper(loss, n_sample, final_act=final_act, logq=logq, momentum=momentum,
                             bpreg=opts.get("bpreg", 0.0), elu=opts.get("elu", 0.0),
                             dropout=draw), support, sum_mode=False, seed=42)
    P = {k: ([a.astype(np.float64) for a in v] if isinstance(v, list) else v.astype(np.float64))
         for k, v in params.items()}
    A = {k: ([np.zeros_like(a) for a in v] if isinstance(v, list) else np.zeros_like(v))
         for k, v in P.items()}
    V = {k: ([np.zeros_like(a) for a in v] if isinstance(v, list) else np.zeros_like(v))
         for k, v in P.items()}
    h_ref = [np.zeros((B, H)) for H in layers]
    total = 0.0
    R = B
    for t in range(n_steps):
        src = None
        if shrink and t > 0:
            src = np.array([0, 2, 3, 5][:R - 2], np.int32)
            R = len(src)
        ins = rng.integers(0, N_ITEMS, R).astype(np.int32)
        outs = rng.integers(0, N_ITEMS, R).astype(np.int32)
        outs[-1] = outs[0]  # duplicate target column
        ins[1 % R] = ins[0]  # duplicate input rows (sparse duplicates)
        reset = (rng.random(R) < 0.3).astype(np.uint8)
        reset[0] = 1 if t == 0 else reset[0]
        sample = rng.integers(0, N_ITEMS, n_sample).astype(np.int32)
        if n_sample:
            sample[0] = outs[0]
        masks = None
        if dropout:
            width = 1 if mode == "onehot" else (6 if mode == "embedding" else layers[-1])
            emb = ((rng.random((R, width) if width > 1 else (R,)) >= 0.25) / 0.75).astype(np.float32)
            hid = [((rng.random((R, H)) >= 0.4) / 0.6).astype(np.float32) for H in layers]
            masks = (emb, hid)
        if draw:
            masks = _drawn_masks(dev, trainer, R, t, layers)
        logq_corr = None
        if logq:
            logq_corr = np.concatenate([logq * np.log(support[outs]),
                                        logq * 0.5 * np.log(support[sample])])
        hyper = dict(mode=mode, loss=loss, batch_size=B, bpreg=opts.get("bpreg", 0.0),
                     elu=opts.get("elu", 0.0), logq_corr=logq_corr, final_act=final_act,
                     lr=0.05, momentum=momentum)
        batch = dict(in_items=ins, out_items=outs, reset=reset, sample=sample, src=src,
                     masks=None if masks is None else
                     {"embed": masks[0].astype(np.float64),
                      "hidden": [m.astype(np.float64) for m in masks[1]]})
        loss_ref, P, A, V, h_ref = ref.train_step(P, A, V, h_ref, batch, hyper)
        total += loss_ref
        trainer.step(ins, outs, reset, sample, src=src,
                     masks=None if draw or masks is None else ([masks[0]], masks[1]))
    close(trainer.take_loss_sum(), total, rtol=2e-4)
    got = _per_layer(trainer.host_params(), mode)
    for key, want in P.items():
        for l, (g, w) in enumerate(zip(_as_list(got[key]), _as_list(want))):
            np.testing.assert_allclose(g, w, rtol=1e-3, atol=2e-5, err_msg=f"{key}[{l}]")
    for l, H in enumerate(layers):
        close(dev.to_host(trainer.h[l])[:len(h_ref[l])], h_ref[l], rtol=1e-3, atol=2e-5)


def _as_list(v):
    return v if isinstance(v, list) else [v]


@pytest.mark.parametrize("loss,opts", [("cross-entropy", {}),
                                       ("bpr-max", {"bpreg": 1.95, "elu": 0.5}),
                                       ("bpr-max", {"bpreg": 0.5}), ("top1-max", {}),
                                       ("bpr", {}), ("top1", {})])
def test_train_step_every_loss(dev, loss, opts):
    _run_step_parity(dev, "constrained", [11], loss, opts=opts)


@pytest.mark.parametrize("mode", ["onehot", "embedding", "constrained"])
@pytest.mark.parametrize("layers", [[11], [13, 9]])
def test_train_step_modes_layers_dropout(dev, mode, layers):
    _run_step_parity(dev, mode, layers, "cross-entropy", dropout=True, logq=1.0)


@pytest.mark.parametrize("mode", ["onehot", "constrained"])
def test_train_step_with_drawn_dropout_masks(dev, mode):
    _run_step_parity(dev, mode, [9, 6], "bpr-max", opts={"bpreg": 1.0, "elu": 1.0}, draw=True,
                     n_steps=3)


@pytest.mark.parametrize("loss", ["cross-entropy", "top1"])
def test_train_step_without_extra_negatives(dev, loss):
    _run_step_parity(dev, "onehot", [12], loss, n_sample=0, logq=1.0)


def test_train_step_shrinking_batch_and_final_act(dev):
    _run_step_parity(dev, "constrained", [10, 7], "top1-max", final_act=(4, 1.0), n_steps=3,
                     shrink=True, momentum=0.0)


def test_bad_step_and_loss_code_are_refused(dev):
    params = from_layers(_layer_params(np.random.default_rng(0), "constrained", [4]),
                         "constrained")
    with pytest.raises(ValueError, match="loss code"):
        Trainer(dev, params, _hyper("bpr", 3)._replace(loss=9), np.ones(N_ITEMS), sum_mode=False)
    tr = Trainer(dev, params, _hyper("bpr", 3), np.ones(N_ITEMS), sum_mode=False)
    with pytest.raises(ValueError, match="batch_size=6, n_sample=3"):
        tr.step(np.zeros(7, np.int32), np.zeros(7, np.int32), np.zeros(7, np.uint8),
                np.zeros(3, np.int32))
    with pytest.raises(ValueError, match="lacks 'theta'"):
        Trainer(dev, {k: v for k, v in params.items() if k != "theta"}, _hyper("bpr", 3),
                np.ones(N_ITEMS), sum_mode=False)


# ---- warm start and checkpoints ---------------------------------------------------------------
def test_state_of_a_trainer_continues_the_fit_exactly():
    """A second epoch run by a NEW trainer built from the first one's ``host_params()``,
    ``optimizer_state()`` and ``training_state()`` (warm start / checkpoint) equals the second
    epoch of one trainer running both, bit for bit (blocks in order, so float atomics add in the
    same order); dropout checks the restored step counter."""
    dev = model_level_device(block_order="forward")
    rng = np.random.default_rng(4)
    n = 40
    items = rng.integers(0, N_ITEMS, 4 * n)
    items[:N_ITEMS] = np.arange(N_ITEMS)  # every item occurs: item index = item id
    data = {"SessionId": np.repeat(np.arange(n), 4), "ItemId": items, "Time": np.arange(4.0 * n)}
    sessions, index, _ = build_sessions(data)
    support = sessions.item_support(N_ITEMS)
    flat = from_layers(_layer_params(rng, "embedding", [5]), "embedding")
    hy = _hyper("bpr-max", 4, bpreg=0.5, dropout=True)._replace(sample_store_size=10_000)
    orders = [rng.permutation(sessions.n_sessions) for _ in range(2)]

    def epoch(tr, order):
        tr.start_epoch(sessions.items, order, sessions.offsets)
        return [tr.run(5) for _ in range(100) if tr.rows_left()]

    seed_numba(3)
    one = Trainer(dev, flat, hy, support, sum_mode=False, seed=1, use_graphs=True)
    one.fill_store()
    epoch(one, orders[0])
    want = epoch(one, orders[1])
    seed_numba(3)
    first = Trainer(dev, flat, hy, support, sum_mode=False, seed=1)
    first.fill_store()
    epoch(first, orders[0])
    second = Trainer(dev, first.host_params(), hy, support, sum_mode=False, seed=1,
                     use_graphs=True, optimizer_state=first.optimizer_state())
    second.fill_store()
    second.restore_training_state(first.training_state())
    assert epoch(second, orders[1]) == want
    for key in ("theta", "T", "Wy", "By"):
        np.testing.assert_array_equal(second.host_params()[key], one.host_params()[key], key)
        np.testing.assert_array_equal(second.optimizer_state()["acc"][key],
                                      one.optimizer_state()["acc"][key], key)
    # load_state puts host parameters back onto the device
    second.load_state(params=flat)
    np.testing.assert_array_equal(second.host_params()["Wy"], flat["Wy"])


# ---- scorer --------------------------------------------------------------------------------
@pytest.mark.parametrize("mode,layers", [("constrained", [9]), ("onehot", [7, 5]),
                                         ("embedding", [6])])
def test_scorer_matches_reference(dev, mode, layers):
    rng = np.random.default_rng(3)
    params = _layer_params(rng, mode, layers)
    flat = from_layers(params, mode)
    scorer = Scorer(dev, flat, False)
    act_scorer = Scorer(dev, flat, False, final_act=(3, 0.1))
    scorer.begin(4)
    h = [np.zeros((4, H)) for H in layers]
    P = {k: ([a.astype(np.float64) for a in v] if isinstance(v, list) else v.astype(np.float64))
         for k, v in params.items()}
    for step in range(3):
        rows = np.array([0, 2, 3]) if step != 1 else np.array([3, 1])
        items = rng.integers(0, N_ITEMS, len(rows))
        new = np.array([step == 0] * len(rows))
        if step == 2:
            new[1] = True
        if step == 0:
            act_scorer.begin(4)
            close(act_scorer.score(rows, items, new),
                  ref.final_act(3, scorer.score(rows, items, new), 0.1))
            scorer.begin(4)
        got = scorer.score(rows, items, new)
        if mode == "onehot":
            x_gx = P["Wx"][0][items] + P["bx"][0]
        else:
            src = P["E"] if mode == "embedding" else P["Wy"]
            x_gx = src[items] @ P["Wx"][0] + P["bx"][0]
        x = None
        for l in range(len(layers)):
            gx = x_gx if l == 0 else x @ P["Wx"][l] + P["bx"][l]
            hp_ = h[l][rows]
            out, _, _ = ref.gru_forward(gx, hp_ @ P["Wh"][l], P["bhn"][l], hp_,
                                        new.astype(np.uint8))
            h[l][rows] = out
            x = out
        close(got, x @ P["Wy"].T + P["By"], rtol=1e-4, atol=1e-5)
        assert got.dtype == np.float32 and got.shape == (len(rows), N_ITEMS)
    targets = rng.integers(0, N_ITEMS, 2)
    for mode_name in ("conservative", "median", "standard"):
        scorer.begin(2)
        r = scorer.rank(np.array([0, 1]), np.array([1, 2]), np.array([True, True]), targets,
                        mode_name)
        scorer.begin(2)
        S = scorer.score(np.array([0, 1]), np.array([1, 2]), np.array([True, True]))
        close(r, ref.ranks(S, targets, "optimistic" if mode_name == "standard" else mode_name),
              atol=0)
    scorer.begin(1)
    idx, vals = scorer.topk(np.array([0]), np.array([4]), np.array([True]), 10)
    scorer.begin(1)
    S = scorer.score(np.array([0]), np.array([4]), np.array([True]))
    np.testing.assert_array_equal(idx, ref.topk(S, 10)[0])
    with pytest.raises(ValueError, match="mode must be"):
        scorer.rank(np.array([0]), np.array([4]), np.array([True]), targets[:1], "best")


# ---- the CupyDevice code path, on a stand-in CuPy ----------------------------------------------
def test_trainer_and_scorer_on_a_stand_in_cupy(tmp_path, monkeypatch):
    """Not a GPU test: CupyDevice's plumbing (source loading, argument conversion, null
    pointers, GEMM/copy calls) under the Trainer and the Scorer, against a stand-in CuPy whose
    kernels run in the emulator (test_cuda_emulated), agrees with EmulatedDevice."""
    import sys
    from gru_engine.backends import device as device_mod
    from test_cuda_emulated import _fake_cupy_module
    fake, compiled = _fake_cupy_module(tmp_path)
    monkeypatch.setitem(sys.modules, "cupy", fake)
    device_mod.cuda_available.cache_clear()
    device_mod._cupy_module.cache_clear()
    try:
        gpu = get_device("cuda")
        assert isinstance(gpu, device_mod.CupyDevice)
        rng = np.random.default_rng(8)
        flat = from_layers(_layer_params(rng, "constrained", [10, 6]), "constrained")
        batch = [rng.integers(0, N_ITEMS, 5).astype(np.int32),
                 rng.integers(0, N_ITEMS, 5).astype(np.int32),
                 np.array([1, 0, 1, 0, 0], np.uint8), rng.integers(0, N_ITEMS, 4).astype(np.int32)]
        hy = _hyper("bpr-max", 4, bpreg=0.5, elu=1.0, momentum=0.1)._replace(
            dropout_p_hidden=0.3, batch_size=5)
        results = []
        for d in (gpu, EmulatedDevice()):
            tr = Trainer(d, flat, hy, np.ones(N_ITEMS), sum_mode=False, use_graphs=False)
            tr.step(*[d.to_device(a) for a in batch])
            sc = Scorer(d, tr.host_params(), False)
            sc.begin(2)
            results.append((tr.take_loss_sum(), tr.host_params()["Wy"],
                            sc.score(np.array([0, 1]), np.array([3, 4]), np.array([True, True]))))
        assert compiled
        for a, b in zip(*results):
            close(a, b)
    finally:
        device_mod.cuda_available.cache_clear()
        device_mod._cupy_module.cache_clear()

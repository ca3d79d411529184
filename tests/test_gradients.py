"""Gradients of one whole training step (Numba kernels, float64) against central finite
differences of the NumPy reference loss, for every loss, final activation and input mode."""
import numpy as np
import pytest

from gru_engine import params as hp
from gru_engine.backends import cpu
from gru_engine.model import init_params
import reference as ref

MODES = {"onehot": cpu.ONEHOT, "embedding": cpu.EMBEDDING, "constrained": cpu.CONSTRAINED}
N_ITEMS, BATCH, N_SAMPLE = 9, 4, 3


def _problem(mode, layers, seed, p_embed=0.0, p_hidden=0.0, B=BATCH):
    """Random parameters (float64, perturbed biases), inputs, hidden states and masks."""
    rng = np.random.default_rng(seed)
    P = init_params(N_ITEMS, layers, mode, 3, rng, dtype=np.float64)
    for key in ("bx", "bhn"):
        for b in P[key]:
            b[:] = rng.normal(0, 0.3, b.shape)
    P["By"][:] = rng.normal(0, 0.3, N_ITEMS)
    P["Wy"] *= 3.0  # scores of a useful spread
    in_items = rng.integers(0, N_ITEMS, B).astype(np.int32)
    in_items[1] = in_items[0]  # a repeated input item: its sparse rows must be summed
    cols = np.concatenate([rng.integers(0, N_ITEMS, B), rng.integers(0, N_ITEMS, N_SAMPLE)])
    cols[B] = cols[0]  # a sampled negative equal to a positive (never masked)
    cols = cols.astype(np.int32)
    hprev = [rng.normal(0, 0.5, (B, h)) for h in layers]
    for h in hprev:
        h[0] = 0.0  # row 0 starts a session
    d0 = 1 if mode == "onehot" else P["Wx"][0].shape[0]

    def mask(shape, p):
        if p == 0:
            return np.ones(shape)
        return np.where(rng.random(shape) < p, 0.0, 1.0 / (1.0 - p))

    mask0 = mask((B, d0), p_embed)
    masks = [mask((B, h), p_hidden) for h in layers]
    lq = rng.normal(0, 1, B + N_SAMPLE)
    return P, in_items, cols, hprev, mask0, masks, lq


def numba_step_gradients(P, mode, in_items, cols, hprev, mask0, masks, lq, loss, act, logq,
                         bpreg, elu):
    """(loss, {block name: dense gradient}) from the compiled step."""
    B, C = len(in_items), len(cols)
    act_code, act_param = hp.parse_final_act(act)
    tr = cpu.CPUTrainer(P, MODES[mode], N_ITEMS, np.ones(N_ITEMS), BATCH, C - B, 0.5, 100,
                        hp.LOSS_CODES[loss], act_code, act_param, logq, bpreg, elu, 0.1, 0.0,
                        0.0, 0.0)
    for l, h in enumerate(hprev):
        tr.hprev[l][:B] = h
        tr.mask[l][:B] = masks[l]
    tr.mask0[:B] = mask0
    tr.lq[:C] = lq
    total = tr.forward_backward(in_items, B, cols, C)
    g = {}
    for key, tup in (("Wx", tr.gWx), ("bx", tr.gbx), ("Wh", tr.gWh), ("bhn", tr.gbhn)):
        for l, a in enumerate(tup):
            g[f"{key}[{l}]"] = a.copy()
    nY, n_out, nI = tr.counts
    gWy, gBy = np.zeros_like(P["Wy"]), np.zeros_like(P["By"])
    gWy[tr.rowsY[:nY]] = tr.GY[:nY]
    gBy[tr.rowsY[:n_out]] = tr.gBy[:n_out]
    g["Wy"], g["By"] = gWy, gBy
    if mode == "onehot":
        dense = np.zeros_like(P["Wx"][0])
        dense[tr.rowsI[:nI]] = tr.GI[:nI]
        g["Wx[0]"] = dense
    if mode == "embedding":
        dense = np.zeros_like(P["E"])
        dense[tr.rowsI[:nI]] = tr.GI[:nI]
        g["E"] = dense
    return total, g


def check(mode="constrained", layers=(4,), loss="cross-entropy", act="linear", logq=0.0,
          bpreg=0.0, elu=0.0, p_embed=0.0, p_hidden=0.0, seed=0, B=BATCH):
    P, in_items, cols, hprev, mask0, masks, lq = _problem(mode, list(layers), seed, p_embed,
                                                          p_hidden, B)
    kw = dict(loss=loss, act=act, logq=logq, lq=lq, bpreg=bpreg, elu=elu, batch_size=BATCH)
    f = lambda Q: ref.step_loss(Q, mode, in_items, hprev, cols, mask0, masks, **kw)
    expected_loss = f(P)
    fd = ref.fd_gradients(f, P)
    total, g = numba_step_gradients(P, mode, in_items, cols, hprev, mask0, masks, lq, loss, act,
                                    logq, bpreg, elu)
    assert total == pytest.approx(expected_loss, rel=1e-12, abs=1e-14)
    assert set(fd) == set(g)
    for name in fd:
        scale = max(np.linalg.norm(fd[name]), 1e-8)
        err = np.linalg.norm(g[name] - fd[name]) / scale
        assert err < 1e-6, f"{name}: relative error {err:.2e} ({loss}, {act}, {mode})"
    return fd


@pytest.mark.parametrize("loss", ref.LOSSES)
@pytest.mark.parametrize("mode", ["onehot", "embedding", "constrained"])
def test_every_loss_and_input_mode(loss, mode):
    check(mode=mode, loss=loss)


@pytest.mark.parametrize("act", ["linear", "relu", "tanh", "leaky-0.1", "elu-0.5"])
@pytest.mark.parametrize("loss", ref.LOSSES)
def test_every_final_activation(act, loss):
    check(loss=loss, act=act, seed=1)


@pytest.mark.parametrize("loss", ref.LOSSES)
def test_two_layers_with_dropout(loss):
    check(mode="constrained", layers=(4, 3), loss=loss, p_embed=0.3, p_hidden=0.4, seed=2)


@pytest.mark.parametrize("mode", ["onehot", "embedding"])
def test_two_layers_other_inputs_with_dropout(mode):
    check(mode=mode, layers=(3, 4), p_embed=0.5, p_hidden=0.3, seed=3)


@pytest.mark.parametrize("logq", [0.0, 1.0, 0.5])
def test_cross_entropy_logq(logq):
    check(loss="cross-entropy", logq=logq, seed=4)


@pytest.mark.parametrize("bpreg,elu", [(0.0, 0.0), (1.95, 0.0), (0.0, 0.5), (0.9, 1.0)])
def test_bpr_max_regularisation_and_elu(bpreg, elu):
    check(loss="bpr-max", bpreg=bpreg, elu=elu, seed=5)


def test_shrunk_batch_still_divides_by_batch_size():
    check(B=2, seed=6)


def test_touched_rows_only():
    """Rows of Wy/By outside the step's columns (and inputs) get exactly zero gradient."""
    P, in_items, cols, hprev, mask0, masks, lq = _problem("constrained", [4], 7)
    _, g = numba_step_gradients(P, "constrained", in_items, cols, hprev, mask0, masks, lq,
                                "cross-entropy", "linear", 0.0, 0.0, 0.0)
    untouched = np.setdiff1d(np.arange(N_ITEMS), np.concatenate([cols, in_items]))
    assert np.all(g["Wy"][untouched] == 0)
    assert np.all(g["By"][np.setdiff1d(np.arange(N_ITEMS), cols)] == 0)

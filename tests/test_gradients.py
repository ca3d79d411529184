"""Gradients of one whole training step (Numba kernels, float64) against central finite
differences of the NumPy reference loss, for every loss, final activation and input mode."""
import numpy as np
import pytest

from gru_engine import params as hp
from gru_engine.backends.cpu import Trainer
from gru_engine.network import L_H, L_HOFF, PARAM_KEYS, build_layout, subnet_views
import naive as ref

N_ITEMS, BATCH, N_SAMPLE = 9, 4, 3


def id_network(mode, layers, rng, n_items=N_ITEMS, embedding=3):
    """(flat float64 parameters of the ID-only network, their per-layer dict as the reference
    reads it: ``Wx``, ``bx``, ``Wh``, ``bhn`` lists, ``Wy``, ``By``, ``E``; views of the same
    memory)."""
    lay = build_layout(n_items, "id", "concat", mode, list(layers), embedding, list(layers), [],
                       rng, np.float64)
    flat = {k: lay[k] for k in PARAM_KEYS}
    return flat, layer_dict(flat, mode)


def layer_dict(flat, mode) -> dict:
    """Per-layer views (reference layout) of an ID-only network's parameters or gradients."""
    v = subnet_views(flat, 0)
    P = {"Wx": [v["table"] if w is None else w for w in v["Wx"]], "bx": v["bx"], "Wh": v["Wh"],
         "bhn": v["bhn"], "Wy": flat["Wy"], "By": flat["By"]}
    if mode == "embedding":
        P["E"] = v["table"]
    return P


def hyper(loss="cross-entropy", act="linear", logq=0.0, bpreg=0.0, elu=0.0, n_sample=N_SAMPLE,
          batch_size=BATCH, lr=0.1, mom=0.0, p_embed=0.0, p_hidden=0.0, alpha=0.5,
          store_size=100):
    return hp.hyper(hp.validate(dict(hp.DEFAULTS, loss=loss, final_act=act, logq=logq,
                                     bpreg=bpreg, elu_param=elu, n_sample=n_sample,
                                     batch_size=batch_size, learning_rate=lr, momentum=mom,
                                     dropout_p_embed=p_embed, dropout_p_hidden=p_hidden,
                                     sample_alpha=alpha, sample_store_size=store_size)))


def _problem(mode, layers, seed, p_embed=0.0, p_hidden=0.0, B=BATCH):
    """Random parameters (float64, perturbed biases), inputs, hidden states and masks."""
    rng = np.random.default_rng(seed)
    flat, P = id_network(mode, layers, rng)
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
    return flat, P, in_items, cols, hprev, mask0, masks, lq


def numba_step_gradients(flat, mode, in_items, cols, hprev, mask0, masks, lq, loss, act, logq,
                         bpreg, elu):
    """(loss, {block name: dense gradient}) from the compiled step of the CPU trainer."""
    B, C = len(in_items), len(cols)
    tr = Trainer(flat, hyper(loss, act, logq, bpreg, elu, n_sample=C - B), np.ones(N_ITEMS))
    LI, wk = flat["LI"], tr.work
    for l, h in enumerate(hprev):
        H, off = LI[l, L_H], LI[l, L_HOFF]
        wk.HP[BATCH * off:BATCH * (off + H)].reshape(BATCH, H)[:B] = h
        wk.MK[BATCH * off:BATCH * (off + H)].reshape(BATCH, H)[:B] = masks[l]
    width = wk.M0f.size // BATCH
    wk.M0f.reshape(BATCH, width)[:B] = mask0  # a one-hot input's (B, 1) mask: one per row
    tr.out.lq[:C] = lq
    total, grads = tr.forward_backward(in_items, B, cols, C)
    G = layer_dict(dict(flat, **grads), mode)
    g = {}
    for key in ("Wx", "bx", "Wh", "bhn"):
        for l, a in enumerate(G[key]):
            g[f"{key}[{l}]"] = np.array(a)
    g["Wy"], g["By"] = grads["Wy"], grads["By"]
    if mode == "embedding":
        g["E"] = np.array(G["E"])
    return total, g


def check(mode="constrained", layers=(4,), loss="cross-entropy", act="linear", logq=0.0,
          bpreg=0.0, elu=0.0, p_embed=0.0, p_hidden=0.0, seed=0, B=BATCH):
    flat, P, in_items, cols, hprev, mask0, masks, lq = _problem(mode, list(layers), seed,
                                                                p_embed, p_hidden, B)
    kw = dict(loss=loss, act=act, logq=logq, lq=lq, bpreg=bpreg, elu=elu, batch_size=BATCH)
    f = lambda Q: ref.step_loss(Q, mode, in_items, hprev, cols, mask0, masks, **kw)
    expected_loss = f(P)
    fd = ref.fd_gradients(f, P)
    total, g = numba_step_gradients(flat, mode, in_items, cols, hprev, mask0, masks, lq, loss,
                                    act, logq, bpreg, elu)
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
    flat, P, in_items, cols, hprev, mask0, masks, lq = _problem("constrained", [4], 7)
    _, g = numba_step_gradients(flat, "constrained", in_items, cols, hprev, mask0, masks, lq,
                                "cross-entropy", "linear", 0.0, 0.0, 0.0)
    untouched = np.setdiff1d(np.arange(N_ITEMS), np.concatenate([cols, in_items]))
    assert np.all(g["Wy"][untouched] == 0)
    assert np.all(g["By"][np.setdiff1d(np.arange(N_ITEMS), cols)] == 0)

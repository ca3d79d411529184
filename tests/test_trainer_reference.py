"""The CPU trainer (``backends/cpu``) of every network against the naive p-RNN of
``tests/naive.py`` (float64): the step's loss and gradients for every architecture x combine
mode x input kind, with non-trivial hidden states, dropout masks and logQ; which parameters a
phase trains; and whole epochs of each training strategy (parameters after the epochs equal the
reference update rule's to float64 rounding)."""
import copy

import numpy as np
import pytest

import naive
from gru_engine import params as hp
from gru_engine.backends.cpu import Trainer
from gru_engine.data import ItemIndex
from gru_engine.features import (CategoricalFeatures, DenseFeatures, TokenFeatures,
                                 encode_item_features)
from gru_engine.network import (K_DIRECT, K_RAW, L_H, L_HOFF, PARAM_KEYS, S_A, S_IN, S_IPOFF,
                                S_KIND, S_TAB, S_WYC0, T_WY, build_layout, epoch_plan,
                                subnet_views)
from gru_engine.sampling import seed_numba

N_ITEMS = 12
IDS = np.arange(100, 100 + N_ITEMS - 2)  # the last two items have no features (defaults)
BS = 4


def feature_specs(kinds):
    r = np.random.default_rng(1)
    all_ = {
        "dense": DenseFeatures(IDS, r.normal(size=(len(IDS), 5)) * (r.random((len(IDS), 5)) < 0.7)),
        "proj": DenseFeatures(IDS[:8], r.normal(size=(8, 4)), project=3),
        "cat": CategoricalFeatures(IDS, r.integers(0, 3, (len(IDS), 2)), dim=3),
        "multi": CategoricalFeatures(IDS, [[1, 2], [3], [1, 4, 5], [], [2], [2, 3], [1], [5],
                                           [4], [3, 3]], dim=3, pooling="mean"),
        "tok": TokenFeatures(IDS, ["a b c", "b", "c c d", "", "a", "x y", "z", "a a", "b", "q"],
                             dim=3, n_buckets=5),
    }
    return {k: all_[k] for k in kinds}


def network(arch, combine, mode, kinds, layers=(4,), flayers=(3,), seed=0):
    """Flat float64 parameters of a network (package layout), with spread-out values."""
    rng = np.random.default_rng(seed)
    enc = encode_item_features(feature_specs(kinds), ItemIndex(np.arange(N_ITEMS) + 100))
    if combine == "sum":
        flayers = tuple(flayers[:-1]) + (layers[-1],)
    lay = build_layout(N_ITEMS, arch, combine, mode, list(layers), 3, list(flayers), enc, rng,
                       np.float64)
    params = {k: lay[k] for k in PARAM_KEYS}
    params["Wy"] *= 3
    params["T"] *= 2
    th = params["theta"]
    th += rng.normal(0, 0.1, th.shape)  # biases away from zero, combine weights away from 1
    params["By"][:] = rng.normal(0, 0.3, N_ITEMS)
    return params, lay["names"]


def to_naive(params):
    """The network of ``params`` as ``naive`` reads it (copies: training moves ``params``)."""
    params = copy.deepcopy(params)
    SI = params["SI"]
    subs = []
    for s in range(SI.shape[0]):
        v = subnet_views(params, s)
        ip = params["indptr"][SI[s, S_IPOFF]:SI[s, S_IPOFF] + N_ITEMS + 1]
        bags = [[(int(params["indices"][j]), float(params["weights"][j]))
                 for j in range(ip[i], ip[i + 1])] for i in range(N_ITEMS)]
        kind = ("onehot" if SI[s, S_KIND] == K_DIRECT else "raw" if SI[s, S_KIND] == K_RAW
                else "wy" if SI[s, S_TAB] == T_WY else "table")
        subs.append({"input": kind, "bags": bags, "in_dim": int(SI[s, S_IN]),
                     "table": v["table"], "wy_col0": int(SI[s, S_WYC0]), "Wx": v["Wx"],
                     "bx": v["bx"], "Wh": v["Wh"], "bhn": v["bhn"], "weight": v["weight"],
                     "columns": v["columns"]})
    combine = "sum" if SI[0, S_A] >= 0 else "concat"
    return {"combine": combine, "Wy": params["Wy"], "By": params["By"], "subnets": subs}


def to_flat(params, net_or_grads, grads=False, train=None):
    """``theta`` and ``T`` of the package layout holding the naive network's parameters (or,
    with ``grads``, its gradients of the subnets in ``train``; zero elsewhere)."""
    SI = params["SI"]
    holder = dict(params, theta=np.zeros_like(params["theta"]), T=np.zeros_like(params["T"]))
    for s in range(SI.shape[0]):
        src = net_or_grads["subnets"][s]
        if src is None or (train is not None and not train[s]):
            continue
        v = subnet_views(holder, s)
        for key in ("Wx", "bx", "Wh", "bhn"):
            for dst, a in zip(v[key], src[key]):
                if dst is not None:
                    dst[...] = a
        if v["table"] is not None:
            v["table"][...] = src["table"]
        if SI[s, S_A] >= 0:
            holder["theta"][SI[s, S_A]] = src["weight"]
    return holder["theta"], holder["T"]


def hyper(loss="cross-entropy", act="linear", n_sample=3, **kw):
    return hp.hyper(hp.validate(dict(hp.DEFAULTS, loss=loss, final_act=act, batch_size=BS,
                                     n_sample=n_sample, sample_store_size=10_000, **kw)))


def random_masks(params, rng, p=0.3):
    """Inverted-dropout masks of BS rows per subnet (naive form) and for the trainer."""
    SI = params["SI"]
    drop = lambda shape: np.where(rng.random(shape) < p, 0.0, 1 / (1 - p))
    naive_masks, m0s, mks = [], [], []
    for s in range(SI.shape[0]):
        v = subnet_views(params, s)
        din = int(SI[s, S_IN])
        if SI[s, S_KIND] == K_DIRECT:  # one factor per row for the one-hot input
            col = drop((BS, 1))
            m0s.append(np.repeat(col, din, axis=1))
        else:
            col = drop((BS, din))
            m0s.append(col)
        hid = [drop((BS, w.shape[0])) for w in v["Wh"]]
        mks += hid
        naive_masks.append({"input": col, "hidden": hid})
    return naive_masks, m0s, mks


# ---------------------------------------------------------------------------------------------
# one step: loss and gradients
# ---------------------------------------------------------------------------------------------
def check_step(params, names, loss="cross-entropy", act="linear", active=None, train=None,
               freeze_out=False, seed=0, B=BS):
    rng = np.random.default_rng(seed)
    S = params["SI"].shape[0]
    active = [True] * S if active is None else active
    train = [True] * S if train is None else train
    logq = 1.0 if loss == "cross-entropy" else 0.0
    bpreg, elu = (0.7, 0.5) if loss == "bpr-max" else (0.0, 0.0)
    tr = Trainer(params, hyper(loss, act, logq=logq, bpreg=bpreg, elu_param=elu),
                 np.ones(N_ITEMS, np.int64), sum_mode=params["SI"][0, S_A] >= 0, names=names)
    tr.set_phase(active, train, freeze_out=freeze_out)
    nmasks, m0s, mks = random_masks(params, rng)
    tr.fix_dropout_masks(m0s, mks)
    LI = params["LI"]
    hprev_flat = [rng.normal(0, 0.5, (BS, LI[g, L_H])) for g in range(LI.shape[0])]
    for g, h in enumerate(hprev_flat):
        off, H = LI[g, L_HOFF], LI[g, L_H]
        h[0] = 0.0  # row 0 starts a session
        tr.work.HP[BS * off:BS * (off + H)].reshape(BS, H)[:] = h
    in_items = rng.integers(0, N_ITEMS, B).astype(np.int32)
    in_items[1] = in_items[0]  # a repeated input: its sparse rows must be summed
    in_items[-1] = N_ITEMS - 1  # an item without features (default bags)
    cols = np.concatenate([rng.integers(0, N_ITEMS, B), rng.integers(0, N_ITEMS, 3)])
    cols[B] = cols[0]  # a sampled negative equal to a target (never masked)
    cols = cols.astype(np.int32)
    lq = rng.normal(0, 1, len(cols))
    tr.out.lq[:len(cols)] = lq
    loss_t, g_t = tr.forward_backward(in_items, B, cols, len(cols))

    net = to_naive(params)
    SI = params["SI"]
    hprev, g = [], 0
    for s in range(S):
        n_layers = len(net["subnets"][s]["Wh"])
        hprev.append([h[:B] for h in hprev_flat[g:g + n_layers]])
        g += n_layers
    masks = [{"input": m["input"][:B], "hidden": [x[:B] for x in m["hidden"]]} for m in nmasks]
    loss_n, g_n = naive.pnet_backward(net, in_items, hprev, cols, loss, masks, active, act,
                                      logq * lq if logq else None, bpreg, elu, BS)
    assert loss_t == pytest.approx(loss_n, rel=1e-12)
    trained = [a and t for a, t in zip(active, train)]
    theta, T = to_flat(params, g_n, grads=True, train=trained)
    wy = g_n["Wy_out"] + sum(g_n["Wy_in"] for s in range(S)
                             if trained[s] and SI[s, S_TAB] == T_WY)
    for key, want in (("theta", theta), ("T", T), ("Wy", wy), ("By", g_n["By"])):
        np.testing.assert_allclose(g_t[key], want, rtol=1e-10, atol=1e-13, err_msg=key)
        if key != "T" or T.any():
            assert np.abs(want).max() > 1e-6, f"{key}: no gradient at all (a weak test)"
    return g_t


ID_MODES = ["onehot", "embedding", "constrained"]
ALL_KINDS = ["dense", "proj", "cat", "multi", "tok"]


@pytest.mark.parametrize("combine", ["concat", "sum"])
@pytest.mark.parametrize("mode", ID_MODES)
def test_id_network(mode, combine):
    check_step(*network("id", combine, mode, []))


@pytest.mark.parametrize("combine", ["concat", "sum"])
@pytest.mark.parametrize("mode", ID_MODES)
def test_parallel_network_every_input_kind(mode, combine):
    check_step(*network("parallel", combine, mode, ALL_KINDS), seed=1)


@pytest.mark.parametrize("combine", ["concat", "sum"])
def test_feature_network_every_input_kind(combine):
    check_step(*network("feature", combine, "constrained", ALL_KINDS), seed=2)


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_each_feature_kind_alone(kind):
    check_step(*network("feature", "concat", "constrained", [kind]), seed=3)


@pytest.mark.parametrize("loss,act", [("bpr-max", "linear"), ("top1-max", "tanh"),
                                      ("bpr", "leaky-0.1"), ("top1", "linear"),
                                      ("cross-entropy", "elu-0.5"), ("cross-entropy", "relu")])
def test_losses_final_activations_stacked_layers(loss, act):
    check_step(*network("parallel", "concat", "constrained", ["cat", "tok"], layers=(4, 3),
                        flayers=(2, 3)), loss=loss, act=act, seed=4)


@pytest.mark.parametrize("combine", ["concat", "sum"])
def test_stacked_sum_network_with_onehot_input(combine):
    check_step(*network("parallel", combine, "onehot", ["multi", "dense"], layers=(3, 4),
                        flayers=(4, 4)), seed=5)


@pytest.mark.parametrize("active,train", [
    ([True, True, False], [False, True, False]),   # residual phase 1
    ([True, True, True], [False, False, True]),    # alternating / interleaved, tok trains
    ([True, True, True], [True, False, False]),    # the ID subnet trains alone
])
def test_phases_train_only_their_subnets(active, train):
    """Frozen subnets get no gradient at all (nor their constrained-input rows of Wy); an
    inactive subnet does not enter the loss."""
    params, names = network("parallel", "concat", "constrained", ["cat", "tok"])
    check_step(params, names, active=active, train=train, freeze_out=not all(active), seed=6)


# ---------------------------------------------------------------------------------------------
# whole epochs of each strategy
# ---------------------------------------------------------------------------------------------
def sessions(seed=0, n_sessions=7):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, 5, n_sessions)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    items = rng.integers(0, N_ITEMS, offsets[-1]).astype(np.int32)
    items[:N_ITEMS] = np.arange(N_ITEMS)  # every item has support
    return items, offsets, rng.permutation(n_sessions).astype(np.int64)


STRATEGY_CASES = [(s, c) for s in naive.STRATEGIES for c in ("concat", "sum")
                  if not (s == "residual" and c == "sum")]


@pytest.mark.parametrize("strategy,combine", STRATEGY_CASES)
def test_strategy_epochs_match_reference_update(strategy, combine):
    """Three epochs (a few steps each) over [id, cat, tok]: which subnet trains when, the frozen
    output blocks of 'residual', dropout, momentum, logQ: the parameters after the fit and every
    epoch's loss are the reference's."""
    params, names = network("parallel", combine, "constrained", ["cat", "tok"], seed=7)
    net = to_naive(params)
    S, n_epochs, n_sample, lr, mom, alpha = 3, 3, 3, 0.1, 0.3, 0.5
    items, offsets, order = sessions()
    support = np.bincount(items, minlength=N_ITEMS)
    tr = Trainer(params, hyper(n_sample=n_sample, learning_rate=lr, momentum=mom,
                               sample_alpha=alpha, logq=1.0),
                 support, sum_mode=combine == "sum", plan=epoch_plan(strategy, S, n_epochs),
                 names=names)
    nmasks, m0s, mks = random_masks(params, np.random.default_rng(8), p=0.25)
    tr.fix_dropout_masks(m0s, mks)
    seed_numba(5)
    tr.fill_store()
    negatives = tr.store.samples.copy()
    got = []
    for _ in range(n_epochs):
        tr.start_epoch(items, order, offsets)
        loss_sum, events, finite = tr.run(-1)
        assert finite
        got.append((loss_sum, events))
    epochs = [naive.reference_schedule(items, offsets, order, BS, 1, with_src=True)] * n_epochs
    n_steps = sum(len(e) for e in epochs)
    assert n_steps * n_sample <= len(negatives)  # the store was not redrawn
    losses, _ = naive.pnet_train(net, epochs, negatives[:n_steps * n_sample], strategy, BS,
                                 n_epochs, "cross-entropy", lr, mom, masks=nmasks, logq=1.0,
                                 log_support=np.log(np.maximum(support, 1)), sample_alpha=alpha)
    t = 0
    for (loss_sum, events), steps in zip(got, epochs):
        rows = [len(s[0]) for s in steps]
        assert events == sum(rows)
        assert loss_sum == pytest.approx(sum(l * b for l, b in zip(losses[t:], rows)), rel=1e-10)
        t += len(steps)
    theta, T = to_flat(params, net)
    for key, want in (("theta", theta), ("T", T), ("Wy", net["Wy"]), ("By", net["By"])):
        np.testing.assert_allclose(params[key], want, rtol=1e-9, atol=1e-12, err_msg=key)

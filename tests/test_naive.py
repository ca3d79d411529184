"""The naive reference itself (``tests/naive.py``): every gradient it computes against central
finite differences of its own forward functions, its GRU4Rec step against the p-RNN of one ID
subnet (the two formulations of the same network must agree), and the rules that cannot be
differentiated (Adagrad, ranks, the strategies' phases) against hand-written expectations."""
import zlib

import numpy as np
import pytest

import naive

ACTS = ["linear", "relu", "tanh", "leaky-0.1", "elu-0.5"]


def _rel(a, b):
    a, b = np.asarray(a, float), np.asarray(b, float)
    return np.linalg.norm(a - b) / max(np.linalg.norm(a) + np.linalg.norm(b), 1e-300)


# ---- GRU cell, final activation, losses -----------------------------------------------------
def test_gru_backward_matches_finite_differences():
    rng = np.random.default_rng(0)
    B, H = 3, 4
    gx, gh, bhn, hp = (rng.standard_normal(s) for s in ((B, 3 * H), (B, 3 * H), H, (B, H)))
    reset = np.array([0, 1, 0])
    mask = rng.random((B, H)) * 2
    dh = rng.standard_normal((B, H))
    d_gx, d_gh = naive.gru_backward(dh, gx, gh, bhn, hp, reset, mask)
    f = lambda: np.sum(dh * naive.gru_forward(gx, gh, bhn, hp, reset, mask)[0])
    assert _rel(d_gx, naive.numerical_gradient(f, gx)) < 1e-8
    num = naive.numerical_gradient(f, gh)
    assert np.all(num[reset == 1] == 0)  # a reset row ignores its previous state
    assert _rel(d_gh[reset == 0], num[reset == 0]) < 1e-8
    # the n block of gh enters as gh_n + bhn: same gradient for bhn
    assert _rel(d_gh[:, 2 * H:].sum(0), naive.numerical_gradient(f, bhn)) < 1e-8


def test_gru_cell_is_gru_forward_without_reset():
    rng = np.random.default_rng(1)
    gx, h, Wh, bhn = (rng.standard_normal(s) for s in ((3, 12), (3, 4), (4, 12), 4))
    np.testing.assert_allclose(naive.gru_cell(gx, h, Wh, bhn),
                               naive.gru_forward(gx, h @ Wh, bhn, h, np.zeros(3))[0], rtol=1e-14)
    # z = 1 keeps the state, z = 0 takes the candidate: check one row by hand
    H = 4
    z = naive.sigmoid(gx[0, H:2 * H] + (h @ Wh)[0, H:2 * H])
    r = naive.sigmoid(gx[0, :H] + (h @ Wh)[0, :H])
    n = np.tanh(gx[0, 2 * H:] + r * ((h @ Wh)[0, 2 * H:] + bhn))
    np.testing.assert_allclose(naive.gru_cell(gx, h, Wh, bhn)[0], (1 - z) * n + z * h[0])


@pytest.mark.parametrize("act", ACTS)
def test_final_activation_gradient_matches_finite_differences(act):
    x = np.linspace(-2.3, 2.1, 23)  # never exactly at the kinks
    d = naive.final_act_grad(act, x)
    eps = 1e-6
    num = (naive.final_act(act, x + eps) - naive.final_act(act, x - eps)) / (2 * eps)
    np.testing.assert_allclose(d, num, rtol=1e-7, atol=1e-9)
    kind, param = naive.parse_act(act)
    np.testing.assert_array_equal(naive.final_act(kind, x, param), naive.final_act(act, x))


@pytest.mark.parametrize("name,kw", [
    ("cross-entropy", {}), ("cross-entropy", {"corr": "yes"}), ("bpr-max", {}),
    ("bpr-max", {"bpreg": 0.9, "elu": 1.0}), ("top1-max", {}), ("bpr", {}), ("top1", {})])
def test_loss_gradient_matches_finite_differences(name, kw):
    rng = np.random.default_rng(2)
    S = rng.normal(0, 1.5, (4, 7))
    if kw.get("corr"):
        kw = dict(kw, corr=rng.normal(0, 1, 7))
    G = naive.loss_grad(name, S, **kw)
    num = np.zeros_like(S)
    for i in range(4):
        num[i] = naive.numerical_gradient(lambda: naive.loss_rows(name, S, **kw)[i], S)[i]
    np.testing.assert_allclose(G, num, rtol=1e-6, atol=1e-9)


def test_losses_by_hand():
    S = np.array([[2.0, 0.0, 1.0]])
    np.testing.assert_allclose(naive.loss_rows("cross-entropy", S),
                               [-np.log(np.exp(2) / (np.exp(2) + 1 + np.exp(1)))])
    np.testing.assert_allclose(naive.loss_rows("bpr", S),
                               [(np.log1p(np.exp(-2)) + np.log1p(np.exp(-1))) / 2])
    s = np.exp([0.0, 1.0]) / np.exp([0.0, 1.0]).sum()
    np.testing.assert_allclose(naive.loss_rows("bpr-max", S),
                               [-np.log(s[0] * naive.sigmoid(2) + s[1] * naive.sigmoid(1))])


# ---- optimiser, ranking, schedule -----------------------------------------------------------
@pytest.mark.parametrize("mom", [0.0, 0.4])
def test_adagrad_by_hand(mom):
    p, g, acc, v = np.array([1.0]), np.array([0.5]), np.array([0.25]), np.array([0.1])
    new_p, new_acc, new_v = naive.adagrad(p, g, acc, v, 0.1, mom)
    step = 0.5 / np.sqrt(0.5 + 1e-6)
    assert new_acc[0] == 0.5
    if mom:
        assert new_v[0] == pytest.approx(0.4 * 0.1 - 0.1 * step, rel=1e-15)
        assert new_p[0] == pytest.approx(1.0 + new_v[0], rel=1e-15)
    else:
        assert new_p[0] == pytest.approx(1.0 - 0.1 * step, rel=1e-15) and new_v[0] == 0.1


def test_sparse_adagrad_sums_duplicates_and_leaves_other_rows():
    rng = np.random.default_rng(3)
    p, acc, v = rng.random((5, 2)), rng.random((5, 2)), rng.random((5, 2))
    G = rng.normal(size=(3, 2))
    new = naive.adagrad_sparse(p, G, [1, 3, 1], acc, v, 0.2, 0.3)
    want = naive.adagrad(p[1], G[0] + G[2], acc[1], v[1], 0.2, 0.3)
    for a, w in zip(new, want):
        np.testing.assert_allclose(a[1], w)
    for a, old in zip(new, (p, acc, v)):
        np.testing.assert_array_equal(a[[0, 2, 4]], old[[0, 2, 4]])


def test_ranks_and_topk_by_hand():
    S = np.array([[1.0, 3.0, 3.0, 0.0]])
    assert naive.ranks(S, [1], "conservative")[0] == 2
    assert naive.ranks(S, [1], "optimistic")[0] == 1
    assert naive.ranks(S, [1], "median")[0] == 1.5
    assert naive.ranks(S, [3], "conservative")[0] == 4
    idx, vals = naive.topk(S, 3)
    assert idx.tolist() == [[1, 2, 0]] and vals.tolist() == [[3.0, 3.0, 1.0]]


def test_schedule_src_follows_sessions():
    """Sessions of distinct items: every row's input is its source row's target."""
    lengths = np.array([3, 2, 5, 2, 4])
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    items = np.arange(offsets[-1])
    steps = naive.reference_schedule(items, offsets, np.arange(5), 3, 1, with_src=True)
    prev = None
    for inp, tgt, rst, src in steps:
        for r in range(len(inp)):
            if rst[r]:
                assert inp[r] in offsets[:-1]
            else:
                assert inp[r] == prev[src[r]]
        prev = tgt
    assert sum(len(s[0]) for s in steps) == int((lengths - 1).sum())
    assert len(steps[-1][0]) < 3  # the batch shrank at the end


def test_strategy_phases_by_hand():
    P = lambda *a: naive.strategy_phase(*a)
    assert P("simultaneous", 3, 3, 1, 7) == ([True] * 3, [True] * 3, False)
    assert [P("alternating", 3, 4, e, 0)[1] for e in range(4)] == [
        [True, False, False], [False, True, False], [False, False, True], [True, False, False]]
    assert [P("interleaved", 2, 1, 0, t)[1] for t in range(3)] == [[True, False], [False, True],
                                                                   [True, False]]
    res = [P("residual", 2, 5, e, 0) for e in range(5)]  # blocks of 2 epochs, remainder last
    assert [r[0] for r in res] == [[True, False]] * 2 + [[True, True]] * 3
    assert [r[1] for r in res] == [[True, False]] * 2 + [[False, True]] * 3
    assert all(r[2] for r in res)


# ---- the two formulations of the network ----------------------------------------------------
def _id_problem(mode, layers, rng, n=7, emb=3):
    P = {"Wx": [], "bx": [], "Wh": [], "bhn": []}
    n_in = {"onehot": None, "embedding": emb, "constrained": layers[-1]}[mode]
    for l, H in enumerate(layers):
        P["Wx"].append(rng.normal(0, 0.6, (n, 3 * H) if (l == 0 and mode == "onehot") else
                                  (n_in if l == 0 else layers[l - 1], 3 * H)))
        P["bx"].append(rng.normal(0, 0.3, 3 * H))
        P["Wh"].append(rng.normal(0, 0.6, (H, 3 * H)))
        P["bhn"].append(rng.normal(0, 0.3, H))
    P["Wy"] = rng.normal(0, 1.0, (n, layers[-1]))
    P["By"] = rng.normal(0, 0.3, n)
    if mode == "embedding":
        P["E"] = rng.normal(0, 1.0, (n, emb))
    return P


def _as_pnet(P, mode):
    """The same parameters (shared memory) as a p-RNN of one ID subnet."""
    n, H = P["Wy"].shape
    sn = {"input": {"onehot": "onehot", "embedding": "table", "constrained": "wy"}[mode],
          "bags": [[(i, 1.0)] for i in range(n)], "wy_col0": 0,
          "table": {"onehot": P["Wx"][0], "embedding": P.get("E"), "constrained": None}[mode],
          "Wx": [None] + P["Wx"][1:] if mode == "onehot" else list(P["Wx"]), "bx": P["bx"],
          "Wh": P["Wh"], "bhn": P["bhn"], "weight": None, "columns": (0, H)}
    sn["in_dim"] = P["Wx"][0].shape[1] if mode == "onehot" else P["Wx"][0].shape[0]
    return {"combine": "concat", "Wy": P["Wy"], "By": P["By"], "subnets": [sn]}


@pytest.mark.parametrize("mode", ["onehot", "embedding", "constrained"])
@pytest.mark.parametrize("loss", naive.LOSSES)
def test_gru4rec_step_equals_pnet_of_one_id_subnet(mode, loss):
    """``step_loss`` / ``train_step`` (GRU4Rec) and the p-RNN functions compute the same loss
    and the same update on one ID subnet; the p-RNN gradient is the finite-difference one."""
    rng = np.random.default_rng(4)
    layers = [3, 2]
    P = _id_problem(mode, layers, rng)
    inp = np.array([1, 4, 1], np.int64)
    cols = np.array([2, 0, 5, 2, 6], np.int64)
    hprev = [rng.normal(0, 0.5, (3, h)) for h in layers]
    d0 = 1 if mode == "onehot" else P["Wx"][0].shape[0]
    mask0 = rng.uniform(0.5, 1.5, (3, d0))
    masks = [rng.uniform(0.5, 1.5, (3, h)) for h in layers]
    lq = rng.normal(0, 1, 5)
    kw = dict(bpreg=0.7 if loss == "bpr-max" else 0.0, elu=0.5 if loss == "bpr-max" else 0.0)
    logq = 1.0 if loss == "cross-entropy" else 0.0
    want = naive.step_loss(P, mode, inp, hprev, cols, mask0, masks, loss, "elu-0.5", logq, lq,
                           batch_size=4, **kw)
    net = _as_pnet(P, mode)
    pm = [{"input": mask0, "hidden": masks}]
    corr = logq * lq if logq else None
    args = (net, inp, [hprev], cols, loss, pm, None, "elu-0.5", corr, kw["bpreg"], kw["elu"], 4)
    assert naive.pnet_loss(*args) == pytest.approx(want, rel=1e-13)
    total, g = naive.pnet_backward(*args)
    assert total == pytest.approx(want, rel=1e-13)
    fd = naive.fd_gradients(lambda Q: naive.step_loss(Q, mode, inp, hprev, cols, mask0, masks,
                                                      loss, "elu-0.5", logq, lq, batch_size=4,
                                                      **kw), P, eps=1e-6)
    G = g["subnets"][0]
    Wx0 = G["table"] if mode == "onehot" else G["Wx"][0]
    assert _rel(Wx0, fd["Wx[0]"]) < 1e-7
    for key in ("Wx", "bx", "Wh", "bhn"):
        for l in range(len(layers)):
            if not (key == "Wx" and l == 0):
                assert _rel(G[key][l], fd[f"{key}[{l}]"]) < 1e-7, (key, l)
    assert _rel(g["Wy_out"] + g["Wy_in"], fd["Wy"]) < 1e-7
    assert _rel(g["By"], fd["By"]) < 1e-7
    if mode == "embedding":
        assert _rel(G["table"], fd["E"]) < 1e-7
    # one whole step: train_step's update = the p-RNN's update rule
    hyper = dict(mode=mode, loss=loss, batch_size=4, logq_corr=corr, final_act=(4, 0.5),
                 lr=0.1, momentum=0.3, **kw)
    zeros = lambda: {k: ([np.zeros_like(a) for a in v] if isinstance(v, list) else
                         np.zeros_like(v)) for k, v in P.items()}
    batch = dict(in_items=inp, out_items=cols[:3], reset=np.zeros(3), sample=cols[3:],
                 masks={"embed": mask0[:, 0] if mode == "onehot" else mask0, "hidden": masks})
    loss_t, P2, _, _, _ = naive.train_step(P, zeros(), zeros(), hprev, batch, hyper)
    assert loss_t == pytest.approx(want, rel=1e-13)
    naive.pnet_update(net, naive.pnet_opt_state(net), g, inp, cols, [True], [True], False,
                      0.1, 0.3)
    for (name, a), (_, b) in zip(naive.param_blocks(P), naive.param_blocks(P2)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14, err_msg=name)


# ---- the p-RNN in every architecture, combine mode and input kind ---------------------------
def random_pnet(kinds, combine, rng, n_items=8, layers=None, H=3):
    """A p-RNN with one subnet per entry of ``kinds`` ('onehot', 'embedding', 'constrained',
    'cat' (two codes per item), 'multi' (mean of 0-3 codes), 'raw', 'proj' (dense projected),
    'tok' (repeated tokens)), random parameters and bags."""
    layers = layers or {}
    subs, c0 = [], 0
    for k in kinds:
        lay = layers.get(k, [H])
        sn = {"Wx": [], "bx": [], "Wh": [], "bhn": [], "wy_col0": 0, "table": None}
        if k in ("onehot", "embedding", "constrained"):
            sn["bags"] = [[(i, 1.0)] for i in range(n_items)]
        elif k == "cat":
            sn["bags"] = [[(int(rng.integers(3)), 1.0), (3 + int(rng.integers(2)), 1.0)]
                          for _ in range(n_items)]
        elif k == "multi":
            sn["bags"] = []
            for _ in range(n_items):
                codes = rng.choice(5, size=rng.integers(0, 4), replace=False)
                sn["bags"].append([(int(c), 1.0 / len(codes)) for c in codes] or [(5, 1.0)])
        elif k in ("raw", "proj"):
            sn["bags"] = [[(c, float(rng.normal())) for c in range(4) if rng.random() < 0.7]
                          for _ in range(n_items)]
        else:  # tokens: repeated tokens count repeatedly
            sn["bags"] = [[(int(t), 1.0 / 3) for t in rng.integers(0, 4, 3)]
                          for _ in range(n_items)]
        sn["input"] = {"onehot": "onehot", "constrained": "wy", "raw": "raw"}.get(k, "table")
        rows = {"embedding": n_items, "cat": 5, "multi": 6, "proj": 4, "tok": 4}.get(k)
        in_dim = {"onehot": 3 * lay[0], "constrained": None, "raw": 4}.get(k, 2)
        sn["in_dim"] = in_dim
        if sn["input"] == "onehot":
            sn["table"] = rng.normal(0, 0.7, (n_items, in_dim))
        elif rows is not None:
            sn["table"] = rng.normal(0, 1.0, (rows, in_dim))
        for l, h in enumerate(lay):
            n_in = in_dim if l == 0 else lay[l - 1]
            sn["Wx"].append(None if (l == 0 and k == "onehot") else
                            rng.normal(0, 0.7, (n_in or lay[-1], 3 * h)))
            sn["bx"].append(rng.normal(0, 0.3, 3 * h))
            sn["Wh"].append(rng.normal(0, 0.7, (h, 3 * h)))
            sn["bhn"].append(rng.normal(0, 0.3, h))
        w = lay[-1]
        sn["columns"] = (0, w) if combine == "sum" else (c0, c0 + w)
        sn["weight"] = float(rng.uniform(0.5, 1.5)) if combine == "sum" else None
        c0 += w
        subs.append(sn)
    Hc = subs[0]["columns"][1] if combine == "sum" else c0
    for sn in subs:
        if sn["input"] == "wy":
            sn["wy_col0"], sn["in_dim"] = sn["columns"][0], sn["columns"][1] - sn["columns"][0]
    return {"combine": combine, "Wy": rng.normal(0, 1.0, (n_items, Hc)),
            "By": rng.normal(0, 0.3, n_items), "subnets": subs}


def _pnet_case(net, rng, B=4, n_sample=3):
    n = net["Wy"].shape[0]
    inp = rng.integers(0, n, B)
    inp[1] = inp[0]
    cols = np.concatenate([rng.integers(0, n, B), rng.integers(0, n, n_sample)])
    hprev = [[rng.normal(0, 0.5, (B, w.shape[0])) for w in sn["Wh"]] for sn in net["subnets"]]
    masks = [{"input": rng.uniform(0.5, 1.5, (B, 1 if sn["input"] == "onehot" else sn["in_dim"])),
              "hidden": [rng.uniform(0.5, 1.5, (B, w.shape[0])) for w in sn["Wh"]]}
             for sn in net["subnets"]]
    return inp, cols, hprev, masks


def check_pnet_gradients(net, rng, loss="cross-entropy", act="linear", active=None):
    inp, cols, hprev, masks = _pnet_case(net, rng)
    corr = rng.normal(0, 1, len(cols)) if loss == "cross-entropy" else None
    kw = dict(masks=masks, active=active, act=act, corr=corr, bpreg=0.4, elu=0.6, batch_size=5)
    f = lambda: naive.pnet_loss(net, inp, hprev, cols, loss, **kw)
    total, g = naive.pnet_backward(net, inp, hprev, cols, loss, **kw)
    assert total == pytest.approx(f(), rel=1e-14)
    pairs = [("Wy", g["Wy_out"] + g["Wy_in"], net["Wy"]), ("By", g["By"], net["By"])]
    for s, sn in enumerate(net["subnets"]):
        if g["subnets"][s] is None:
            continue
        G = g["subnets"][s]
        for key in ("Wx", "bx", "Wh", "bhn"):
            pairs += [(f"{s}.{key}[{l}]", G[key][l], a) for l, a in enumerate(sn[key])
                      if a is not None]
        if sn["table"] is not None:
            pairs.append((f"{s}.table", G["table"], sn["table"]))
        if sn["weight"] is not None:
            holder = np.array([sn["weight"]])

            def f_w(sn=sn, holder=holder):
                sn["weight"] = float(holder[0])
                return f()
            num = naive.numerical_gradient(f_w, holder)[0]
            sn["weight"] = float(holder[0])
            assert G["weight"] == pytest.approx(num, rel=1e-6, abs=1e-10), s
    for name, an, p in pairs:
        num = naive.numerical_gradient(f, p)
        assert _rel(an, num) < 1e-6, name
        assert np.linalg.norm(num) > 0, f"{name}: no gradient (a weak test)"
    return g


ARCH_KINDS = {
    "id": [["onehot"], ["embedding"], ["constrained"]],
    "parallel": [["onehot", "cat", "raw"], ["embedding", "multi", "tok"],
                 ["constrained", "proj", "cat"]],
    "feature": [["cat", "multi"], ["raw", "proj", "tok"]],
}
CASES = [(a, c, tuple(k)) for a, ks in ARCH_KINDS.items() for k in ks for c in ("concat", "sum")]


@pytest.mark.parametrize("arch,combine,kinds", CASES)
def test_pnet_gradients_match_finite_differences(arch, combine, kinds):
    rng = np.random.default_rng(zlib.crc32(repr((arch, combine, kinds)).encode()))
    check_pnet_gradients(random_pnet(kinds, combine, rng), rng)


@pytest.mark.parametrize("loss", ["bpr-max", "top1-max", "bpr", "top1"])
def test_pnet_gradients_ranking_losses_stacked_layers(loss):
    rng = np.random.default_rng(6)
    net = random_pnet(["constrained", "tok", "raw"], "concat", rng,
                      layers={"constrained": [3, 2], "tok": [2, 3]})
    check_pnet_gradients(net, rng, loss=loss, act="tanh")


def test_pnet_inactive_subnet_changes_nothing():
    rng = np.random.default_rng(7)
    net = random_pnet(["constrained", "cat", "tok"], "concat", rng)
    g = check_pnet_gradients(net, rng, active=[True, True, False])
    assert g["subnets"][2] is None
    c0, c1 = net["subnets"][2]["columns"]
    assert not np.any(g["Wy_out"][:, c0:c1])


def test_pnet_update_moves_what_the_phase_trains():
    """Residual phase 1 of [id, cat, tok]: only cat's parameters, its Wy columns in the output
    rows and By move; the ID subnet's input rows of Wy do not."""
    rng = np.random.default_rng(8)
    net = random_pnet(["constrained", "cat", "tok"], "concat", rng)
    inp, cols, hprev, masks = _pnet_case(net, rng)
    active, train = [True, True, False], [False, True, False]
    _, g = naive.pnet_backward(net, inp, hprev, cols, "cross-entropy", masks, active)
    before = {"Wy": net["Wy"].copy(), "By": net["By"].copy(),
              "Wh": [sn["Wh"][0].copy() for sn in net["subnets"]],
              "cat": net["subnets"][1]["table"].copy()}
    naive.pnet_update(net, naive.pnet_opt_state(net), g, inp, cols, active, train, True, 0.1, 0.0)
    moved = lambda a, b: np.abs(a - b) > 0
    assert [bool(moved(a, sn["Wh"][0]).any()) for a, sn in zip(before["Wh"], net["subnets"])] == \
        [False, True, False]
    dWy = moved(before["Wy"], net["Wy"])
    c0, c1 = net["subnets"][1]["columns"]
    out = np.zeros_like(dWy)
    out[np.unique(cols), c0:c1] = True
    np.testing.assert_array_equal(dWy, out)
    np.testing.assert_array_equal(np.flatnonzero(moved(before["By"], net["By"])), np.unique(cols))
    rows = sorted({c for it in inp for c, _ in net["subnets"][1]["bags"][it]})
    np.testing.assert_array_equal(np.flatnonzero(moved(before["cat"], net["subnets"][1]["table"])
                                                 .any(1)), rows)

"""The one naive reference of the tests: slow, obviously-correct NumPy (float64) versions of
every piece of training and scoring, written from the reference page (GRU4REC-REFERENCE.md) and
the papers, independently of the package's kernels (CPU Numba and CUDA alike).

- batching: the official "minimum remaining length" session-parallel loop;
- the GRU cell (gate order ``r|z|n``, reset applied after the matrix product) and its backward;
- final activations, the five losses (row by row; gradients through the softmax Jacobian, not
  the kernels' closed forms), Adagrad + heavy-ball momentum (dense and sparse rows);
- ranking (rank modes, top-k) and central finite differences;
- GRU4Rec's training step (``step_loss`` for gradient checks, ``train_step`` one whole step);
- the p-RNN of Hidasi et al. (RecSys 2016), the network of every GRU model: any list of input
  subnets (one-hot / embedding / constrained ID input, bags of table rows, raw feature vectors),
  ``concat`` or weighted ``sum`` combination, its forward, loss and hand-written backward, and the
  training strategies' update rule (which parameters move at which step): :func:`pnet_forward`,
  :func:`pnet_backward`, :func:`strategy_phase`, :func:`pnet_update`, :func:`pnet_train`.

Every gradient here is itself checked by finite differences in ``tests/test_naive.py``.
"""
from __future__ import annotations

import numpy as np

LOSSES = ("cross-entropy", "bpr-max", "top1-max", "bpr", "top1")
STRATEGIES = ("simultaneous", "alternating", "residual", "interleaved")
LOG_EPS = 1e-24
ADAGRAD_EPS = 1e-6


# ---------------------------------------------------------------------------------------------
# batching
# ---------------------------------------------------------------------------------------------
def reference_schedule(items, offsets, order, batch_size, min_rows, with_src=False):
    """Steps of one epoch (official loop structure): ``(inputs, targets, resets)`` per step, and
    with ``with_src`` also ``src``: for each row, the row of the previous step whose session it
    continues (rows of finished sessions are dropped and the rest move up when no session is
    left to start)."""
    n_sess = len(order)
    iters = np.arange(min(batch_size, n_sess))
    maxiter = len(iters) - 1
    start = offsets[order[iters]].copy()
    end = offsets[order[iters] + 1].copy()
    reset = np.ones(len(iters), dtype=bool)
    src = np.arange(len(iters))
    steps = []
    if len(iters) < min_rows:
        return steps
    while True:
        minlen = (end - start).min()
        for i in range(minlen - 1):
            step = (items[start + i].copy(), items[start + i + 1].copy(),
                    reset.copy() if i == 0 else np.zeros(len(start), dtype=bool))
            if with_src:
                step += (src.copy() if i == 0 else np.arange(len(start)),)
            steps.append(step)
        start = start + minlen - 1
        finished = (end - start) <= 1
        n_fin = int(finished.sum())
        iters[finished] = maxiter + 1 + np.arange(n_fin)
        maxiter += n_fin
        valid = iters < n_sess
        if valid.sum() == 0 or valid.sum() < min_rows:
            break
        reset = finished & valid
        sess = order[iters[reset]]
        start[reset] = offsets[sess]
        end[reset] = offsets[sess + 1]
        src = np.flatnonzero(valid)
        iters, start, end, reset = iters[valid], start[valid], end[valid], reset[valid]
    return steps


# ---------------------------------------------------------------------------------------------
# GRU cell
# ---------------------------------------------------------------------------------------------
def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def gru_cell(gx, h, Wh, bhn):
    """h' of one GRU step: ``r = s(gx_r + h Wh_r)``, ``z = s(gx_z + h Wh_z)``,
    ``n = tanh(gx_n + r * (h Wh_n + bhn))``, ``h' = (1 - z) n + z h``."""
    H = h.shape[1]
    gh = h @ Wh
    r = sigmoid(gx[:, :H] + gh[:, :H])
    z = sigmoid(gx[:, H:2 * H] + gh[:, H:2 * H])
    n = np.tanh(gx[:, 2 * H:] + r * (gh[:, 2 * H:] + bhn))
    return (1.0 - z) * n + z * h


def gru_forward(gx, gh, bhn, h_prev, reset, mask=None):
    """One GRU step from both pre-activations (``gh = h_prev @ Wh``); rows with ``reset`` start
    from a zero state. Returns ``(h_out (* mask), saved [r|z|n|hn], h_prev_eff)``."""
    gx, gh, bhn, h_prev = (np.asarray(a, np.float64) for a in (gx, gh, bhn, h_prev))
    H = h_prev.shape[1]
    keep = (np.asarray(reset) == 0)[:, None]
    gh = gh * keep
    hp = h_prev * keep
    r = sigmoid(gx[:, :H] + gh[:, :H])
    z = sigmoid(gx[:, H:2 * H] + gh[:, H:2 * H])
    hn = gh[:, 2 * H:] + bhn
    n = np.tanh(gx[:, 2 * H:] + r * hn)
    h = (1 - z) * n + z * hp
    if mask is not None:
        h = h * mask
    return h, np.concatenate([r, z, n, hn], axis=1), hp


def gru_backward(dh, gx, gh, bhn, h_prev, reset, mask=None):
    """Gradients of ``sum(dh * h_out)`` w.r.t. ``gx`` and ``gh`` (the n block of ``gh`` as
    ``hn = gh_n + bhn``, so ``dbhn = d_gh[:, 2H:].sum(0)``); the previous state is constant."""
    _, saved, hp = gru_forward(gx, gh, bhn, h_prev, reset, mask)
    H = hp.shape[1]
    r, z, n, hn = (saved[:, k * H:(k + 1) * H] for k in range(4))
    g = np.asarray(dh, np.float64) * (1.0 if mask is None else mask)
    dn = g * (1 - z)
    dz = g * (hp - n)
    dn_pre = dn * (1 - n ** 2)
    dr = dn_pre * hn
    d_gx = np.concatenate([dr * r * (1 - r), dz * z * (1 - z), dn_pre], axis=1)
    d_gh = np.concatenate([dr * r * (1 - r), dz * z * (1 - z), dn_pre * r], axis=1)
    return d_gx, d_gh


# ---------------------------------------------------------------------------------------------
# final activation and losses
# ---------------------------------------------------------------------------------------------
ACT_KINDS = {"linear": 0, "relu": 1, "tanh": 2, "leaky": 3, "elu": 4}


def parse_act(name):
    """``'linear'|'relu'|'tanh'|'leaky-<x>'|'elu-<x>'`` -> (kind code, parameter)."""
    kind, _, arg = name.partition("-")
    return ACT_KINDS[kind], float(arg) if arg else 0.0


def final_act(kind, x, param=0.0):
    """Final activation of the scores; ``kind`` a code (0 linear, 1 relu, 2 tanh, 3 leaky,
    4 elu) or a name such as ``'elu-0.5'`` (then ``param`` is read from it)."""
    if isinstance(kind, str):
        kind, param = parse_act(kind)
    x = np.asarray(x, np.float64)
    neg = np.minimum(x, 0.0)
    return {0: lambda: x, 1: lambda: np.maximum(x, 0), 2: lambda: np.tanh(x),
            3: lambda: np.where(x > 0, x, param * x),
            4: lambda: np.where(x > 0, x, param * (np.exp(neg) - 1))}[kind]()


def final_act_grad(kind, x, param=0.0):
    """Derivative of :func:`final_act` w.r.t. ``x``."""
    if isinstance(kind, str):
        kind, param = parse_act(kind)
    x = np.asarray(x, np.float64)
    neg = np.minimum(x, 0.0)
    return {0: lambda: np.ones_like(x), 1: lambda: (x > 0) * 1.0,
            2: lambda: 1 - np.tanh(x) ** 2, 3: lambda: np.where(x > 0, 1.0, param),
            4: lambda: np.where(x > 0, 1.0, param * np.exp(neg))}[kind]()


def _elu(x, a):
    return np.where(x > 0, x, a * (np.exp(np.minimum(x, 0.0)) - 1)) if a > 0 else x


def loss_rows(name, S, corr=None, bpreg=0.0, elu=0.0):
    """(R,) loss of each row of the score block ``S`` (R, C) whose row i's positive is column
    i; ``corr`` (C,): the logQ correction subtracted before the cross-entropy softmax."""
    S = np.asarray(S, np.float64)
    R, C = S.shape
    out = np.zeros(R)
    for i in range(R):
        neg = np.arange(C) != i
        if name == "cross-entropy":
            z = S[i] - (0 if corr is None else corr)
            p = np.exp(z - z.max())
            p /= p.sum()
            out[i] = -np.log(p[i] + LOG_EPS)
            continue
        if C < 2:
            continue
        x = _elu(S[i], elu) if name == "bpr-max" else S[i]
        xn, xp = x[neg], x[i]
        if name in ("bpr-max", "top1-max"):
            s = np.exp(xn - xn.max())
            s /= s.sum()
            if name == "bpr-max":
                out[i] = (-np.log(np.sum(s * sigmoid(xp - xn)) + LOG_EPS)
                          + bpreg * np.sum(s * xn ** 2))
            else:
                out[i] = np.sum(s * (sigmoid(xn - xp) + sigmoid(xn ** 2)))
        elif name == "bpr":
            out[i] = np.mean(np.logaddexp(0.0, -(xp - xn)))
        elif name == "top1":
            out[i] = np.mean(sigmoid(xn - xp) + sigmoid(xn ** 2))
        else:
            raise ValueError(name)
    return out


def loss_grad(name, S, corr=None, bpreg=0.0, elu=0.0):
    """dLoss_i/dS[i, :] for every row (R, C), analytic via the softmax Jacobian."""
    S = np.asarray(S, np.float64)
    R, C = S.shape
    G = np.zeros((R, C))
    for i in range(R):
        neg = np.arange(C) != i
        if name == "cross-entropy":
            z = S[i] - (0 if corr is None else corr)
            p = np.exp(z - z.max())
            p /= p.sum()
            # L = -log(p_i + eps); dp_i/dz = p_i (e_i - p)
            G[i] = -(p[i] * ((np.arange(C) == i) - p)) / (p[i] + LOG_EPS)
            continue
        if C < 2:
            continue
        x = _elu(S[i], elu) if name == "bpr-max" else S[i]
        xn, xp = x[neg], x[i]
        gx = np.zeros(C)
        if name in ("bpr-max", "top1-max"):
            s = np.exp(xn - xn.max())
            s /= s.sum()
            J = np.diag(s) - np.outer(s, s)  # ds/dxn
            if name == "bpr-max":
                sg = sigmoid(xp - xn)
                A = np.sum(s * sg)
                dL_ds = -sg / (A + LOG_EPS) + bpreg * xn ** 2
                direct = s * sg * (1 - sg) / (A + LOG_EPS) + 2 * bpreg * s * xn
                gx[neg] = J.T @ dL_ds + direct
                gx[i] = -np.sum(s * sg * (1 - sg)) / (A + LOG_EPS)
            else:
                s1, s2 = sigmoid(xn - xp), sigmoid(xn ** 2)
                gx[neg] = J.T @ (s1 + s2) + s * (s1 * (1 - s1) + 2 * xn * s2 * (1 - s2))
                gx[i] = -np.sum(s * s1 * (1 - s1))
        elif name == "bpr":
            u = sigmoid(xn - xp) / (C - 1)
            gx[neg] = u
            gx[i] = -u.sum()
        elif name == "top1":
            s1, s2 = sigmoid(xn - xp), sigmoid(xn ** 2)
            gx[neg] = (s1 * (1 - s1) + 2 * xn * s2 * (1 - s2)) / (C - 1)
            gx[i] = -np.sum(s1 * (1 - s1)) / (C - 1)
        if name == "bpr-max" and elu > 0:
            gx = gx * np.where(S[i] > 0, 1.0, elu * np.exp(np.minimum(S[i], 0.0)))
        G[i] = gx
    return G


# ---------------------------------------------------------------------------------------------
# optimiser
# ---------------------------------------------------------------------------------------------
def adagrad(p, g, acc, v, lr, momentum):
    """Dense Adagrad + heavy-ball momentum; returns new float64 ``(p, acc, v)``."""
    p, g, acc, v = (np.array(a, np.float64) for a in (p, g, acc, v))
    acc = acc + g * g
    step = g / np.sqrt(acc + ADAGRAD_EPS)
    if momentum > 0:
        v = momentum * v - lr * step
        p = p + v
    else:
        p = p - lr * step
    return p, acc, v


def adagrad_sparse(p, G, idx, acc, v, lr, momentum):
    """Rows ``idx`` of ``p`` get one update each with the summed gradient of their duplicates
    (``G``: one gradient row per entry of ``idx``); other rows, their ``acc`` and ``v`` keep
    their values. Returns new float64 ``(p, acc, v)``."""
    p, acc, v = (np.array(a, np.float64) for a in (p, acc, v))
    G = np.asarray(G, np.float64).reshape(len(idx), -1)
    shape = p.shape
    p, acc, v = (a.reshape(shape[0], -1) for a in (p, acc, v))
    summed = {}
    for i, item in enumerate(np.asarray(idx)):
        summed[int(item)] = summed.get(int(item), 0) + G[i]
    for item, g in summed.items():
        p[item], acc[item], v[item] = adagrad(p[item], g, acc[item], v[item], lr, momentum)
    return p.reshape(shape), acc.reshape(shape), v.reshape(shape)


# ---------------------------------------------------------------------------------------------
# ranking
# ---------------------------------------------------------------------------------------------
def ranks(S, targets, mode):
    """Rank of each row's target: ``conservative`` = #scores >= target's, ``optimistic`` =
    #scores > target's + 1, ``median`` halfway; NaN for a row holding a NaN."""
    S = np.asarray(S, np.float64)
    t = S[np.arange(len(targets)), targets][:, None]
    ge = (S >= t).sum(1)
    gt = (S > t).sum(1)
    out = {"conservative": ge, "optimistic": gt + 1, "median": (ge + gt + 1) / 2}[mode]
    return np.where(np.isnan(S).any(1), np.nan, out)


def topk(S, k):
    """Best first, ties by lower index: stable sort of -score."""
    S = np.asarray(S)
    order = np.argsort(-S.astype(np.float64), axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(S, order, axis=1)


# ---------------------------------------------------------------------------------------------
# finite differences
# ---------------------------------------------------------------------------------------------
def numerical_gradient(f, x, eps=1e-6):
    """Central differences of the scalar ``f()`` w.r.t. every entry of the float64 array ``x``
    (perturbed in place and restored)."""
    g = np.zeros(x.shape)
    flat = x.reshape(-1)
    for k in range(flat.size):
        old = flat[k]
        flat[k] = old + eps
        fp = f()
        flat[k] = old - eps
        fm = f()
        flat[k] = old
        g.reshape(-1)[k] = (fp - fm) / (2 * eps)
    return g


def param_blocks(P):
    """[(name, array)] of every parameter array of an ID-only network ``P`` (``Wx``, ``bx``,
    ``Wh``, ``bhn`` lists per layer, ``Wy``, ``By``, ``E``)."""
    out = []
    for key in ("Wx", "bx", "Wh", "bhn"):
        out += [(f"{key}[{l}]", a) for l, a in enumerate(P[key])]
    out += [(k, P[k]) for k in ("Wy", "By", "E") if k in P]
    return out


def fd_gradients(f, P, eps=1e-5):
    """Central finite differences of ``f(P)`` w.r.t. every block of :func:`param_blocks`."""
    return {name: numerical_gradient(lambda: f(P), a, eps) for name, a in param_blocks(P)}


# ---------------------------------------------------------------------------------------------
# GRU4Rec: one training step of the ID-only network
# ---------------------------------------------------------------------------------------------
def forward(P, mode, in_items, hprev, mask0, masks):
    """Layer outputs (after dropout) of one step: list of (B, H_l). ``mode``: the input
    (``'onehot'``: ``Wx[0]`` is the (n_items, 3H) table, ``mask0`` (B, >=1) one factor per row;
    ``'embedding'``: rows of ``E``; ``'constrained'``: rows of ``Wy``)."""
    if mode == "onehot":
        gx = mask0[:, :1] * P["Wx"][0][in_items] + P["bx"][0]
    else:
        src = P["E"] if mode == "embedding" else P["Wy"]
        gx = (src[in_items] * mask0) @ P["Wx"][0] + P["bx"][0]
    ys = []
    for l in range(len(P["Wx"])):
        if l > 0:
            gx = ys[-1] @ P["Wx"][l] + P["bx"][l]
        ys.append(gru_cell(gx, hprev[l], P["Wh"][l], P["bhn"][l]) * masks[l])
    return ys


def step_loss(P, mode, in_items, hprev, cols, mask0, masks, loss, act="linear", logq=0.0,
              lq=None, bpreg=0.0, elu=0.0, batch_size=None):
    """Step loss = sum of the row losses / batch_size (the configured size)."""
    y = forward(P, mode, in_items, hprev, mask0, masks)[-1]
    A = final_act(act, y @ P["Wy"][cols].T + P["By"][cols])
    corr = logq * np.asarray(lq)[:len(cols)] if logq > 0 else None
    B = len(in_items)
    return loss_rows(loss, A, corr, bpreg, elu).sum() / (batch_size or B)


def train_step(params, acc, vel, h_state, batch, hyper):
    """One step in float64; returns (loss, new params, acc, vel, new h_state).

    params/acc/vel: dicts as the trainer's ('Wx','bx','Wh','bhn' lists, 'Wy', 'By', 'E'?).
    h_state: list of (R_prev, H_l); batch: in_items, out_items, reset, sample, src (or None),
    masks {'embed', 'hidden'}. hyper: mode ('onehot'|'embedding'|'constrained'), loss,
    batch_size, bpreg, elu, logq_corr (C,) or None, final_act (code, param), lr, momentum.
    """
    P = {k: ([np.array(a, np.float64) for a in v] if isinstance(v, list) else np.array(v, np.float64))
         for k, v in params.items()}
    ins, outs, reset, sample = (np.asarray(batch[k]) for k in ("in_items", "out_items", "reset", "sample"))
    src = batch.get("src")
    masks = batch.get("masks") or {}
    embed_mask, hidden_masks = masks.get("embed"), masks.get("hidden")
    mode, L = hyper["mode"], len(P["Wh"])
    R = len(ins)
    if hidden_masks is None:
        hidden_masks = [None] * L
    # forward
    if mode == "onehot":
        scale = np.ones(R) if embed_mask is None else np.asarray(embed_mask, np.float64).reshape(R)
        x0 = None
        gx0 = P["Wx"][0][ins] * scale[:, None] + P["bx"][0]
    else:
        src_m = P["E"] if mode == "embedding" else P["Wy"]
        x0 = src_m[ins] * (1.0 if embed_mask is None else embed_mask)
        gx0 = x0 @ P["Wx"][0] + P["bx"][0]
    xs, gxs, ghs, hps, outs_l, new_state = [x0], [], [], [], [], []
    x = None
    for l in range(L):
        gx = gx0 if l == 0 else x @ P["Wx"][l] + P["bx"][l]
        hp = np.asarray(h_state[l], np.float64)
        hp = hp[:R] if src is None else hp[np.asarray(src)]
        gh = hp @ P["Wh"][l]
        h, saved, hpe = gru_forward(gx, gh, P["bhn"][l], hp, reset, hidden_masks[l])
        gxs.append(gx); ghs.append(gh); hps.append(hp); outs_l.append(h)
        if l > 0:
            xs.append(x)
        x = h
        new_state.append(h)
    cols = np.concatenate([outs, sample]).astype(np.int64)
    Wy_c = P["Wy"][cols]
    S = x @ Wy_c.T + P["By"][cols]
    act, act_p = hyper.get("final_act", (0, 0.0))
    S_act = final_act(act, S, act_p)
    name = hyper["loss"]
    kw = dict(corr=hyper.get("logq_corr"), bpreg=hyper.get("bpreg", 0.0), elu=hyper.get("elu", 0.0))
    B = hyper["batch_size"]
    loss = loss_rows(name, S_act, **kw).sum() / B
    dS = loss_grad(name, S_act, **kw) / B * final_act_grad(act, S, act_p)
    # backward
    dBy = dS.sum(0)
    dWy_c = dS.T @ x
    dh = dS @ Wy_c
    grads = {"Wx": [None] * L, "bx": [None] * L, "Wh": [None] * L, "bhn": [None] * L}
    G_in = None
    for l in reversed(range(L)):
        H = P["Wh"][l].shape[0]
        d_gx, d_gh = gru_backward(dh, gxs[l], ghs[l], P["bhn"][l], hps[l], reset, hidden_masks[l])
        hpe = hps[l] * (np.asarray(reset) == 0)[:, None]
        grads["Wh"][l] = hpe.T @ d_gh
        grads["bx"][l] = d_gx.sum(0)
        grads["bhn"][l] = d_gh[:, 2 * H:].sum(0)
        if l == 0 and mode == "onehot":
            G_in = d_gx * scale[:, None]
            continue
        xin = xs[0] if l == 0 else outs_l[l - 1]
        grads["Wx"][l] = xin.T @ d_gx
        dx = d_gx @ P["Wx"][l].T
        if l > 0:
            dh = dx
        else:
            G_in = dx * (1.0 if embed_mask is None else embed_mask)
    A = {k: ([np.array(a, np.float64) for a in v] if isinstance(v, list) else np.array(v, np.float64))
         for k, v in acc.items()}
    V = {k: ([np.array(a, np.float64) for a in v] if isinstance(v, list) else np.array(v, np.float64))
         for k, v in vel.items()}
    lr, mom = hyper["lr"], hyper["momentum"]
    for key in ("Wx", "bx", "Wh", "bhn"):
        for l in range(L):
            if grads[key][l] is None:
                continue
            P[key][l], A[key][l], V[key][l] = adagrad(P[key][l], grads[key][l], A[key][l],
                                                      V[key][l], lr, mom)
    if mode == "constrained":
        gy, iy = np.concatenate([dWy_c, G_in]), np.concatenate([cols, ins])
    else:
        gy, iy = dWy_c, cols
    P["Wy"], A["Wy"], V["Wy"] = adagrad_sparse(P["Wy"], gy, iy, A["Wy"], V["Wy"], lr, mom)
    P["By"], A["By"], V["By"] = adagrad_sparse(P["By"], dBy, cols, A["By"], V["By"], lr, mom)
    if mode == "onehot":
        P["Wx"][0], A["Wx"][0], V["Wx"][0] = adagrad_sparse(P["Wx"][0], G_in, ins, A["Wx"][0],
                                                            V["Wx"][0], lr, mom)
    elif mode == "embedding":
        P["E"], A["E"], V["E"] = adagrad_sparse(P["E"], G_in, ins, A["E"], V["E"], lr, mom)
    return loss, P, A, V, new_state


# ---------------------------------------------------------------------------------------------
# the p-RNN (Hidasi, Quadrana, Karatzoglou, Tikk, RecSys 2016): every GRU model's network
# ---------------------------------------------------------------------------------------------
# A network is a dict:
#   combine: 'concat' | 'sum';  Wy (n_items, Hc), By (n_items,): the shared output layer
#   subnets: list of dicts, one per input source (the ID subnet first when there is one):
#     input:   'onehot' (table (n_items, 3 H_0) *is* layer 0's input weights: the one-hot
#              vector times Wx), 'table' (weighted sum of rows of its own table: ID embedding,
#              categorical codes, tokens, projected dense features), 'wy' (the constrained ID
#              input: the same bag over rows of Wy, columns wy_col0:wy_col0 + in_dim), 'raw'
#              (the feature vector itself: x[c] = w for the bag's (c, w))
#     bags:    per item a list of (index, weight); in_dim: width of the input vector
#     table:   (rows, in_dim) or None; wy_col0: see 'wy'
#     Wx, bx, Wh, bhn: per layer (Wx[0] None for 'onehot'); weight: combine weight ('sum') or
#     None; columns: (c0, c1) its Wy columns (all Hc under 'sum')
# Dropout masks per subnet: {'input': (B, in_dim) or (B, 1) for 'onehot', 'hidden': [(B, H_l)]}
# (None: no dropout); hidden states per subnet: one (B, H_l) array per layer.
def pnet_input(sn, Wy, items):
    """(B, in_dim) input vectors of subnet ``sn`` for ``items`` before dropout (for
    ``'onehot'``: the table rows, i.e. layer 0's gate pre-activations without bias)."""
    if sn["input"] == "onehot":
        return np.array(sn["table"][np.asarray(items)], np.float64)
    X = np.zeros((len(items), sn["in_dim"]))
    for i, it in enumerate(items):
        for c, w in sn["bags"][it]:
            if sn["input"] == "raw":
                X[i, c] += w
            elif sn["input"] == "wy":
                X[i] += w * Wy[c, sn["wy_col0"]:sn["wy_col0"] + sn["in_dim"]]
            else:
                X[i] += w * sn["table"][c]
    return X


def pnet_forward(net, in_items, hprev, masks=None, active=None):
    """Forward of one step. Returns a cache: ``hc`` (B, Hc) the combined state (inactive
    subnets add nothing) and per subnet ``x`` (its dropped-out input), ``gx``, ``gh`` (per
    layer), ``y`` (per layer, the dropped-out outputs: the next step's hidden states)."""
    S = len(net["subnets"])
    active = [True] * S if active is None else list(active)
    B = len(in_items)
    Hc = net["Wy"].shape[1]
    hc = np.zeros((B, Hc))
    per = []
    for s, sn in enumerate(net["subnets"]):
        if not active[s]:
            per.append(None)
            continue
        m = (masks or [None] * S)[s] or {}
        m_in = m.get("input")
        m_hid = m.get("hidden") or [None] * len(sn["Wh"])
        x = pnet_input(sn, net["Wy"], in_items)
        if m_in is not None:
            x = x * m_in
        gxs, ghs, ys = [], [], []
        inp = x
        for l in range(len(sn["Wh"])):
            if l == 0 and sn["input"] == "onehot":
                gx = inp + sn["bx"][0]
            else:
                gx = inp @ sn["Wx"][l] + sn["bx"][l]
            hp = np.asarray(hprev[s][l], np.float64)
            gh = hp @ sn["Wh"][l]
            y, _, _ = gru_forward(gx, gh, sn["bhn"][l], hp, np.zeros(B), m_hid[l])
            gxs.append(gx), ghs.append(gh), ys.append(y)
            inp = y
        c0, c1 = sn["columns"]
        a = 1.0 if net["combine"] == "concat" else sn["weight"]
        hc[:, c0:c1] += a * ys[-1]
        per.append({"x": x, "gx": gxs, "gh": ghs, "y": ys, "hprev": hprev[s], "mask": m_in,
                    "hidden_masks": m_hid})
    return {"hc": hc, "subnets": per, "active": active}


def pnet_loss(net, in_items, hprev, cols, loss, masks=None, active=None, act="linear",
              corr=None, bpreg=0.0, elu=0.0, batch_size=None):
    """Step loss: ``O = hc @ Wy[cols].T + By[cols]``, final activation, row losses (row i's
    positive is column i) summed and divided by ``batch_size`` (default the rows)."""
    hc = pnet_forward(net, in_items, hprev, masks, active)["hc"]
    cols = np.asarray(cols)
    A = final_act(act, hc @ net["Wy"][cols].T + net["By"][cols])
    return loss_rows(loss, A, corr, bpreg, elu).sum() / (batch_size or len(in_items))


def pnet_backward(net, in_items, hprev, cols, loss, masks=None, active=None, act="linear",
                  corr=None, bpreg=0.0, elu=0.0, batch_size=None):
    """Loss and its full gradient (every parameter of every active subnet; nothing is frozen
    here, see :func:`pnet_update`). Returns ``(loss, grads)``: ``grads['subnets'][s]`` holds
    ``Wx``, ``bx``, ``Wh``, ``bhn`` (per layer; ``Wx[0]`` None for 'onehot'), ``table`` (same
    shape as the table, or None), ``weight`` (float or None); ``Wy_out`` and ``Wy_in``
    (n_items, Hc): the output layer's gradient through the scores and through the constrained
    input; ``By``. An inactive subnet's entry is None."""
    cols = np.asarray(cols)
    in_items = np.asarray(in_items)
    cache = pnet_forward(net, in_items, hprev, masks, active)
    hc = cache["hc"]
    B = len(in_items)
    scale = batch_size or B
    Wc = net["Wy"][cols]
    O = hc @ Wc.T + net["By"][cols]
    A = final_act(act, O)
    total = loss_rows(loss, A, corr, bpreg, elu).sum() / scale
    dO = loss_grad(loss, A, corr, bpreg, elu) / scale * final_act_grad(act, O)
    n_items = net["Wy"].shape[0]
    Wy_out = np.zeros_like(net["Wy"], dtype=np.float64)
    Wy_in = np.zeros_like(net["Wy"], dtype=np.float64)
    By = np.zeros(n_items)
    np.add.at(Wy_out, cols, dO.T @ hc)
    np.add.at(By, cols, dO.sum(0))
    dhc = dO @ Wc
    out = []
    for s, sn in enumerate(net["subnets"]):
        c = cache["subnets"][s]
        if c is None:
            out.append(None)
            continue
        c0, c1 = sn["columns"]
        g = {"Wx": [None] * len(sn["Wh"]), "bx": [None] * len(sn["Wh"]),
             "Wh": [None] * len(sn["Wh"]), "bhn": [None] * len(sn["Wh"]), "weight": None,
             "table": None if sn["table"] is None else np.zeros(sn["table"].shape)}
        if net["combine"] == "sum":
            g["weight"] = float(np.sum(dhc[:, c0:c1] * c["y"][-1]))
            dy = sn["weight"] * dhc[:, c0:c1]
        else:
            dy = dhc[:, c0:c1].copy()
        for l in reversed(range(len(sn["Wh"]))):
            H = sn["Wh"][l].shape[0]
            hp = np.asarray(c["hprev"][l], np.float64)
            d_gx, d_gh = gru_backward(dy, c["gx"][l], c["gh"][l], sn["bhn"][l], hp,
                                      np.zeros(B), c["hidden_masks"][l])
            g["Wh"][l] = hp.T @ d_gh
            g["bhn"][l] = d_gh[:, 2 * H:].sum(0)
            g["bx"][l] = d_gx.sum(0)
            if l == 0 and sn["input"] == "onehot":
                dx = d_gx
            else:
                xin = c["x"] if l == 0 else c["y"][l - 1]
                g["Wx"][l] = xin.T @ d_gx
                dx = d_gx @ sn["Wx"][l].T
            dy = dx
        # dy is now the gradient w.r.t. the dropped-out input vector
        dx = dy if c["mask"] is None else dy * c["mask"]
        for i, it in enumerate(in_items):
            if sn["input"] == "onehot":
                g["table"][it] += dx[i]
                continue
            for cc, w in sn["bags"][it]:
                if sn["input"] == "table":
                    g["table"][cc] += w * dx[i]
                elif sn["input"] == "wy":
                    Wy_in[cc, sn["wy_col0"]:sn["wy_col0"] + sn["in_dim"]] += w * dx[i]
        out.append(g)
    return total, {"subnets": out, "Wy_out": Wy_out, "Wy_in": Wy_in, "By": By}


def strategy_phase(strategy, n_subnets, n_epochs, epoch, step):
    """``(active, train, freeze_out)`` of global step ``step`` (0-based over the whole fit) in
    epoch ``epoch`` (0-based), from the strategies' definitions:

    - simultaneous: every subnet runs and trains;
    - alternating: every subnet runs, subnet ``epoch % S`` trains (the ID subnet first);
    - residual: the epochs are split into S blocks of ``n_epochs // S`` epochs (the remainder
      goes to the last block); in block k subnets ``0..k`` run, only k trains, and only its
      own output columns move (``freeze_out``);
    - interleaved: every subnet runs, subnet ``step % S`` trains.
    """
    S = n_subnets
    every = [True] * S
    if strategy == "simultaneous":
        return every, every, False
    if strategy == "alternating":
        return every, [s == epoch % S for s in range(S)], False
    if strategy == "interleaved":
        return every, [s == step % S for s in range(S)], False
    if strategy == "residual":
        k = min(epoch // (n_epochs // S), S - 1)
        return [s <= k for s in range(S)], [s == k for s in range(S)], True
    raise ValueError(strategy)


def _touched(sn, in_items):
    """Sorted rows of the subnet's table (or of Wy for 'wy') that the step's inputs read."""
    if sn["input"] == "onehot":
        return np.unique(np.asarray(in_items))
    rows = [c for it in in_items for c, _ in sn["bags"][it]]
    return np.unique(np.asarray(rows, np.int64))


def pnet_update(net, opt, grads, in_items, cols, active, train, freeze_out, lr, momentum):
    """Adagrad + momentum of one step, in place on ``net`` and ``opt`` (``opt``: the same
    structure as ``net`` holding ``(acc, v)`` pairs, see :func:`pnet_opt_state`). What moves:

    - every parameter of each trained subnet (dense ones whole; its table only in the rows
      the step's inputs read; its combine weight);
    - ``Wy`` in the step's output rows (``cols``): the columns of every running subnet, or only
      the trained subnets' columns under ``freeze_out``; gradient through the scores, plus
      through the constrained input when that subnet trains;
    - ``Wy`` rows read only as the constrained input of a trained subnet: that input's columns;
    - ``By`` in the output rows, always.
    Rows not touched keep their values, accumulators and velocities."""
    def upd(p, g, st):
        p2, acc, v = adagrad(p, g, st[0], st[1], lr, momentum)
        p[...], st[0][...], st[1][...] = p2, acc, v

    for s, sn in enumerate(net["subnets"]):
        if not (active[s] and train[s]):
            continue
        g, o = grads["subnets"][s], opt["subnets"][s]
        for key in ("Wx", "bx", "Wh", "bhn"):
            for l, a in enumerate(sn[key]):
                if a is not None:
                    upd(a, g[key][l], o[key][l])
        if sn["weight"] is not None:
            w = np.array([sn["weight"]])
            upd(w, np.array([g["weight"]]), o["weight"])
            sn["weight"] = float(w[0])
        if sn["input"] in ("onehot", "table"):
            for r in _touched(sn, in_items):
                upd(sn["table"][r], g["table"][r], (o["table"][0][r], o["table"][1][r]))
    Wy, (acc_y, v_y) = net["Wy"], opt["Wy"]
    gy = grads["Wy_out"].copy()
    in_cols = {}  # Wy row -> columns read as a trained constrained input
    for s, sn in enumerate(net["subnets"]):
        if sn["input"] == "wy" and active[s] and train[s]:
            gy += grads["Wy_in"]
            a = sn["wy_col0"]
            for r in _touched(sn, in_items):
                in_cols.setdefault(int(r), set()).update(range(a, a + sn["in_dim"]))
    out_cols = set()
    for s, sn in enumerate(net["subnets"]):
        if active[s] and (train[s] or not freeze_out):
            out_cols.update(range(*sn["columns"]))
    rows = {int(r): set(out_cols) for r in np.unique(cols)}
    for r, cs in in_cols.items():
        rows.setdefault(r, set()).update(cs)
    for r, cs in rows.items():
        cs = np.array(sorted(cs), np.int64)
        if len(cs):
            p, a, v = Wy[r, cs], acc_y[r, cs], v_y[r, cs]
            p2, a2, v2 = adagrad(p, gy[r, cs], a, v, lr, momentum)
            Wy[r, cs], acc_y[r, cs], v_y[r, cs] = p2, a2, v2
    for r in np.unique(cols):
        st = (opt["By"][0][r:r + 1], opt["By"][1][r:r + 1])
        upd(net["By"][r:r + 1], grads["By"][r:r + 1], st)


def pnet_opt_state(net):
    """Zero Adagrad accumulators and velocities ``(acc, v)`` for every parameter of ``net``."""
    z = lambda a: (np.zeros(np.shape(a)), np.zeros(np.shape(a)))
    subs = []
    for sn in net["subnets"]:
        subs.append({key: [None if a is None else z(a) for a in sn[key]]
                     for key in ("Wx", "bx", "Wh", "bhn")})
        subs[-1]["table"] = None if sn["table"] is None else z(sn["table"])
        subs[-1]["weight"] = z(np.zeros(1))
    return {"subnets": subs, "Wy": z(net["Wy"]), "By": z(net["By"])}


def pnet_train(net, epochs, negatives, strategy, batch_size, n_epochs, loss, lr, momentum,
               masks=None, act="linear", logq=0.0, log_support=None, sample_alpha=0.0,
               bpreg=0.0, elu=0.0, opt=None):
    """Training steps of a whole fit, in place on ``net``. ``epochs``: per epoch the steps of
    :func:`reference_schedule` (``with_src=True``); ``negatives``: the flat stream of sampled
    negatives, ``len(negatives) // total steps`` per step; ``masks``: per subnet fixed dropout
    masks of ``batch_size`` rows (a step of B rows uses the first B). Every epoch starts from
    zero hidden states; a row's next hidden state is its session's dropped-out output (zero
    when a session starts). Cross-entropy with ``logq``: the correction is ``logq * log
    support`` of the in-batch targets and ``logq * sample_alpha * log support`` of the sampled
    columns. Returns ``(losses per step, opt)``."""
    opt = pnet_opt_state(net) if opt is None else opt
    S = len(net["subnets"])
    n_steps = sum(len(e) for e in epochs)
    n_sample = len(negatives) // n_steps if n_steps else 0
    losses, t = [], 0
    for e, steps in enumerate(epochs):
        h = [[np.zeros((batch_size, w.shape[0])) for w in sn["Wh"]] for sn in net["subnets"]]
        for inp, tgt, rst, src in steps:
            B = len(inp)
            active, train, freeze = strategy_phase(strategy, S, n_epochs, e, t)
            hprev = [[np.where(rst[:, None], 0.0, hl[src]) for hl in hs] for hs in h]
            neg = np.asarray(negatives[t * n_sample:(t + 1) * n_sample])
            cols = np.concatenate([tgt, neg]).astype(np.int64)
            corr = None
            if loss == "cross-entropy" and logq > 0:
                corr = logq * np.concatenate([log_support[tgt], sample_alpha * log_support[neg]])
            mk = None if masks is None else [
                {"input": m["input"][:B],
                 "hidden": [x[:B] for x in m["hidden"]]} for m in masks]
            l, grads = pnet_backward(net, inp, hprev, cols, loss, mk, active, act, corr, bpreg,
                                     elu, batch_size)
            cache = pnet_forward(net, inp, hprev, mk, active)
            pnet_update(net, opt, grads, inp, cols, active, train, freeze, lr, momentum)
            for s in range(S):
                if cache["subnets"][s] is not None:
                    for lyr, y in enumerate(cache["subnets"][s]["y"]):
                        h[s][lyr][:B] = y
            losses.append(l)
            t += 1
    return losses, opt

"""Slow, obviously-correct float64 NumPy references for the CUDA kernels and the training step.

Written from the reference page (GRU4REC-REFERENCE.md) and the shared parameter layout,
independently of the kernels: the loss gradients go through the softmax Jacobian instead of
the kernels' closed forms, and are themselves checked against finite differences in the tests.
"""
from __future__ import annotations

import numpy as np


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


# ---- GRU cell --------------------------------------------------------------------------------
def gru_forward(gx, gh, bhn, h_prev, reset, mask=None):
    """Returns (h_out, saved [r|z|n|hn], h_prev_eff) in float64."""
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
    """d_gx, d_gh of sum(dh * h_out) w.r.t. gx and gh (gh incl. bhn for the n gate), h_prev const."""
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


# ---- losses ----------------------------------------------------------------------------------
def _elu(x, a):
    return np.where(x > 0, x, a * (np.exp(x) - 1)) if a > 0 else x


def loss_rows(name, S, corr=None, bpreg=0.0, elu=0.0):
    """(R,) per-row loss of the score block S (R, C); row i's positive is column i."""
    S = np.asarray(S, np.float64)
    R, C = S.shape
    out = np.zeros(R)
    for i in range(R):
        neg = np.arange(C) != i
        if name == "cross-entropy":
            z = S[i] - (0 if corr is None else corr)
            p = np.exp(z - z.max())
            p /= p.sum()
            out[i] = -np.log(p[i] + 1e-24)
            continue
        if C < 2:
            continue
        x = _elu(S[i], elu) if name == "bpr-max" else S[i]
        xn, xp = x[neg], x[i]
        if name in ("bpr-max", "top1-max"):
            s = np.exp(xn - xn.max())
            s /= s.sum()
            if name == "bpr-max":
                out[i] = -np.log(np.sum(s * sigmoid(xp - xn)) + 1e-24) + bpreg * np.sum(s * xn ** 2)
            else:
                out[i] = np.sum(s * (sigmoid(xn - xp) + sigmoid(xn ** 2)))
        elif name == "bpr":
            out[i] = np.mean(-np.log(sigmoid(xp - xn)))
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
            G[i] = -(p[i] * ((np.arange(C) == i) - p)) / (p[i] + 1e-24)
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
                dL_ds = -sg / (A + 1e-24) + bpreg * xn ** 2
                direct = s * sg * (1 - sg) / (A + 1e-24) + 2 * bpreg * s * xn
                gx[neg] = J.T @ dL_ds + direct
                gx[i] = -np.sum(s * sg * (1 - sg)) / (A + 1e-24)
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
            gx = gx * np.where(S[i] > 0, 1.0, elu * np.exp(S[i]))
        G[i] = gx
    return G


def final_act(kind, x, param):
    x = np.asarray(x, np.float64)
    return {0: lambda: x, 1: lambda: np.maximum(x, 0), 2: lambda: np.tanh(x),
            3: lambda: np.where(x > 0, x, param * x),
            4: lambda: np.where(x > 0, x, param * (np.exp(x) - 1))}[kind]()


def final_act_grad(kind, x, param):
    x = np.asarray(x, np.float64)
    return {0: lambda: np.ones_like(x), 1: lambda: (x > 0) * 1.0,
            2: lambda: 1 - np.tanh(x) ** 2, 3: lambda: np.where(x > 0, 1.0, param),
            4: lambda: np.where(x > 0, 1.0, param * np.exp(x))}[kind]()


# ---- optimiser -------------------------------------------------------------------------------
def adagrad(p, g, acc, v, lr, momentum):
    """Dense Adagrad + heavy-ball momentum; returns new (p, acc, v) in float64."""
    p, g, acc, v = (np.array(a, np.float64) for a in (p, g, acc, v))
    acc = acc + g * g
    step = g / np.sqrt(acc + 1e-6)
    if momentum > 0:
        v = momentum * v - lr * step
        p = p + v
    else:
        p = p - lr * step
    return p, acc, v


def adagrad_sparse(p, G, idx, acc, v, lr, momentum):
    """Rows idx of p get one update with the summed gradient of their duplicates."""
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


# ---- evaluation ------------------------------------------------------------------------------
def ranks(S, targets, mode):
    S = np.asarray(S, np.float64)
    t = S[np.arange(len(targets)), targets][:, None]
    ge = (S >= t).sum(1)
    gt = (S > t).sum(1)
    out = {"conservative": ge, "optimistic": gt + 1, "median": (ge + gt + 1) / 2}[mode]
    return np.where(np.isnan(S).any(1), np.nan, out)  # a NaN anywhere: rank NaN


def topk(S, k):
    """Best first, ties by lower index: stable sort of -score."""
    S = np.asarray(S)
    order = np.argsort(-S.astype(np.float64), axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(S, order, axis=1)


# ---- one training step -----------------------------------------------------------------------
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
    C = len(cols)
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

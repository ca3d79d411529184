"""Slow, obviously-correct NumPy (float64) references of the GRU4Rec training pieces.

Written independently of the Numba kernels: the batching schedule follows the official
"minimum remaining length" loop, losses are vectorised formulas straight from the reference
page, gradients are central finite differences, and Adagrad is applied densely with an explicit
set of touched rows.
"""
import numpy as np

LOSSES = ("cross-entropy", "bpr-max", "top1-max", "bpr", "top1")


# ---------------------------------------------------------------------------------------------
# batching
# ---------------------------------------------------------------------------------------------
def reference_schedule(items, offsets, order, batch_size, min_rows):
    """List of steps ``(inputs, targets, resets)`` of one epoch (official loop structure)."""
    n_sess = len(order)
    iters = np.arange(min(batch_size, n_sess))
    maxiter = len(iters) - 1
    start = offsets[order[iters]].copy()
    end = offsets[order[iters] + 1].copy()
    reset = np.ones(len(iters), dtype=bool)
    steps = []
    if len(iters) < min_rows:
        return steps
    while True:
        minlen = (end - start).min()
        for i in range(minlen - 1):
            steps.append((items[start + i].copy(), items[start + i + 1].copy(),
                          reset.copy() if i == 0 else np.zeros(len(start), dtype=bool)))
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
        iters, start, end, reset = iters[valid], start[valid], end[valid], reset[valid]
    return steps


# ---------------------------------------------------------------------------------------------
# network and losses
# ---------------------------------------------------------------------------------------------
def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def gru_cell(gx, h, Wh, bhn):
    """h' of one GRU step (gate order r|z|n, reset applied after the matrix product)."""
    H = h.shape[1]
    gh = h @ Wh
    r = sigmoid(gx[:, :H] + gh[:, :H])
    z = sigmoid(gx[:, H:2 * H] + gh[:, H:2 * H])
    n = np.tanh(gx[:, 2 * H:] + r * (gh[:, 2 * H:] + bhn))
    return (1.0 - z) * n + z * h


def final_act(x, name):
    if name == "linear":
        return x
    if name == "relu":
        return np.maximum(x, 0.0)
    if name == "tanh":
        return np.tanh(x)
    kind, param = name.split("-", 1)
    param = float(param)
    if kind == "leaky":
        return np.where(x > 0, x, param * x)
    return np.where(x > 0, x, param * (np.exp(np.minimum(x, 0.0)) - 1.0))


def row_losses(A, loss, logq=0.0, lq=None, bpreg=0.0, elu=0.0):
    """(B,) losses of a score block ``A`` (B, C) whose row i's positive is column i."""
    B, C = A.shape
    idx = np.arange(B)
    neg = ~np.eye(B, C, dtype=bool)
    if loss == "cross-entropy":
        T = A - logq * lq[None, :C] if logq > 0 else A.copy()
        T = T - T.max(axis=1, keepdims=True)
        P = np.exp(T) / np.exp(T).sum(axis=1, keepdims=True)
        return -np.log(P[idx, idx] + 1e-24)
    R = A
    if loss == "bpr-max" and elu > 0:
        R = np.where(A > 0, A, elu * (np.exp(np.minimum(A, 0.0)) - 1.0))
    rp = R[idx, idx][:, None]
    if loss == "bpr":
        return np.where(neg, np.logaddexp(0.0, -(rp - R)), 0.0).sum(axis=1) / (C - 1)
    if loss == "top1":
        return np.where(neg, sigmoid(R - rp) + sigmoid(R ** 2), 0.0).sum(axis=1) / (C - 1)
    m = np.where(neg, R, -np.inf).max(axis=1, keepdims=True)
    Ex = np.where(neg, np.exp(R - m), 0.0)
    S = Ex / Ex.sum(axis=1, keepdims=True)
    if loss == "bpr-max":
        return -np.log((S * sigmoid(rp - R)).sum(axis=1) + 1e-24) + bpreg * (S * R ** 2).sum(axis=1)
    if loss == "top1-max":
        return (S * (sigmoid(R - rp) + sigmoid(R ** 2))).sum(axis=1)
    raise ValueError(loss)


def forward(P, mode, in_items, hprev, mask0, masks):
    """Layer outputs (after dropout) of one step: list of (B, H_l)."""
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
    """Step loss = sum of row losses / batch_size."""
    y = forward(P, mode, in_items, hprev, mask0, masks)[-1]
    O = y @ P["Wy"][cols].T + P["By"][cols]
    A = final_act(O, act)
    B = len(in_items)
    return row_losses(A, loss, logq, lq, bpreg, elu).sum() / (batch_size or B)


# ---------------------------------------------------------------------------------------------
# gradients and optimiser
# ---------------------------------------------------------------------------------------------
def param_blocks(P):
    """[(name, array)] of every parameter array of ``P`` (lists per layer expanded)."""
    out = []
    for key in ("Wx", "bx", "Wh", "bhn"):
        out += [(f"{key}[{l}]", a) for l, a in enumerate(P[key])]
    out += [(k, P[k]) for k in ("Wy", "By", "E") if k in P]
    return out


def fd_gradients(f, P, eps=1e-5):
    """Central finite differences of ``f(P)`` w.r.t. every parameter (modified in place,
    restored)."""
    grads = {}
    for name, a in param_blocks(P):
        g = np.zeros_like(a)
        flat, gflat = a.reshape(-1), g.reshape(-1)
        for k in range(flat.size):
            old = flat[k]
            flat[k] = old + eps
            fp = f(P)
            flat[k] = old - eps
            fm = f(P)
            flat[k] = old
            gflat[k] = (fp - fm) / (2 * eps)
        grads[name] = g
    return grads


def adagrad(p, g, acc, vel, lr, mom, rows=None):
    """Adagrad + plain momentum (reference page), in place; only ``rows`` when given."""
    sel = slice(None) if rows is None else np.asarray(sorted(set(int(r) for r in rows)))
    acc[sel] += g[sel] ** 2
    step = g[sel] / np.sqrt(acc[sel] + 1e-6)
    if mom > 0:
        vel[sel] = mom * vel[sel] - lr * step
        p[sel] += vel[sel]
    else:
        p[sel] -= lr * step

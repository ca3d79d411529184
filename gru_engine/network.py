"""The network: a list of input subnets, a combine step and the sampled output layer.

Every model of the engine is one such network. ``SessionGRU`` is the network with one ID
subnet (GRU4Rec); ``FeatureSessionGRU`` (p-RNN, Hidasi et al. RecSys 2016) adds one subnet per
item-feature source. A subnet reads the current item as an input vector (the ID subnet: one-hot,
a separate embedding, or constrained: its own column block of ``Wy``; a feature subnet: its bag
of table rows or raw feature values), runs its GRU layers, and the subnets' last hidden states
are combined (``concat``, or ``sum`` with a learned weight per subnet) into the input of the
shared output layer ``Wy`` (n_items, Hc), ``By`` (n_items,).

Parameters live in flat arrays, so one compiled specialisation serves any network: ``theta``
(all dense GRU weights and combine weights), ``T`` (all embedding tables), ``Wy``, ``By``. The
layout tables say where each piece is: ``SI`` (S, N_SCOL) int64, one row per subnet (columns
``S_*``), ``LI`` (G, N_LCOL) int64, one row per GRU layer of all subnets (columns ``L_*``), and
each subnet's bag CSR (``indptr``, ``indices``, ``weights``: item -> table rows or feature
columns with weights). This module is imported by the estimators and by every backend.
"""
from __future__ import annotations

import numpy as np

from .features import RAW

# Subnet input kinds: K_RAW the item's raw feature vector (its bag holds (column, value)) times
# Wx; K_BAG the weighted sum of table rows of the item's bag, times Wx; K_DIRECT one-hot ID
# input: the table row is the layer-0 gate pre-activation itself (no Wx).
K_RAW, K_BAG, K_DIRECT = 0, 1, 2
# Table sources: none (raw), the subnet's own block of T, or its column block of Wy
# (constrained ID input).
T_NONE, T_OWN, T_WY = -1, 0, 1
# Columns of the subnet table SI (S, N_SCOL) int64: S_KIND, S_TAB as above; S_TOFF, S_TROWS,
# S_TCOLS its table's offset in T and shape; S_IN its input width; S_IPOFF the offset of its bag
# CSR in indptr (n_items + 1 entries per subnet); S_L0:S_L1 its rows of LI; S_C0:S_C1 its
# columns of the combined state and of Wy (all Hc columns under combine='sum'); S_A its combine
# weight in theta (-1 under 'concat'); S_D0:S_D1 its range of theta; S_XOFF its input's column
# offset in the input buffers; S_GOFF, S_GCAP, S_ROFF, S_SOFF its table-gradient offset in GT,
# capacity (rows), offset in rowsT and offset in slotT (set by _bag_caps); S_WYC0 the first Wy
# column of its constrained input block.
(S_KIND, S_TAB, S_TOFF, S_TROWS, S_TCOLS, S_IN, S_IPOFF, S_L0, S_L1, S_C0, S_C1, S_A, S_D0,
 S_D1, S_XOFF, S_GOFF, S_GCAP, S_ROFF, S_SOFF, S_WYC0, N_SCOL) = range(21)
# Columns of the layer table LI (G, N_LCOL) int64: L_H hidden size, L_IN input size (0 for a
# K_DIRECT layer 0), L_WX, L_BX, L_WH, L_BHN offsets of Wx (in_l, 3H) (-1: none), bx (3H,),
# Wh (H, 3H), bhn (H,) in theta; L_HOFF, L_GOFF column offsets of the layer's block in the
# H-wide and 3H-wide work buffers; L_STOFF its columns in the scorer's state rows.
L_H, L_IN, L_WX, L_BX, L_WH, L_BHN, L_HOFF, L_GOFF, L_STOFF, N_LCOL = range(10)

#: keys of a network's parameter dict (flat parameters and layout arrays), as saved
PARAM_KEYS = ("SI", "LI", "indptr", "indices", "weights", "theta", "T", "Wy", "By")
ARCHITECTURES = ("id", "parallel", "feature")
COMBINES = ("concat", "sum")
STRATEGIES = ("simultaneous", "alternating", "residual", "interleaved")


def init_block(rng, rows: int, cols: int, n_blocks: int = 1, dtype=np.float32) -> np.ndarray:
    """(rows, cols * n_blocks) weights, each (rows, cols) block uniform in ``[-s, s]``,
    ``s = sqrt(6 / (rows + cols))`` (drawn in one call, row-major)."""
    s = np.sqrt(6.0 / (rows + cols))
    return rng.uniform(-s, s, size=(rows, cols * n_blocks)).astype(dtype)


def identity_bag(n_items: int):
    return (np.arange(n_items + 1, dtype=np.int64), np.arange(n_items, dtype=np.int32),
            np.ones(n_items, np.float32))


def build_layout(n_items: int, architecture: str, combine: str, input_mode: str, layers,
                 embedding: int, feature_layers, encoded: list, rng, dtype=np.float32) -> dict:
    """Subnet/layer tables and initial flat parameters of a network: ``architecture`` ``'id'``
    (the ID subnet alone: GRU4Rec, ``encoded`` ignored), ``'parallel'`` (ID subnet, then one
    subnet per encoded feature source) or ``'feature'`` (feature subnets only). ``input_mode``
    (``'onehot'|'embedding'|'constrained'``) is the ID subnet's input; ``encoded``: the
    :class:`~gru_engine.features.EncodedFeatures` of the feature sources.

    Initialisation as GRU4Rec: per-gate weight blocks uniform in ``[-s, s]``, ``s =
    sqrt(6/(fan_in+fan_out))``, drawn subnet by subnet and layer by layer (``Wx`` then ``Wh``;
    a one-hot ID input's table in the place of layer 0's ``Wx``), then the embedding tables,
    then ``Wy``; biases zero; combine weights 1. For ``'id'`` this is the official draw order.

    Returns a dict: ``SI`` (S, N_SCOL) int64, ``LI`` (G, N_LCOL) int64, ``indptr``/``indices``/
    ``weights`` (all subnets' bags concatenated), ``theta``, ``T``, ``Wy`` (n_items, Hc), ``By``,
    ``names`` (subnet names, ID first), ``Hc``, ``state_width``.
    """
    subnets = []  # (name, kind, tab, table_rows, table_cols, in_dim, layers, csr)
    if architecture in ("id", "parallel"):
        csr = identity_bag(n_items)
        if input_mode == "onehot":
            G0 = 3 * layers[0]
            subnets.append(("id", K_DIRECT, T_OWN, n_items, G0, G0, layers, csr))
        elif input_mode == "embedding":
            subnets.append(("id", K_BAG, T_OWN, n_items, embedding, embedding, layers, csr))
        else:
            subnets.append(("id", K_BAG, T_WY, n_items, layers[-1], layers[-1], layers, csr))
    for e in (encoded if architecture != "id" else []):
        csr = (e.indptr, e.indices, e.weights)
        if e.kind == RAW:
            subnets.append((e.name, K_RAW, T_NONE, 0, 0, e.dim, feature_layers, csr))
        else:
            subnets.append((e.name, K_BAG, T_OWN, e.n_rows, e.dim, e.dim, feature_layers, csr))
    S = len(subnets)
    sum_mode = combine == "sum"
    last = [sn[6][-1] for sn in subnets]
    Hc = last[0] if sum_mode else int(sum(last))
    G = sum(len(sn[6]) for sn in subnets)
    SI = np.zeros((S, N_SCOL), np.int64)
    LI = np.zeros((G, N_LCOL), np.int64)
    theta_parts, table_parts = [], []
    d_off = t_off = x_off = s_off = ip_off = nnz_off = 0
    h_off = gg_off = c_off = g = 0
    indptrs, idxs, wts = [], [], []
    for s, (name, kind, tab, trows, tcols, din, lay, (ip, ind, w)) in enumerate(subnets):
        SI[s, S_KIND], SI[s, S_TAB], SI[s, S_IN] = kind, tab, din
        SI[s, S_TROWS], SI[s, S_TCOLS] = trows, tcols
        SI[s, S_IPOFF] = ip_off
        indptrs.append(ip + nnz_off)
        idxs.append(ind)
        wts.append(w)
        ip_off += n_items + 1
        nnz_off += len(ind)
        SI[s, S_XOFF] = x_off
        SI[s, S_D0] = d_off
        SI[s, S_L0] = g
        for l, H in enumerate(lay):
            n_in = din if l == 0 else lay[l - 1]
            LI[g, L_H], LI[g, L_HOFF], LI[g, L_GOFF], LI[g, L_STOFF] = H, h_off, gg_off, h_off
            if l == 0 and kind == K_DIRECT:
                # the one-hot input's table is layer 0's Wx: drawn in its place
                LI[g, L_IN], LI[g, L_WX] = 0, -1
                direct_table = init_block(rng, trows, H, 3, dtype).ravel()
            else:
                LI[g, L_IN], LI[g, L_WX] = n_in, d_off
                theta_parts.append(init_block(rng, n_in, H, 3, dtype).ravel())
                d_off += n_in * 3 * H
            LI[g, L_BX] = d_off
            theta_parts.append(np.zeros(3 * H, dtype))
            d_off += 3 * H
            LI[g, L_WH] = d_off
            theta_parts.append(init_block(rng, H, H, 3, dtype).ravel())
            d_off += 3 * H * H
            LI[g, L_BHN] = d_off
            theta_parts.append(np.zeros(H, dtype))
            d_off += H
            h_off += H
            gg_off += 3 * H
            g += 1
        SI[s, S_L1] = g
        if sum_mode:
            SI[s, S_A] = d_off
            theta_parts.append(np.ones(1, dtype))
            d_off += 1
            SI[s, S_C0], SI[s, S_C1] = 0, Hc
        else:
            SI[s, S_A] = -1
            SI[s, S_C0], SI[s, S_C1] = c_off, c_off + lay[-1]
            c_off += lay[-1]
        SI[s, S_WYC0] = SI[s, S_C0]
        SI[s, S_D1] = d_off
        if tab == T_OWN:
            SI[s, S_TOFF] = t_off
            if kind == K_DIRECT:
                table_parts.append(direct_table)
            else:
                table_parts.append(init_block(rng, trows, tcols, 1, dtype).ravel())
            t_off += trows * tcols
            SI[s, S_SOFF] = s_off
            s_off += trows
        x_off += din
    Wy = init_block(rng, n_items, Hc, 1, dtype)
    return {
        "SI": SI, "LI": LI,
        "indptr": np.concatenate(indptrs).astype(np.int64),
        "indices": np.concatenate(idxs).astype(np.int32),
        "weights": np.concatenate(wts).astype(dtype),
        "theta": np.concatenate(theta_parts).astype(dtype) if theta_parts else np.zeros(0, dtype),
        "T": np.concatenate(table_parts).astype(dtype) if table_parts else np.zeros(1, dtype),
        "Wy": Wy, "By": np.zeros(n_items, dtype),
        "names": [sn[0] for sn in subnets], "Hc": int(Hc), "state_width": int(h_off),
        "x_width": int(x_off), "n_gates": int(gg_off), "n_table_slots": int(s_off),
    }


def with_new_items(params: dict, n_items: int, bags: list, has_id: bool, n_new: int | None = None,
                   id_bags: str = "empty") -> dict:
    """A copy of fitted ``params`` whose bags also cover ``n_new`` new items (indices
    ``n_items..n_items+n_new-1``; default: the length of the feature bags): feature subnet ``k``
    gets ``bags[k] = (indptr (n_new+1,), indices, weights)``; the ID subnet (``has_id``) gets
    empty bags (``id_bags='empty'``: a zero input vector, for inference) or its own rows
    (``'identity'``: for training, see :func:`grow_items`). Tables, weights and the output
    layer are shared, not copied."""
    SI = params["SI"].copy()
    indptr, indices, weights = params["indptr"], params["indices"], params["weights"]
    if n_new is None:
        n_new = len(bags[0][0]) - 1
    empty = (np.zeros(n_new + 1, np.int64), np.zeros(0, np.int32), np.zeros(0, np.float32))
    if id_bags == "identity":
        empty = (np.arange(n_new + 1, dtype=np.int64),
                 np.arange(n_items, n_items + n_new, dtype=np.int32), np.ones(n_new, np.float32))
    parts_ip, parts_ind, parts_w = [], [], []
    nnz = 0
    for s in range(SI.shape[0]):
        ip = indptr[SI[s, S_IPOFF]:SI[s, S_IPOFF] + n_items + 1]
        a, b = int(ip[0]), int(ip[-1])
        new_ip, new_ind, new_w = empty if (has_id and s == 0) else bags[s - has_id]
        SI[s, S_IPOFF] = s * (n_items + n_new + 1)
        parts_ip += [ip - a + nnz, new_ip[1:] + (b - a) + nnz]
        parts_ind += [indices[a:b], new_ind]
        parts_w += [weights[a:b], new_w]
        nnz += (b - a) + int(new_ip[-1])
    return dict(params, SI=SI, indptr=np.concatenate(parts_ip).astype(np.int64),
                indices=np.concatenate(parts_ind).astype(np.int32),
                weights=np.concatenate(parts_w).astype(params["weights"].dtype))


def grow_items(params: dict, n_new: int, bags: list, has_id: bool, rng, state=()) -> tuple:
    """The network of fitted ``params`` extended by ``n_new`` items (warm-start training):
    ``Wy`` gets new rows drawn as :func:`build_layout` draws them for ``n_items + n_new``
    items, ``By`` zeros; the ID subnet (``has_id``) its identity bags and new rows of its item
    table (one-hot or embedding input; drawn likewise); feature subnet ``k`` the new items' bags
    ``bags[k]``. ``state``: dicts of arrays shaped like ``theta``/``T``/``Wy``/``By`` (keys of
    those names; optimiser state) grown the same way with zeros; their other arrays (the state
    of parameters that do not grow with the items, e.g. output-feature rows) are copied.
    Returns ``(params, state)``, new arrays (the inputs are not changed)."""
    n_items = params["Wy"].shape[0]
    N = n_items + n_new
    p = (with_new_items(params, n_items, bags, has_id, n_new=n_new, id_bags="identity")
         if n_new else dict(params, SI=params["SI"].copy()))
    SI = p["SI"]
    dt = params["Wy"].dtype

    def grown(arrays, draw):
        T_parts, off = [], 0
        SI_new = SI.copy()
        for s in range(SI.shape[0]):
            if has_id and s == 0 and SI[s, S_TAB] == T_WY:
                SI_new[s, S_TROWS] = N  # the constrained input reads all N rows of Wy
            if SI[s, S_TAB] != T_OWN:
                continue
            a, r, c = SI[s, S_TOFF], SI[s, S_TROWS], SI[s, S_TCOLS]
            block = arrays["T"][a:a + r * c].reshape(r, c)
            if has_id and s == 0:
                fan = c // 3 if SI[s, S_KIND] == K_DIRECT else c
                block = np.vstack([block, draw(n_new, c, N, fan)])
                SI_new[s, S_TROWS] = N
            SI_new[s, S_TOFF] = off
            T_parts.append(block.ravel())
            off += block.size
        T = np.concatenate(T_parts).astype(dt) if T_parts else arrays["T"].copy()
        Hc = arrays["Wy"].shape[1]
        Wy = np.vstack([arrays["Wy"], draw(n_new, Hc, N, Hc)]).astype(dt)
        By = np.concatenate([arrays["By"], np.zeros(n_new, dt)])
        return SI_new, dict(theta=arrays["theta"].copy(), T=T, Wy=Wy, By=By)

    def uniform(rows, cols, n_rows, fan):
        s = np.sqrt(6.0 / (n_rows + fan))
        return rng.uniform(-s, s, size=(rows, cols)).astype(dt)

    zeros = lambda rows, cols, n_rows, fan: np.zeros((rows, cols), dt)
    SI_new, values = grown(params, uniform)
    out = dict(p, SI=SI_new, **values)
    return out, tuple(dict({k: v.copy() for k, v in st.items()}, **grown(st, zeros)[1])
                      for st in state)


def epoch_plan(strategy: str, n_subnets: int, n_epochs: int) -> list:
    """Per epoch ``(active, train, interleave, freeze_out)``: bool lists over the subnets."""
    S = n_subnets
    every = [True] * S
    plan = []
    if strategy == "residual":
        per = n_epochs // S
        for e in range(n_epochs):
            k = min(e // per, S - 1)
            plan.append(([s <= k for s in range(S)], [s == k for s in range(S)], False, True))
    for e in range(n_epochs if strategy != "residual" else 0):
        if strategy == "simultaneous":
            plan.append((every, every, False, False))
        elif strategy == "alternating":
            plan.append((every, [s == e % S for s in range(S)], False, False))
        else:
            plan.append((every, every, True, False))
    return plan


def subnet_views(params: dict, s: int) -> dict:
    """Views of subnet ``s``'s parameters in a network's ``params``: ``Wx``, ``bx``, ``Wh``,
    ``bhn`` (lists per layer; ``Wx[0]`` None for one-hot input, whose table is layer 0's input
    weights), ``table`` (its own embedding or one-hot table, or None), ``weight`` (its combine
    weight under ``combine='sum'``, else None), ``columns`` (its ``Wy`` column range)."""
    SI, LI, th = params["SI"], params["LI"], params["theta"]
    out = {"Wx": [], "bx": [], "Wh": [], "bhn": []}
    for g in range(SI[s, S_L0], SI[s, S_L1]):
        H, n_in = int(LI[g, L_H]), int(LI[g, L_IN])
        wx = LI[g, L_WX]
        out["Wx"].append(None if wx < 0 else th[wx:wx + n_in * 3 * H].reshape(n_in, 3 * H))
        out["bx"].append(th[LI[g, L_BX]:LI[g, L_BX] + 3 * H])
        out["Wh"].append(th[LI[g, L_WH]:LI[g, L_WH] + 3 * H * H].reshape(H, 3 * H))
        out["bhn"].append(th[LI[g, L_BHN]:LI[g, L_BHN] + H])
    out["table"] = None
    if SI[s, S_TAB] == T_OWN:
        a, r, c = SI[s, S_TOFF], SI[s, S_TROWS], SI[s, S_TCOLS]
        out["table"] = params["T"][a:a + r * c].reshape(r, c)
    out["weight"] = float(th[SI[s, S_A]]) if SI[s, S_A] >= 0 else None
    out["columns"] = (int(SI[s, S_C0]), int(SI[s, S_C1]))
    return out


def from_layers(layer_params: dict, input_mode: str) -> dict:
    """The ID-only network (GRU4Rec) holding per-layer parameters: ``layer_params`` has lists
    ``Wx``, ``bx``, ``Wh``, ``bhn`` (one array per layer; ``Wx[0]`` is the (n_items, 3 H_0)
    table for one-hot input), ``Wy`` (n_items, H_last), ``By`` and, for ``input_mode=
    'embedding'``, ``E`` (n_items, embedding). Returns a new parameter dict of the arrays'
    dtype (format-1 model files, tests)."""
    Wy = np.asarray(layer_params["Wy"])
    layers = [np.asarray(w).shape[0] for w in layer_params["Wh"]]
    embedding = np.asarray(layer_params["E"]).shape[1] if input_mode == "embedding" else 0
    lay = build_layout(Wy.shape[0], "id", "concat", input_mode, layers, embedding, layers, [],
                       np.random.default_rng(0), Wy.dtype)
    views = subnet_views(lay, 0)
    for l in range(len(layers)):
        for key in ("bx", "Wh", "bhn"):
            views[key][l][...] = layer_params[key][l]
        target = views["Wx"][l] if views["Wx"][l] is not None else views["table"]
        target[...] = layer_params["Wx"][l]
    if input_mode == "embedding":
        views["table"][...] = layer_params["E"]
    lay["Wy"][...] = Wy
    lay["By"][...] = layer_params["By"]
    return {k: lay[k] for k in PARAM_KEYS}

"""CPU kernels of the feature part of the output layer (:mod:`gru_engine.output_features`).

Around the sampled output layer of :mod:`.step`, without changing it:

- :func:`add_output_features` (after the gather of the sampled ``Wy`` rows into ``Wc``):
  ``Wc[u] += sum_j w_j Fy[r_j]``, ``bc[u] += sum_j w_j Fb[r_j]`` over slot ``u``'s item's bag;
- :func:`scatter_output_gradients` (after the output backward, before any input gradient is
  added to the same slots): ``G[r_j] += w_j [GY[u] | gBy[u]]`` for the output slots;
- :func:`update_output_features` (after the step's update): Adagrad + momentum on the touched
  rows, in the column blocks whose ``Wy`` rows are being trained, the bias always; releases
  the rows.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit

from ...network import S_C0, S_C1
from .optim import adagrad_flat, claim_row, release_rows


class OutFeat(NamedTuple):
    """indptr (n_items+1,) int64, indices (nnz,) int32, weights (nnz,): the output bags;
    Fy (n_rows, Hc), Fb (n_rows,): the trained rows (the model's arrays, updated in place);
    acc_f, vel_f (n_rows, Hc), acc_b, vel_b (n_rows,): their Adagrad/momentum state;
    slot (n_rows,) int32 (-1: no row), rows (cap,) int32, G (cap, Hc + 1): a step's gradient
    rows (bias in the last column); count (1,) int64: rows in use."""
    indptr: np.ndarray
    indices: np.ndarray
    weights: np.ndarray
    Fy: np.ndarray
    Fb: np.ndarray
    acc_f: np.ndarray
    vel_f: np.ndarray
    acc_b: np.ndarray
    vel_b: np.ndarray
    slot: np.ndarray
    rows: np.ndarray
    G: np.ndarray
    count: np.ndarray


def new_record(params: dict, max_slots: int) -> OutFeat:
    """The record of ``params`` (``Fy``/``Fb`` shared) with zero optimiser state, room for the
    bags of ``max_slots`` distinct items per step."""
    Fy, ip = params["Fy"], params["oindptr"]
    n_rows = Fy.shape[0]
    longest = int(np.diff(ip).max()) if len(ip) > 1 else 0
    cap = max(1, min(n_rows, max_slots * max(longest, 1)))
    return OutFeat(indptr=ip, indices=params["oindices"], weights=params["oweights"], Fy=Fy,
                   Fb=params["Fb"], acc_f=np.zeros_like(Fy), vel_f=np.zeros_like(Fy),
                   acc_b=np.zeros_like(params["Fb"]), vel_b=np.zeros_like(params["Fb"]),
                   slot=np.full(max(n_rows, 1), -1, np.int32), rows=np.zeros(cap, np.int32),
                   G=np.zeros((cap, Fy.shape[1] + 1), Fy.dtype), count=np.zeros(1, np.int64))


@njit(cache=True, error_model="numpy")
def add_output_features(of, items, U, Wc, bc):
    """``Wc[u] += sum_j w_j Fy[r_j]``, ``bc[u] += sum_j w_j Fb[r_j]`` for ``u < U``, the bag of
    item ``items[u]``. Wc (>=U, Hc), bc (>=U,)."""
    H = Wc.shape[1]
    for u in range(U):
        it = items[u]
        for j in range(of.indptr[it], of.indptr[it + 1]):
            r = of.indices[j]
            w = of.weights[j]
            for k in range(H):
                Wc[u, k] += w * of.Fy[r, k]
            bc[u] += w * of.Fb[r]


@njit(cache=True, error_model="numpy")
def scatter_output_gradients(of, items, U, GY, gBy):
    """``G[row of r_j] += w_j [GY[u] | gBy[u]]`` for ``u < U`` (the bag of ``items[u]``);
    rows are claimed in ``of.slot``/``of.rows`` (count in ``of.count[0]``)."""
    H = GY.shape[1]
    n = of.count[0]
    for u in range(U):
        it = items[u]
        for j in range(of.indptr[it], of.indptr[it + 1]):
            w = of.weights[j]
            s, n = claim_row(of.slot, of.rows, n, of.G, of.indices[j])
            for k in range(H):
                of.G[s, k] += w * GY[u, k]
            of.G[s, H] += w * gBy[u]
    of.count[0] = n


@njit(cache=True, error_model="numpy")
def release_output_rows(of):
    release_rows(of.slot, of.rows, of.count[0])
    of.count[0] = 0


@njit(cache=True, error_model="numpy")
def update_output_features(of, SI, active, train, sum_mode, freeze_out, lr, mom):
    """Adagrad + momentum on the claimed rows: under ``sum_mode`` every column; else the column
    block of every active subnet (only the trained ones' under ``freeze_out``), as the output
    rows of ``Wy``; the bias always. Releases the rows."""
    H = of.Fy.shape[1]
    for u in range(of.count[0]):
        r = of.rows[u]
        g = of.G[u]
        if sum_mode:
            adagrad_flat(of.Fy[r], g[:H], of.acc_f[r], of.vel_f[r], lr, mom)
        else:
            for s in range(SI.shape[0]):
                if not active[s] or (freeze_out and not train[s]):
                    continue
                c0, c1 = SI[s, S_C0], SI[s, S_C1]
                adagrad_flat(of.Fy[r, c0:c1], g[c0:c1], of.acc_f[r, c0:c1],
                             of.vel_f[r, c0:c1], lr, mom)
        adagrad_flat(of.Fb[r:r + 1], g[H:H + 1], of.acc_b[r:r + 1], of.vel_b[r:r + 1], lr, mom)
    release_output_rows(of)

"""Adagrad with plain (heavy-ball) momentum, dense and sparse-row, compiled with Numba.

Per parameter: ``acc += g^2``; ``step = g / sqrt(acc + 1e-6)``; with ``momentum > 0``:
``v = momentum * v - lr * step``, ``p += v``; else ``p -= lr * step`` (reference page; not
Nesterov). Item-indexed matrices are updated only in the rows of the step: gradients of repeated
items are first summed into one accumulator row (:func:`claim_row` gives an item its row), rows
not touched keep their ``acc`` and ``v`` unchanged.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from ...config import ADAGRAD_EPS as EPS
from .mathfuncs import cast_like, frsqrt



@njit(cache=True, error_model="numpy", inline="always")
def adagrad_flat(p, g, acc, vel, lr, mom):
    """Dense update of 1-D views ``p``, ``g``, ``acc``, ``vel`` (same length). Inlined into its
    callers: called per row on row views, an out-of-line call (the views' reference counts)
    took 3x the update itself (Wy rows of an rsc15-100k step: 340 vs 110 us)."""
    eps = cast_like(p, EPS)
    rate = cast_like(p, lr)
    beta = cast_like(p, mom)
    if mom > 0.0:
        for k in range(p.shape[0]):
            gk = g[k]
            a = acc[k] + gk * gk
            acc[k] = a
            v = beta * vel[k] - rate * (gk * frsqrt(a + eps))
            vel[k] = v
            p[k] += v
    else:
        for k in range(p.shape[0]):
            gk = g[k]
            a = acc[k] + gk * gk
            acc[k] = a
            p[k] -= rate * (gk * frsqrt(a + eps))


@njit(cache=True, error_model="numpy")
def adagrad_rows_1d(b, acc, vel, rows, g, n, lr, mom):
    """Sparse update of a vector: ``b[rows[u]]`` with gradient ``g[u]`` for ``u < n``."""
    if mom > 0.0:
        for u in range(n):
            k = rows[u]
            a = acc[k] + g[u] * g[u]
            acc[k] = a
            v = mom * vel[k] - lr * (g[u] / np.sqrt(a + EPS))
            vel[k] = v
            b[k] += v
    else:
        for u in range(n):
            k = rows[u]
            a = acc[k] + g[u] * g[u]
            acc[k] = a
            b[k] -= lr * (g[u] / np.sqrt(a + EPS))


@njit(cache=True, error_model="numpy")
def claim_row(slot, rows, n_rows, G, item):
    """Accumulator row of ``item``: ``slot[item]``, or when it has none a new zeroed row
    ``n_rows`` of ``G`` (recorded in ``slot`` and ``rows``). Returns ``(row, new n_rows)``."""
    s = slot[item]
    if s < 0:
        s = n_rows
        slot[item] = s
        rows[s] = item
        for k in range(G.shape[1]):
            G[s, k] = 0.0
        n_rows += 1
    return s, n_rows


@njit(cache=True, error_model="numpy")
def release_rows(slot, rows, n_rows):
    """Reset ``slot`` to -1 for the accumulated items (ready for the next step)."""
    for u in range(n_rows):
        slot[rows[u]] = -1

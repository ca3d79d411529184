"""Item output vectors built from item features (``FeatureSessionGRU(output_features=True)``).

The sampled output layer scores item ``i`` with ``hc . Wy_eff[i] + By_eff[i]``, where

    Wy_eff[i] = Wy[i] + sum_j w_ij Fy[r_ij]        By_eff[i] = By[i] + sum_j w_ij Fb[r_ij]

and ``(r_ij, w_ij)`` is item ``i``'s *output bag*: the entries of its bags in every feature
source (:mod:`gru_engine.features`), with each source's rows moved to its own block of ``Fy``
(a categorical or token source: one row per table row, i.e. per code or token, the unknown row
included; a dense source: one row per vector component, so its block is a learned ``(d, Hc)``
projection of the raw vector). ``Fy`` (n_rows, Hc) and ``Fb`` (n_rows,) start at zero, so
before training the scores are GRU4Rec's.

An item that had no training events can still be scored: its ``Wy``/``By`` rows are zero and its
vector is its features' part alone (:meth:`FeatureSessionGRU.add_items`).

Kernels: the CPU trainer's in :mod:`gru_engine.backends.cpu.output_features` (Numba), the CUDA
trainer's and scorer's in :mod:`gru_engine.backends.cuda.output_features`
(``kernels/output_features.cu``); both follow the same steps and update order.

Parameter keys (besides ``network.PARAM_KEYS``): ``Fy``, ``Fb`` (trained), ``oindptr``
(n_items+1,) int64, ``oindices`` (nnz,) int32, ``oweights`` (nnz,) float (the output bags).
"""
from __future__ import annotations

import numpy as np

from .features import RAW

#: parameter keys of the feature part of the output layer
OUTPUT_KEYS = ("Fy", "Fb", "oindptr", "oindices", "oweights")


def check_options(p: dict) -> None:
    """``ValueError`` for validated FeatureSessionGRU parameters ``p`` whose
    ``output_features`` is not a bool, or is True on an ``'id'`` network or with context."""
    from .context import enabled as context_enabled
    of = p["output_features"]
    if not isinstance(of, (bool, np.bool_)):
        raise ValueError(f"output_features must be True or False, got {of!r}")
    if not of:
        return
    if p["architecture"] == "id":
        raise ValueError("output_features=True needs item features: architecture 'parallel' or "
                         "'feature', got architecture='id'")
    if context_enabled(p):
        raise ValueError("output_features=True cannot be combined with context_input/"
                         "context_output yet (the context scorer has no output features); use "
                         "one of them")


def source_rows(encoded) -> list:
    """Rows of ``Fy`` per encoded source: its table rows, or its vector length (raw dense)."""
    return [int(e.dim if e.kind == RAW else e.n_rows) for e in encoded]


def merge_bags(bags: list, rows: list, n: int) -> tuple:
    """One CSR over ``n`` items from per-source bags ``(indptr (n+1,), indices, weights)``:
    item ``i``'s entries of source 0, then of source 1, ...; source ``k``'s indices shifted by
    the rows of the sources before it. Returns ``(indptr, indices int32, weights float32)``."""
    offsets = np.concatenate([[0], np.cumsum(rows[:-1])]).astype(np.int64) if rows else []
    lengths = np.zeros(n, np.int64)
    for ip, _, _ in bags:
        lengths += np.diff(ip)
    indptr = np.zeros(n + 1, np.int64)
    np.cumsum(lengths, out=indptr[1:])
    indices = np.zeros(int(indptr[-1]), np.int32)
    weights = np.zeros(int(indptr[-1]), np.float32)
    fill = indptr[:-1].copy()
    for (ip, ind, w), off in zip(bags, offsets):
        cnt = np.diff(ip)
        dst = np.repeat(fill, cnt) + (np.arange(int(ip[-1])) - np.repeat(ip[:-1], cnt))
        indices[dst] = np.asarray(ind, np.int64) + off
        weights[dst] = w
        fill += cnt
    return indptr, indices, weights


def build(encoded: list, n_items: int, Hc: int, dtype=np.float32) -> dict:
    """Initial output-feature parameters of a network over ``n_items`` items whose combined
    state has ``Hc`` columns (``Fy``, ``Fb`` zero; no random draws)."""
    rows = source_rows(encoded)
    ip, ind, w = merge_bags([(e.indptr, e.indices, e.weights) for e in encoded], rows, n_items)
    return {"Fy": np.zeros((sum(rows), Hc), dtype), "Fb": np.zeros(sum(rows), dtype),
            "oindptr": ip, "oindices": ind, "oweights": w.astype(dtype)}


def extend_output_bags(params: dict, new_bags: tuple) -> dict:
    """``oindptr``/``oindices``/``oweights`` of ``params`` followed by the bags ``new_bags``
    ``(indptr, indices, weights)`` of items appended after the last one."""
    ip, ind, w = new_bags
    old = params["oindptr"]
    return {"oindptr": np.concatenate([old, np.asarray(ip[1:], np.int64) + old[-1]]),
            "oindices": np.concatenate([params["oindices"], np.asarray(ind, np.int32)]),
            "oweights": np.concatenate([params["oweights"],
                                        np.asarray(w, params["oweights"].dtype)])}


def _pooled(params: dict, key: str) -> np.ndarray:
    import scipy.sparse as sps
    ip = params["oindptr"]
    n = len(ip) - 1
    F = params[key]
    M = sps.csr_matrix((np.asarray(params["oweights"], np.float64), params["oindices"], ip),
                       shape=(n, F.shape[0]))
    return np.asarray(M @ np.asarray(F, np.float64))


def effective_output(params: dict) -> tuple:
    """``(Wy_eff (n_items, Hc), By_eff (n_items,))`` in the dtype of ``Wy`` (module
    docstring); ``(Wy, By)`` themselves for a network without output features."""
    if "Fy" not in params:
        return params["Wy"], params["By"]
    dt = params["Wy"].dtype
    Wy = (np.asarray(params["Wy"], np.float64) + _pooled(params, "Fy")).astype(dt)
    By = (np.asarray(params["By"], np.float64) + _pooled(params, "Fb")).astype(dt)
    return Wy, By


def check(params: dict, n_items: int) -> None:
    """``ValueError`` naming the array when the output-feature arrays do not fit together."""
    ip, ind, F = params["oindptr"], params["oindices"], params["Fy"]
    if ip.ndim != 1 or len(ip) != n_items + 1 or ip[0] != 0 or np.any(np.diff(ip) < 0):
        raise ValueError(f"oindptr must be a non-decreasing (n_items+1,) = ({n_items + 1},) "
                         f"array starting at 0, got shape {ip.shape}")
    if len(ind) != ip[-1] or len(params["oweights"]) != ip[-1]:
        raise ValueError("oindices/oweights must have oindptr[-1] entries")
    if F.ndim != 2 or F.shape[1] != params["Wy"].shape[1] or params["Fb"].shape != (F.shape[0],):
        raise ValueError(f"Fy must be (rows, Hc={params['Wy'].shape[1]}) and Fb (rows,), got "
                         f"{F.shape} and {params['Fb'].shape}")
    if len(ind) and (ind.min() < 0 or ind.max() >= F.shape[0]):
        raise ValueError(f"oindices must be rows of Fy (0..{F.shape[0] - 1})")

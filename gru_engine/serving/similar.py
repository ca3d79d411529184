"""Similar items from the learned item vectors (cosine over the rows of ``Wy``)."""
from __future__ import annotations

import numpy as np

from ..output_features import effective_output
from ..ranking import top_k
from .scorers import _static


# ---------------------------------------------------------------------------------------------
# similar items
# ---------------------------------------------------------------------------------------------
def similar_items(model, item_ids, k: int = 20):
    """The ``k`` items most similar to each of ``item_ids`` by the cosine of their learned
    output vectors (rows of ``Wy``), best first, the item itself excluded (implicit offers for
    "customers also viewed" blocks). See :meth:`gru_engine.model.SessionGRU.similar_items`."""
    model._check_fitted()
    scalar = np.ndim(item_ids) == 0
    query = np.atleast_1d(np.asarray(item_ids))
    if query.ndim != 1:
        raise ValueError(f"item_ids must be one id or a 1-D sequence of ids, got shape "
                         f"{query.shape}")
    n_items = model.n_items_
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if n_items < 2:
        raise ValueError("similar_items needs a model of at least 2 items")
    k = min(int(k), n_items - 1)
    idx = model.item_index_.lookup(query) if len(query) else np.zeros(0, np.int32)
    if np.any(idx < 0):
        missing = [v.item() if hasattr(v, "item") else v for v in query[idx < 0]]
        raise KeyError(f"{len(missing)} item id(s) unknown to the model: {missing[:10]}"
                       + (" ..." if len(missing) > 10 else ""))
    st = _static(model)
    with st.lock:
        if st.unit_wy is None:
            # output features: the effective vectors (Wy + pooled feature rows), so items
            # added from their features have vectors too
            Wy = np.asarray(effective_output(model.params_)[0], np.float32)
            norm = np.sqrt(np.einsum("ij,ij->i", Wy, Wy, dtype=np.float64))
            # a zero vector is similar to nothing (cosine 0), not NaN
            st.unit_wy = np.ascontiguousarray(Wy / np.maximum(norm, 1e-30)[:, None],
                                              dtype=np.float32)
        unit = st.unit_wy
    out_idx = np.empty((len(idx), k), np.int64)
    out_val = np.empty((len(idx), k), np.float32)
    on_device = getattr(model, "device_", "cpu") == "cuda"
    if on_device:
        from ..backends.cuda import topk_device
        from ..model import _resolve_device
        dev = _resolve_device("cuda")
        with st.lock:
            if st.unit_wy_device is None:
                st.unit_wy_device = dev.to_device(unit)
            unit_d = st.unit_wy_device
    chunk = max(1, (64 << 20) // (4 * n_items))  # rows per block of scores: <= 64 MB
    for a in range(0, len(idx), chunk):
        q = idx[a:a + chunk]
        if on_device:
            S = dev.gemm(dev.to_device(unit[q]), unit_d, trans_b=True)
            ti, tv = topk_device(dev, S, k + 1)
        else:
            ti, tv = top_k(unit[q] @ unit.T, k + 1)
        # the top k+1 of all items without the item itself are the top k of the others
        own = ti == q[:, None]
        drop = np.where(own.any(axis=1), own.argmax(axis=1), k)
        keep = np.ones(ti.shape, bool)
        keep[np.arange(len(q)), drop] = False
        out_idx[a:a + chunk] = ti[keep].reshape(len(q), k)
        out_val[a:a + chunk] = tv[keep].reshape(len(q), k)
    ids = model.item_index_.ids[out_idx]
    if scalar:
        return ids[0], out_val[0]
    return ids, out_val

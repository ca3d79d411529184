"""Serving a fitted GRU model: scorers built once per model, a live session store, similar items.

* :func:`shared_scorer` — what ``SessionGRU.scorer()`` returns: a scorer with its own hidden
  state over item tables built ONCE per model (the CPU scorer's input-projection table and item
  panels; a CUDA model's device parameters are kept by the CUDA backend). The static part is kept
  for the model in a weak-keyed table and rebuilt when ``params_`` (the dict or any of its
  arrays) is replaced, or ``final_act``/``n_threads`` (or the CPU scorer's ``MAX_TABLE`` /
  ``USE_PANELS`` switches) change, or a sampled fingerprint of
  ``theta``/``Wy``/``By`` changes (values written in place by training; other in-place edits
  may go unseen: assign new arrays). ``recommend``, ``predict_next`` and ``evaluate`` all
  go through it.
* :class:`SessionStore` — live sessions' hidden states by session id: ``step`` advances many
  sessions in one batched call and returns their top-k (fused score + top-k kernels on the
  CPU: the all-item scores are never written), ``advance`` the same without scoring,
  ``recommend_for`` answers without a click, ``end``, LRU and idle eviction, thread-safe, snapshots to a safe ``.npz``.
* :func:`similar_items` — "customers also viewed": cosine similarity of the learned item vectors
  (rows of ``Wy``).

Modules: ``scorers`` (the shared scorers), ``store`` (the session store), ``snapshot`` (its
files), ``similar`` (similar items).
"""
from .scorers import shared_scorer
from .similar import similar_items
from .snapshot import SNAPSHOT_FORMAT, SNAPSHOT_VERSION
from .store import Advanced, Recommendations, SessionStore

__all__ = ["SessionStore", "Recommendations", "Advanced", "shared_scorer", "similar_items",
           "SNAPSHOT_FORMAT", "SNAPSHOT_VERSION"]

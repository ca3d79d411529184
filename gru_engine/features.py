"""Item features for the feature-rich model (p-RNN): specs, validation and encoders.

A feature *source* maps item ids to one input vector per item. Three kinds of spec:

- :class:`DenseFeatures` ``(ids, matrix, project=None)``: one float vector per item (image or text
  embeddings, ...). ``project=None``: the vector itself is the subnet's input; ``project=k``:
  a learned linear projection ``(d, k)`` is applied first.
- :class:`CategoricalFeatures` ``(ids, codes, dim=16, pooling='sum')``: one or several
  categorical columns (a 1-D or 2-D array of integer or string codes, each column its own
  vocabulary) or multi-hot lists of attribute ids (a sequence of sequences); every code has a
  learned embedding of size ``dim``; an item's input is the sum (or mean) of its codes' embeddings.
- :class:`TokenFeatures` ``(ids, tokens, dim=16, n_buckets=None)``: bags of words (sequences of
  integer or string tokens, or one whitespace-separated string per item); tokens are hashed into
  ``n_buckets`` rows (integers modulo, strings by CRC-32) or, without ``n_buckets``, get one row
  each; the input is the mean of the bag's embeddings (repeated tokens count repeatedly).

Defaults for items of the event data that the spec does not list:

- dense: the zero vector;
- categorical / token: a reserved *unknown* embedding row (one per categorical column; a
  multi-hot or token source has one); an empty attribute list or token bag also gets it.

Every encoded source becomes an *embedding bag* over the model's dense item indices
(:class:`EncodedFeature`): item ``i`` has entries ``indptr[i]:indptr[i+1]`` of ``(indices,
weights)`` and its input vector is ``sum_j weights[j] * table[indices[j]]``; a raw dense source
(``kind='raw'``) has no table: ``x[indices[j]] = weights[j]`` (the stored nonzeros).
Ids listed in a spec but absent from the events are ignored (count logged). Validation errors
are ``ValueError`` naming the source: duplicate ids, row-count mismatch, non-finite values,
bad dtypes or shapes.
"""
from __future__ import annotations

import logging
import numbers
import zlib
from dataclasses import dataclass, field

import numpy as np

from .data import show_id

logger = logging.getLogger("gru_engine")

RAW, BAG = "raw", "bag"


def _as_ids(ids, name: str) -> np.ndarray:
    """Feature-table ids as int64 or str, 1-D, unique."""
    arr = np.asarray(ids)
    if arr.ndim != 1:
        raise ValueError(f"item features {name!r}: ids must be one-dimensional, "
                         f"got shape {arr.shape}")
    if arr.dtype.kind == "O":
        kinds = {type(v) for v in arr}
        if kinds and all(issubclass(k, str) for k in kinds):
            arr = arr.astype(str)
        elif kinds and all(issubclass(k, numbers.Integral) and not issubclass(k, (bool, np.bool_))
                           for k in kinds):
            arr = arr.astype(np.int64)
        elif len(arr):
            raise ValueError(f"item features {name!r}: ids must be all integers or all strings, "
                             f"got types {sorted(k.__name__ for k in kinds)}")
        else:
            arr = arr.astype(np.int64)
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise ValueError(f"item features {name!r}: float ids must be finite integers")
        arr = arr.astype(np.int64)
    if arr.dtype.kind == "b" or arr.dtype.kind not in "iuUS":
        raise ValueError(f"item features {name!r}: ids must be integers or strings, "
                         f"got dtype {arr.dtype}")
    if arr.dtype.kind == "S":
        arr = arr.astype(str)
    if arr.dtype.kind in "iu":
        arr = arr.astype(np.int64)
    uniq, counts = np.unique(arr, return_counts=True)
    if len(uniq) < len(arr):
        raise ValueError(f"item features {name!r}: {int((counts > 1).sum())} duplicate item id(s), "
                         f"e.g. {show_id(uniq[counts > 1][0])}")
    return arr


def _align(ids: np.ndarray, item_index, name: str) -> tuple[np.ndarray, np.ndarray]:
    """``(rows, items)``: spec rows whose id is a model item, and those items' dense indices."""
    idx = item_index.lookup(ids)
    known = idx >= 0
    n_unknown = int((~known).sum())
    if n_unknown:
        logger.info("item features %r: %d of %d ids are not among the event items (ignored)",
                    name, n_unknown, len(ids))
    n_missing = len(item_index) - int(known.sum())
    if n_missing:
        logger.info("item features %r: %d of %d items have no entry (default input)", name,
                    n_missing, len(item_index))
    return np.flatnonzero(known), idx[known].astype(np.int64)


def _vocab(bags: list, dtype=np.int64) -> np.ndarray:
    """Sorted distinct codes of a list of code arrays."""
    nonempty = [b for b in bags if len(b)]
    return np.unique(np.concatenate(nonempty)) if nonempty else np.zeros(0, dtype)


def _code_rows(vocab: np.ndarray, codes: np.ndarray, unknown: int, name: str) -> np.ndarray:
    """Table rows of ``codes``: the position in ``vocab``, or ``unknown`` for codes not in it.
    ``ValueError`` when codes and vocabulary are of different kinds (strings vs integers)."""
    if len(codes) == 0 or len(vocab) == 0:
        return np.full(len(codes), unknown, np.int64)
    if (codes.dtype.kind == "U") != (vocab.dtype.kind == "U"):
        kind = lambda a: "strings" if a.dtype.kind == "U" else "integers"
        raise ValueError(f"item features {name!r}: codes are {kind(codes)} but the model's "
                         f"vocabulary holds {kind(vocab)}")
    pos = np.minimum(np.searchsorted(vocab, codes), len(vocab) - 1)
    return np.where(vocab[pos] == codes, pos, unknown).astype(np.int64)


def _csr(n_items: int, items: np.ndarray, lists: list, weights: list, default=None):
    """CSR ``(indptr, indices, weights)`` over all items; ``default`` = (indices, weights) for
    items without an entry (None: empty bag)."""
    per_idx = [None] * n_items
    per_w = [None] * n_items
    for it, ind, w in zip(items, lists, weights):
        per_idx[it] = ind
        per_w[it] = w
    if default is not None:
        d_idx, d_w = default
        for i in range(n_items):
            if per_idx[i] is None or len(per_idx[i]) == 0:
                per_idx[i], per_w[i] = d_idx, d_w
    lengths = np.array([0 if p is None else len(p) for p in per_idx], dtype=np.int64)
    indptr = np.zeros(n_items + 1, np.int64)
    np.cumsum(lengths, out=indptr[1:])
    nz = [p for p in per_idx if p is not None and len(p)]
    nw = [w for w in per_w if w is not None and len(w)]
    indices = np.concatenate(nz).astype(np.int32) if nz else np.zeros(0, np.int32)
    wts = np.concatenate(nw).astype(np.float32) if nw else np.zeros(0, np.float32)
    return indptr, indices, wts


@dataclass
class EncodedFeature:
    """One feature source over the model's items (an embedding bag, see the module docstring).

    indptr:  (n_items+1,) int64; indices: (nnz,) int32; weights: (nnz,) float32
    kind:    'raw' (no table; ``dim`` = vector length) or 'bag' (learned table ``(n_rows, dim)``)
    n_rows:  table rows ('bag') or vector length ('raw')
    info:    JSON-able description of the spec (kind, sizes, pooling) for model files
    vocab:   the encoder's vocabularies (sorted int64 or str code arrays: one per categorical
             column, one for multi-hot codes or unhashed tokens, none for dense features and
             hashed tokens); with ``info`` they encode items the model was not trained on
             (:func:`encode_new_items`)
    """

    name: str
    kind: str
    indptr: np.ndarray
    indices: np.ndarray
    weights: np.ndarray
    n_rows: int
    dim: int
    info: dict = field(default_factory=dict)
    vocab: list = field(default_factory=list)


class DenseFeatures:
    """Float vectors per item id.

    ids:     (n,) item ids (integers or strings, unique)
    matrix:  (n, d) finite floats; row ``k`` belongs to ``ids[k]``
    project: None (the vector is the subnet input) or int k >= 1 (learned ``(d, k)`` projection)
    Items without a row get the zero vector.
    """

    def __init__(self, ids, matrix, project=None):
        self.ids = ids
        self.matrix = matrix
        self.project = project

    def validate(self, name: str):
        ids = _as_ids(self.ids, name)
        m = np.asarray(self.matrix)
        if m.dtype.kind not in "iuf" or m.dtype.kind == "b":
            raise ValueError(f"item features {name!r}: matrix must be numeric, got dtype {m.dtype}")
        if m.ndim != 2:
            raise ValueError(f"item features {name!r}: matrix must be 2-D (n_ids, d), "
                             f"got shape {m.shape}")
        if m.shape[0] != len(ids):
            raise ValueError(f"item features {name!r}: matrix has {m.shape[0]} rows for "
                             f"{len(ids)} ids")
        if m.shape[1] < 1:
            raise ValueError(f"item features {name!r}: matrix has no columns")
        if not np.all(np.isfinite(m)):
            raise ValueError(f"item features {name!r}: matrix holds {int((~np.isfinite(m)).sum())} "
                             "NaN or infinite values")
        _check_positive_int(self.project, name, "project", optional=True)
        return ids, m.astype(np.float32)

    def encode(self, name: str, item_index, vocab=None) -> EncodedFeature:
        """Encode for the items of ``item_index`` (``vocab`` is unused: dense features have
        none)."""
        ids, m = self.validate(name)
        rows, items = _align(ids, item_index, name)
        d = m.shape[1]
        order = np.argsort(items, kind="stable")
        sub = m[rows[order]]
        r, c = np.nonzero(sub)  # row-major: sorted by item
        indptr = np.zeros(len(item_index) + 1, np.int64)
        np.cumsum(np.bincount(items[order][r], minlength=len(item_index)), out=indptr[1:])
        indices, weights = c.astype(np.int32), sub[r, c]
        project = None if self.project is None else int(self.project)
        info = {"type": "dense", "d": d, "project": project}
        if project is None:
            return EncodedFeature(name, RAW, indptr, indices, weights, d, d, info)
        return EncodedFeature(name, BAG, indptr, indices, weights, d, project, info)


def _code_array(values, name: str, what: str) -> np.ndarray:
    """Codes as int64 or str; ValueError on missing values / other types."""
    arr = np.asarray(values)
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"item features {name!r}: {what} hold NaN or infinite values")
        if not np.all(arr == np.round(arr)):
            raise ValueError(f"item features {name!r}: {what} must be integers or strings, "
                             "got non-integer floats")
        return arr.astype(np.int64)
    if arr.dtype.kind in "iu":
        return arr.astype(np.int64)
    if arr.dtype.kind in "US":
        return arr.astype(str)
    if arr.dtype.kind == "O":
        flat = list(arr.ravel())
        if any(v is None or (isinstance(v, float) and v != v) for v in flat):
            raise ValueError(f"item features {name!r}: {what} hold missing values (None/NaN)")
        if all(isinstance(v, str) for v in flat):
            return arr.astype(str)
        if all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in flat):
            return arr.astype(np.int64)
    raise ValueError(f"item features {name!r}: {what} must be integers or strings, "
                     f"got dtype {arr.dtype}")


def _is_ragged(values) -> bool:
    """True for a sequence of sequences (multi-hot lists / token bags)."""
    if callable(getattr(values, "to_numpy", None)):  # pandas Series of lists
        values = values.to_numpy()
    if isinstance(values, np.ndarray):
        return values.dtype.kind == "O" and values.ndim == 1 and any(
            isinstance(v, (list, tuple, np.ndarray)) for v in values)
    return isinstance(values, (list, tuple)) and any(isinstance(v, (list, tuple, np.ndarray))
                                                     for v in values)


def _bags(values, n: int, name: str, what: str, split_strings: bool = False) -> list:
    """List of ``n`` 1-D code arrays (int64 or str, one kind for all)."""
    if split_strings:
        values = [v.split() if isinstance(v, str) else v for v in values]
    try:
        seq = list(values)
    except TypeError:
        raise ValueError(f"item features {name!r}: {what} must be a sequence of "
                         "sequences") from None
    if len(seq) != n:
        raise ValueError(f"item features {name!r}: {len(seq)} {what} for {n} ids")
    out = []
    kind = None
    for v in seq:
        if isinstance(v, (str, bytes)) or not hasattr(v, "__len__"):
            raise ValueError(f"item features {name!r}: each entry of {what} must be a "
                             f"sequence, got {v!r}")
        a = _code_array(list(v), name, what) if len(v) else np.zeros(0, np.int64)
        if len(a):
            k = "U" if a.dtype.kind == "U" else "i"
            if kind is None:
                kind = k
            elif k != kind:
                raise ValueError(f"item features {name!r}: {what} mix integer and string codes")
        out.append(a)
    return out


def _check_positive_int(value, name: str, what: str, optional: bool = False) -> None:
    """``ValueError`` naming source ``name`` and parameter ``what`` unless ``value`` is a positive
    int (or None when ``optional``)."""
    if optional and value is None:
        return
    if not (isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1):
        allowed = "None or a positive int" if optional else "a positive int"
        raise ValueError(f"item features {name!r}: {what} must be {allowed}, got {value!r}")


def _init_info(type_, **kw) -> dict:
    return dict({"type": type_}, **kw)


class CategoricalFeatures:
    """Categorical attributes per item id, embedded and pooled.

    ids:     (n,) item ids (integers or strings, unique)
    codes:   (n,) or (n, n_cols) integer/string codes (each column its own vocabulary), or a
             sequence of n sequences of attribute ids (multi-hot; one vocabulary)
    dim:     embedding size (int >= 1)
    pooling: 'sum' (default) or 'mean' over an item's codes
    Items without an entry, and empty attribute lists, get the reserved unknown row(s).
    """

    def __init__(self, ids, codes, dim=16, pooling="sum"):
        self.ids = ids
        self.codes = codes
        self.dim = dim
        self.pooling = pooling

    def _check(self, name):
        _check_positive_int(self.dim, name, "dim")
        if self.pooling not in ("sum", "mean"):
            raise ValueError(f"item features {name!r}: pooling must be 'sum' or 'mean', "
                             f"got {self.pooling!r}")

    def validate(self, name: str):
        self._check(name)
        ids = _as_ids(self.ids, name)
        if _is_ragged(self.codes):
            return ids, _bags(self.codes, len(ids), name, "attribute lists"), True
        codes = _code_array(self.codes, name, "codes")
        if codes.ndim == 1:
            codes = codes[:, None]
        if codes.ndim != 2:
            raise ValueError(f"item features {name!r}: codes must be 1-D, 2-D or a list of lists, "
                             f"got shape {codes.shape}")
        if codes.shape[0] != len(ids):
            raise ValueError(f"item features {name!r}: codes have {codes.shape[0]} rows for "
                             f"{len(ids)} ids")
        return ids, codes, False

    def encode(self, name: str, item_index, vocab=None) -> EncodedFeature:
        """Encode for the items of ``item_index``: with the vocabularies learned from them
        (``vocab=None``, at fit), or with a fitted model's ``vocab`` (codes it does not hold
        get the unknown row)."""
        ids, codes, ragged = self.validate(name)
        rows, items = _align(ids, item_index, name)
        n_items = len(item_index)
        if ragged:
            bags = [codes[r] for r in rows]
            vocab = [_vocab(bags)] if vocab is None else vocab
            unknown = len(vocab[0])
            lists = [_code_rows(vocab[0], b, unknown, name) for b in bags]
            n_rows, n_cols = unknown + 1, 1
            defaults = (np.array([unknown]), np.ones(1))
        else:
            n_cols = codes.shape[1]
            if vocab is None:
                vocab = [np.unique(codes[rows, c]) for c in range(n_cols)]
            elif len(vocab) != n_cols:
                raise ValueError(f"item features {name!r}: {n_cols} code columns, but the model "
                                 f"was trained with {len(vocab)}")
            cols, unknown_rows = [], []
            base = 0
            for c in range(n_cols):
                cols.append(_code_rows(vocab[c], codes[rows, c], len(vocab[c]), name) + base)
                unknown_rows.append(base + len(vocab[c]))
                base += len(vocab[c]) + 1
            lists = list(np.stack(cols, axis=1))
            n_rows = base
            defaults = (np.array(unknown_rows), np.ones(n_cols))
        if self.pooling == "mean":
            wts = [np.full(len(x), 1.0 / max(len(x), 1)) for x in lists]
            defaults = (defaults[0], defaults[1] / len(defaults[1]))
        else:
            wts = [np.ones(len(x)) for x in lists]
        indptr, indices, weights = _csr(n_items, items, lists, wts, default=defaults)
        return EncodedFeature(name, BAG, indptr, indices, weights, n_rows, int(self.dim),
                              {"type": "categorical", "n_rows": n_rows, "n_cols": n_cols,
                               "multi_hot": ragged, "pooling": self.pooling}, vocab)


def _hash_tokens(tokens: np.ndarray, n_buckets: int) -> np.ndarray:
    if tokens.dtype.kind == "U":
        return np.array([zlib.crc32(t.encode("utf-8")) % n_buckets for t in tokens], np.int64)
    return np.mod(tokens, n_buckets)


class TokenFeatures:
    """Bags of words per item id, embedded and mean-pooled.

    ids:       (n,) item ids (integers or strings, unique)
    tokens:    sequence of n token sequences (integers or strings), or n whitespace-separated
               strings
    dim:       embedding size (int >= 1)
    n_buckets: None (one row per distinct token seen) or int >= 1 (hashing: integers modulo,
               strings by CRC-32, modulo)
    Items without an entry, and empty bags, get the reserved unknown row (the last row).
    """

    def __init__(self, ids, tokens, dim=16, n_buckets=None):
        self.ids = ids
        self.tokens = tokens
        self.dim = dim
        self.n_buckets = n_buckets

    def validate(self, name: str):
        _check_positive_int(self.dim, name, "dim")
        _check_positive_int(self.n_buckets, name, "n_buckets", optional=True)
        ids = _as_ids(self.ids, name)
        return ids, _bags(self.tokens, len(ids), name, "token bags", split_strings=True)

    def encode(self, name: str, item_index, vocab=None) -> EncodedFeature:
        """Encode for the items of ``item_index``, with the token vocabulary learned from them
        (``vocab=None``) or a fitted model's ``vocab`` (unknown tokens get the unknown row)."""
        ids, bags = self.validate(name)
        rows, items = _align(ids, item_index, name)
        bags = [bags[r] for r in rows]
        if self.n_buckets is not None:
            lists = [_hash_tokens(b, int(self.n_buckets)) for b in bags]
            unknown = int(self.n_buckets)
            vocab = []
        else:
            vocab = [_vocab(bags)] if vocab is None else vocab
            unknown = len(vocab[0])
            lists = [_code_rows(vocab[0], b, unknown, name) for b in bags]
        wts = [np.full(len(x), 1.0 / max(len(x), 1)) for x in lists]
        indptr, indices, weights = _csr(len(item_index), items, lists, wts,
                                        default=(np.array([unknown]), np.ones(1)))
        return EncodedFeature(name, BAG, indptr, indices, weights, unknown + 1, int(self.dim),
                              {"type": "tokens", "n_rows": unknown + 1, "n_buckets": self.n_buckets,
                               "pooling": "mean"}, vocab)


SPEC_TYPES = (DenseFeatures, CategoricalFeatures, TokenFeatures)


def validate_item_features(item_features) -> dict:
    """Check the ``{source_name: spec}`` dict (types, shapes, ids, values) before any data is
    read; returns it as an ordered dict (sources keep the caller's order)."""
    if item_features is None:
        return {}
    if not isinstance(item_features, dict):
        raise ValueError("item_features must be a dict {source_name: DenseFeatures | "
                         "CategoricalFeatures | TokenFeatures}, got "
                         f"{type(item_features).__name__}")
    for name, spec in item_features.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"item_features: source names must be non-empty strings, got {name!r}")
        if not isinstance(spec, SPEC_TYPES):
            raise ValueError(f"item features {name!r}: spec must be DenseFeatures, "
                             f"CategoricalFeatures or TokenFeatures, got {type(spec).__name__}")
        spec.validate(name)
    return dict(item_features)


def encode_item_features(item_features: dict, item_index) -> list:
    """Encode every source over the model's items (see :class:`EncodedFeature`)."""
    return [spec.encode(name, item_index) for name, spec in item_features.items()]


_SPEC_OF_TYPE = {"dense": DenseFeatures, "categorical": CategoricalFeatures, "tokens": TokenFeatures}


def _default_spec(info: dict):
    """A spec listing no item: every item gets the source's default input."""
    if info["type"] == "dense":
        return DenseFeatures(np.zeros(0, np.int64), np.zeros((0, info["d"])), info["project"])
    if info["type"] == "categorical":
        codes = [] if info["multi_hot"] else np.zeros((0, info["n_cols"]), np.int64)
        return CategoricalFeatures(np.zeros(0, np.int64), codes, pooling=info["pooling"])
    return TokenFeatures(np.zeros(0, np.int64), [], n_buckets=info["n_buckets"])


def _as_model_spec(spec, name: str, info: dict):
    """``spec``'s items and values with the model's encoder settings; ``ValueError`` when its
    type or shape does not match the source the model was trained with."""
    want = _SPEC_OF_TYPE[info["type"]]
    if not isinstance(spec, want):
        raise ValueError(f"item features {name!r}: the model was trained with {want.__name__}, "
                         f"got {type(spec).__name__}")
    if info["type"] == "dense":
        d = spec.validate(name)[1].shape[1]
        if d != info["d"]:
            raise ValueError(f"item features {name!r}: vectors of size {d}, but the model was "
                             f"trained with size {info['d']}")
        return DenseFeatures(spec.ids, spec.matrix, info["project"])
    if info["type"] == "categorical":
        _, codes, ragged = spec.validate(name)
        if ragged != info["multi_hot"]:
            want_codes = "multi-hot lists" if info["multi_hot"] else "code columns"
            raise ValueError(f"item features {name!r}: the model was trained with "
                             f"{want_codes}")
        return CategoricalFeatures(spec.ids, spec.codes, pooling=info["pooling"])
    return TokenFeatures(spec.ids, spec.tokens, n_buckets=info["n_buckets"])


def encode_new_items(item_features: dict, sources: list, new_ids) -> tuple[list, np.ndarray]:
    """Bags of items a fitted model was not trained on, with the model's encoders.

    item_features: ``{source_name: spec}`` listing (at least) the new items; each name must be
                   one of the model's sources and each spec of that source's type. Pooling,
                   hashing and sizes are the model's (the spec's own ``dim``/``pooling``/
                   ``n_buckets``/``project`` are ignored); codes or tokens the model never saw
                   get the unknown row. A source not given gives every new item its default.
    sources:       the model's sources in order, ``(name, info, vocab)`` as in
                   :class:`EncodedFeature`
    new_ids:       (n,) original ids (none of them a model item)
    Returns ``(bags, listed)``: per source ``(indptr (n+1,), indices, weights)`` over the new
    items in the order of ``new_ids``, and ``listed`` (n,) bool: the id is in some given spec.
    """
    from .data import ItemIndex
    item_features = validate_item_features(item_features)
    known = [name for name, _, _ in sources]
    extra = [name for name in item_features if name not in known]
    if extra:
        raise ValueError(f"item_features: {extra} are not sources of this model; its sources: "
                         f"{known}")
    index = ItemIndex(np.asarray(new_ids))
    listed = np.zeros(len(index), bool)
    bags = []
    for name, info, vocab in sources:
        spec = item_features.get(name)
        if spec is None:
            spec = _default_spec(info)
        else:
            spec = _as_model_spec(spec, name, info)
            listed |= ItemIndex(_as_ids(spec.ids, name)).lookup(index.ids) >= 0
        vocab = [np.asarray(v) for v in vocab] or None
        enc = spec.encode(name, index, vocab)
        bags.append((enc.indptr, enc.indices, enc.weights))
    return bags, listed

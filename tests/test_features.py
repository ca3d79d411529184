"""Item-feature specs: validation errors, defaults for items without features, encodings."""
import logging

import numpy as np
import pytest

from gru_engine.data import ItemIndex
from gru_engine.features import (BAG, RAW, CategoricalFeatures, DenseFeatures, TokenFeatures,
                                 encode_item_features, validate_item_features)


def bag_vectors(enc, table=None):
    """Plain-Python input vector of every item from an EncodedFeature (reference)."""
    n = len(enc.indptr) - 1
    out = np.zeros((n, enc.dim))
    for i in range(n):
        for j in range(enc.indptr[i], enc.indptr[i + 1]):
            c, w = enc.indices[j], enc.weights[j]
            if enc.kind == RAW:
                out[i, c] += w
            else:
                out[i] += w * table[c]
    return out


def entries(enc, i):
    a, b = enc.indptr[i], enc.indptr[i + 1]
    return list(zip(enc.indices[a:b].tolist(), np.round(enc.weights[a:b], 6).tolist()))


@pytest.fixture
def index():
    return ItemIndex(np.array([10, 11, 12, 13, 14]))


# ---- dense ------------------------------------------------------------------------------------
def test_dense_raw_vectors_and_zero_default(index, caplog):
    m = np.array([[1.0, 0.0, 2.0], [0.5, -1.0, 0.0], [3.0, 3.0, 3.0], [7.0, 7.0, 7.0]])
    ids = np.array([12, 10, 14, 99])  # 11 and 13 missing, 99 unknown to the events
    with caplog.at_level(logging.INFO, logger="gru_engine"):
        enc = DenseFeatures(ids, m).encode("v", index)
    assert enc.kind == RAW and enc.dim == 3
    x = bag_vectors(enc)
    np.testing.assert_allclose(x, [[0.5, -1, 0], [0, 0, 0], [1, 0, 2], [0, 0, 0], [3, 3, 3]])
    assert "not among the event items" in caplog.text


def test_dense_projection_is_a_bag_over_columns(index):
    m = np.array([[1.0, 0.0], [0.0, 2.0]])
    enc = DenseFeatures([10, 11], m, project=4).encode("v", index)
    assert enc.kind == BAG and enc.n_rows == 2 and enc.dim == 4
    table = np.arange(8.0).reshape(2, 4)
    x = bag_vectors(enc, table)
    np.testing.assert_allclose(x[:2], m @ table)
    np.testing.assert_allclose(x[2:], 0)


@pytest.mark.parametrize("ids,matrix,msg", [
    ([1, 1], np.zeros((2, 2)), "duplicate"),
    ([1, 2], np.zeros((3, 2)), "3 rows for 2 ids"),
    ([1, 2], np.array([[0.0, np.nan], [1, 1]]), "NaN"),
    ([1, 2], np.array([[0.0, np.inf], [1, 1]]), "NaN or infinite"),
    ([1, 2], np.zeros(2), "2-D"),
    ([1, 2], np.array([["a", "b"], ["c", "d"]]), "numeric"),
    ([[1], [2]], np.zeros((2, 2)), "one-dimensional"),
    ([1.5, 2], np.zeros((2, 2)), "integers"),
])
def test_dense_validation(ids, matrix, msg):
    with pytest.raises(ValueError, match=msg):
        DenseFeatures(ids, matrix).validate("v")


def test_dense_bad_projection():
    with pytest.raises(ValueError, match="project"):
        DenseFeatures([1], np.zeros((1, 2)), project=0).validate("v")


# ---- categorical ------------------------------------------------------------------------------
def test_categorical_columns_have_own_vocabulary_and_unknown_rows(index):
    codes = np.array([["a", "x"], ["b", "x"], ["a", "y"]])
    enc = CategoricalFeatures([10, 11, 13], codes, dim=3).encode("c", index)
    # column 0: a=0, b=1, unknown=2; column 1: x=3, y=4, unknown=5
    assert enc.n_rows == 6
    assert entries(enc, 0) == [(0, 1.0), (3, 1.0)]
    assert entries(enc, 1) == [(1, 1.0), (3, 1.0)]
    assert entries(enc, 3) == [(0, 1.0), (4, 1.0)]
    assert entries(enc, 2) == [(2, 1.0), (5, 1.0)]  # item 12: no entry -> unknown rows
    assert entries(enc, 4) == [(2, 1.0), (5, 1.0)]


def test_categorical_single_column_mean_pooling(index):
    enc = CategoricalFeatures([10, 11], [5, 7], dim=2, pooling="mean").encode("c", index)
    assert enc.n_rows == 3
    assert entries(enc, 0) == [(0, 1.0)]
    assert entries(enc, 4) == [(2, 1.0)]


def test_multi_hot_lists_sum_and_mean(index):
    codes = [[3, 1], [], [1, 1, 8]]
    enc = CategoricalFeatures([10, 11, 12], codes, dim=2).encode("c", index)
    assert enc.n_rows == 4  # vocab 1, 3, 8 + unknown
    assert entries(enc, 0) == [(1, 1.0), (0, 1.0)]
    assert entries(enc, 1) == [(3, 1.0)]  # empty list -> unknown
    assert entries(enc, 2) == [(0, 1.0), (0, 1.0), (2, 1.0)]
    assert entries(enc, 3) == [(3, 1.0)]  # no entry -> unknown
    mean = CategoricalFeatures([10, 11, 12], codes, dim=2, pooling="mean").encode("c", index)
    table = np.arange(8.0).reshape(4, 2)
    x = bag_vectors(mean, table)
    np.testing.assert_allclose(x[2], (2 * table[0] + table[2]) / 3)
    np.testing.assert_allclose(x[0], (table[1] + table[0]) / 2)


@pytest.mark.parametrize("codes,msg", [
    (np.array([1.0, np.nan]), "NaN"),
    ([[1, 2], [None]], "missing"),
    ([[1, 2], ["a"]], "mix integer and string"),
    (np.zeros((3, 1)), "3 rows for 2 ids"),
    (np.array([1.5, 2.0]), "non-integer"),
])
def test_categorical_validation(codes, msg):
    with pytest.raises(ValueError, match=msg):
        CategoricalFeatures([1, 2], codes).validate("c")


def test_categorical_bad_dim_and_pooling():
    with pytest.raises(ValueError, match="dim"):
        CategoricalFeatures([1], [1], dim=0).validate("c")
    with pytest.raises(ValueError, match="pooling"):
        CategoricalFeatures([1], [1], pooling="max").validate("c")


# ---- tokens -----------------------------------------------------------------------------------
def test_tokens_vocabulary_mean_and_unknown(index):
    enc = TokenFeatures([10, 11, 12], ["red shoe", "shoe shoe", ""], dim=2).encode("t", index)
    assert enc.n_rows == 3  # red, shoe, unknown
    assert entries(enc, 0) == [(0, 0.5), (1, 0.5)]
    assert entries(enc, 1) == [(1, 0.5), (1, 0.5)]
    assert entries(enc, 2) == [(2, 1.0)]
    assert entries(enc, 3) == [(2, 1.0)]


def test_tokens_hashing(index):
    enc = TokenFeatures([10, 11], [[3, 12], [7]], dim=2, n_buckets=5).encode("t", index)
    assert enc.n_rows == 6
    assert entries(enc, 0) == [(3, 0.5), (2, 0.5)]
    assert entries(enc, 1) == [(2, 1.0)]
    s = TokenFeatures(["a"], [["abc", "abc"]], n_buckets=7).encode("t", ItemIndex(np.array(["a"])))
    assert s.indices[0] == s.indices[1] < 7


def test_tokens_validation():
    with pytest.raises(ValueError, match="2 token bags for 1 ids"):
        TokenFeatures([1], [[1], [2]]).validate("t")
    with pytest.raises(ValueError, match="n_buckets"):
        TokenFeatures([1], [[1]], n_buckets=0).validate("t")
    with pytest.raises(ValueError, match="sequence"):
        TokenFeatures([1], [5]).validate("t")


# ---- the dict -------------------------------------------------------------------------------
def test_validate_item_features_dict():
    assert validate_item_features(None) == {}
    with pytest.raises(ValueError, match="must be a dict"):
        validate_item_features([DenseFeatures([1], np.zeros((1, 1)))])
    with pytest.raises(ValueError, match="spec must be"):
        validate_item_features({"x": np.zeros((1, 1))})
    with pytest.raises(ValueError, match="source names"):
        validate_item_features({"": DenseFeatures([1], np.zeros((1, 1)))})
    with pytest.raises(ValueError, match="'bad'.*duplicate"):
        validate_item_features({"bad": DenseFeatures([1, 1], np.zeros((2, 1)))})


def test_string_ids_match_string_items():
    index = ItemIndex(np.array(["a", "b", "c"]))
    enc = encode_item_features({"v": DenseFeatures(np.array(["c", "a"], dtype=object),
                                                   np.array([[1.0], [2.0]]))}, index)[0]
    np.testing.assert_allclose(bag_vectors(enc)[:, 0], [2.0, 0.0, 1.0])
    # integer ids never match string items (all default)
    enc = encode_item_features({"v": DenseFeatures([1, 2], np.ones((2, 1)))}, index)[0]
    np.testing.assert_allclose(bag_vectors(enc), 0)

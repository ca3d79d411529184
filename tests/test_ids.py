"""Item and session ids (gru_engine/data.py): unsigned 64-bit ids kept exact, float ids refused
unless exact integers below 2**53, the csv-module reader typing columns as pandas does (an empty
field is an error naming the row), ids of the other kind refused with a clear message, and
messages that show ids as the user wrote them."""
import math
import re
import sys

import numpy as np
import pytest

from gru_engine import SessionGRU
from gru_engine.data import ItemIndex, build_sessions, extract_events, read_events, show_id

import model_files as mf

try:
    import pandas as pd
except ImportError:
    pd = None

BIG = 2 ** 64 - 1  # >= 2**63: wraps to -1 as int64


def _events(ids):
    """The small event table of ``model_files`` with its item indices mapped to ``ids``."""
    ev = mf.events()
    return {"SessionId": ev["SessionId"], "ItemId": np.asarray(ids)[ev["ItemId"]],
            "Time": ev["Time"]}


def _tiny_model(ids):
    return SessionGRU(layers=[8], n_epochs=1, batch_size=8, n_sample=6, random_state=1,
                      n_threads=1).fit(_events(ids))


# ---- unsigned 64-bit and float ids ---------------------------------------------------------
def test_uint64_ids_above_2_63_are_kept_exact_through_fit_recommend_and_files(tmp_path):
    ids = np.array([BIG - k for k in range(mf.N_ITEMS)], dtype=np.uint64)
    model = _tiny_model(ids)
    assert model.item_index_.ids.dtype == np.uint64
    assert sorted(model.item_index_.ids.tolist()) == sorted(ids.tolist())
    rec, _ = model.recommend([BIG, BIG - 3], k=5)  # Python ints, as a user writes them
    assert rec.dtype == np.uint64 and set(rec.tolist()) <= set(ids.tolist())
    model.save(tmp_path / "m.npz")
    again = SessionGRU.load(tmp_path / "m.npz")
    assert again.item_index_.ids.tolist() == model.item_index_.ids.tolist()
    np.testing.assert_array_equal(again.predict_next([[BIG, BIG - 1]]),
                                  model.predict_next([[BIG, BIG - 1]]))
    with pytest.raises(KeyError, match=r"e\.g\. -1\b"):
        model.recommend([-1])  # not the wrapped int64 of BIG


def test_uint64_lookup_against_other_integer_kinds():
    index = ItemIndex(np.array([BIG, 5, 2 ** 63], dtype=np.uint64))
    assert index.lookup(np.array([5, -1], dtype=np.int64)).tolist() == [1, -1]
    assert index.lookup(np.array([BIG, 2 ** 63, 7], dtype=object)).tolist() == [0, 2, -1]
    assert index.lookup(np.array([5.0, 2.0 ** 63])).tolist() == [1, -1]  # 2**63 is not exact
    ints = ItemIndex(np.array([-3, 5]))
    assert ints.lookup(np.array([5, BIG], dtype=np.uint64)).tolist() == [1, -1]
    assert ints.lookup(np.array([BIG, -3], dtype=object)).tolist() == [-1, 0]


def test_integer_ids_beyond_64_bits_are_refused():
    with pytest.raises(ValueError, match=r"beyond 64-bit integers \(e\.g\. 18446744073709551616\)"):
        extract_events({"SessionId": [1, 1], "ItemId": np.array([2 ** 64, 1], dtype=object),
                        "Time": [0, 1]})


@pytest.mark.parametrize("value, row", [(2.0 ** 53, 1), (2.0 ** 53 + 2, 1), (1.5, 1),
                                        (-2.0 ** 60, 1)])
def test_float_ids_must_be_exact_integers_below_2_53(value, row):
    data = {"SessionId": [1, 1], "ItemId": np.array([3.0, value]), "Time": [0, 1]}
    with pytest.raises(ValueError, match=rf"row {row}: {re.escape(show_id(value))}\).*2\*\*53"):
        extract_events(data)
    ok = {"SessionId": [1, 1], "ItemId": np.array([3.0, 2.0 ** 53 - 1]), "Time": [0, 1]}
    assert extract_events(ok)[1].tolist() == [3, 2 ** 53 - 1]


# ---- ids of the other kind, and messages ------------------------------------------------------
def test_string_model_refuses_int_ids_and_int_model_refuses_string_ids():
    strs = _tiny_model(np.array([f"i{k}" for k in range(mf.N_ITEMS)]))
    with pytest.raises(KeyError, match="item ids are strings, but numbers were given "
                                       r"\(e\.g\. 3\)"):
        strs.recommend([3])
    ints = _tiny_model(np.arange(100, 100 + mf.N_ITEMS))
    with pytest.raises(KeyError, match="item ids are integers, but strings were given "
                                       r"\(e\.g\. '101'\)"):
        ints.predict_next([["101", "102"]])
    test = _events(np.array([str(100 + k) for k in range(mf.N_ITEMS)]))
    with pytest.raises(ValueError, match="column 'ItemId': this model's item ids are integers, "
                                         r"but strings were given \(e\.g\. '1\d\d'; the model's "
                                         r"ids look like 1\d\d\)"):
        ints.evaluate(test)


def test_messages_show_ids_as_written():
    index = ItemIndex(np.array([4, 2]))
    with pytest.raises(KeyError) as info:
        index.to_index(np.array([2, 99], dtype=np.int64))
    assert "e.g. 99" in str(info.value) and "np." not in str(info.value)
    strs = ItemIndex(np.array(["a", "b"]))
    with pytest.raises(KeyError) as info:
        strs.to_index(np.array(["zz"]))
    assert "e.g. 'zz'" in str(info.value) and "np." not in str(info.value)
    assert show_id(np.uint64(BIG)) == str(BIG) and show_id(np.str_("x")) == "'x'"


# ---- the csv-module reader types columns as pandas does ---------------------------------------
CSV_COLUMNS = {
    "ints": ["1", "+5", " 7", "-0"], "uint64": [str(BIG), "5", "6", "7"],
    "beyond64": ["99999999999999999999", "5", "6", "7"], "negbig": ["-1", str(BIG), "2", "3"],
    "empty_int": ["1", "", "3", "4"], "na_words": ["NA", "null", "nan", "5"],
    "floats": ["1.5", "2", "1e3", ".5"], "infs": ["inf", "-inf", "Infinity", "1"],
    "bools": ["True", "false", "TRUE", "False"], "boolmix": ["True", "1", "2", "3"],
    "strings": ["a", "b b", "0x10", "1_000"], "empty_str": ["a", "", "c", "d"],
    "spaces": ["  ", "1", "2", "3"], "leading0": ["007", "8", "9", "10"],
}


def _same(a, b) -> bool:
    if type(a) is not type(b) and not (isinstance(a, str) and isinstance(b, str)):
        return False
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    return a == b


@pytest.mark.skipif(pd is None, reason="pandas not installed: nothing to compare with")
def test_csv_reader_types_every_column_as_pandas(tmp_path, monkeypatch):
    path = tmp_path / "cols.tsv"
    names = list(CSV_COLUMNS)
    rows = zip(*CSV_COLUMNS.values())
    path.write_text("\t".join(names) + "\n" + "".join("\t".join(r) + "\n" for r in rows))
    with_pd = read_events(path)
    monkeypatch.setitem(sys.modules, "pandas", None)
    without = read_events(path)
    for name in names:
        a, b = with_pd[name], without[name]
        # pandas' object arrays of str are str arrays here; every other dtype is the same
        want = "str" if a.dtype == object and all(isinstance(v, str) for v in a) else a.dtype
        got = "str" if b.dtype.kind == "U" else b.dtype
        assert got == want, (name, a.dtype, b.dtype)
        assert all(_same(x, y) for x, y in zip(a.tolist(), b.tolist())), (name, a, b)


@pytest.mark.parametrize("use_pandas", [True, False])
def test_an_empty_item_id_field_is_an_error_naming_the_row(tmp_path, monkeypatch, use_pandas):
    if use_pandas and pd is None:
        pytest.skip("pandas not installed")
    if not use_pandas:
        monkeypatch.setitem(sys.modules, "pandas", None)
    for ids in (["a", "b", "", "c"], ["1", "2", "", "3"]):
        path = tmp_path / "e.tsv"
        path.write_text("SessionId\tItemId\tTime\n" + "".join(
            f"1\t{i}\t{t}\n" for t, i in enumerate(ids)))
        with pytest.raises(ValueError, match=r"column 'ItemId' has 1 missing .* first at row 2"):
            build_sessions(read_events(path))

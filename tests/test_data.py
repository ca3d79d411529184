"""Tests of gru_engine.data: validation, item index, CSR sessions, event files."""
import gzip
import logging
import sys

import numpy as np
import pytest

from gru_engine.data import (DEFAULT_KEYS, BuildReport, ItemIndex, Sessions, build_sessions,
                             extract_events, read_events, write_events)

try:
    import pandas as pd
except ImportError:  # pandas is optional: the pandas cases skip, the rest still run
    pd = None

needs_pandas = pytest.mark.skipif(pd is None, reason="pandas not installed")


def frame(cols):
    return pd.DataFrame(cols)


def table(sessions, items, times):
    return {"SessionId": np.asarray(sessions), "ItemId": np.asarray(items),
            "Time": np.asarray(times)}


class Columns:
    """An object with column access only (no .columns, no .keys)."""

    def __init__(self, cols):
        self._cols = cols

    def __getitem__(self, key):
        return self._cols[key]


# ---------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("make", [dict, pytest.param(frame, marks=needs_pandas), Columns])
@pytest.mark.parametrize("missing", ["SessionId", "ItemId", "Time"])
def test_missing_column_is_named(make, missing):
    cols = table([1, 1], [1, 2], [0.0, 1.0])
    del cols[missing]
    with pytest.raises(ValueError, match=f"missing column '{missing}'"):
        extract_events(make(cols))


def test_missing_column_lists_available_columns():
    with pytest.raises(ValueError, match=r"available columns: \['SessionId', 'Time'\]"):
        extract_events({"SessionId": [1], "Time": [1.0]})


@pytest.mark.parametrize("key,values,match", [
    ("SessionId", np.array([1.0, np.nan, 2.0]), "'SessionId' has 1 missing"),
    ("SessionId", np.array([1, None, 2], dtype=object), "'SessionId' has 1 missing"),
    ("SessionId", np.array(["a", None, "b"], dtype=object), "'SessionId' has 1 missing"),
    ("ItemId", np.array([3, 4, None], dtype=object), "'ItemId' has 1 missing .* row 2"),
    ("ItemId", np.array(["x", float("nan"), "y"], dtype=object), "'ItemId' has 1 missing"),
    ("Time", np.array([0.0, np.nan, 2.0]), "'Time' has 1 missing"),
    ("Time", np.array([0.0, None, 2.0], dtype=object), "'Time' has 1 missing"),
    ("Time", np.array(["2014-01-01", "NaT", "2014-01-02"], dtype="datetime64[s]"), "missing .NaT."),
    ("Time", np.array([0.0, np.inf, 2.0]), "'Time' has 1 infinite"),
])
def test_missing_values_raise(key, values, match):
    cols = table([1, 1, 2], [1, 2, 3], [0.0, 1.0, 2.0])
    cols[key] = values
    with pytest.raises(ValueError, match=match):
        extract_events(cols)
    if pd is not None:
        with pytest.raises(ValueError, match=match):
            build_sessions(pd.DataFrame(cols))


@needs_pandas
@pytest.mark.parametrize("values", [
    lambda: pd.array([3, pd.NA, 4], dtype=object),
    lambda: pd.Series([3, None, 4], dtype="Int64"),
    lambda: pd.Series(["a", None, "b"]),
])
def test_pandas_missing_values_raise(values):
    cols = table([1, 1, 2], [1, 2, 3], [0.0, 1.0, 2.0])
    cols["ItemId"] = values()
    with pytest.raises(ValueError, match="'ItemId' has 1 missing"):
        extract_events(cols)


@pytest.mark.parametrize("make", [
    lambda: table([], [], []),
    pytest.param(lambda: pd.DataFrame({"SessionId": [], "ItemId": [], "Time": []}),
                 marks=needs_pandas),
    lambda: {k: np.array([], dtype=object) for k in ("SessionId", "ItemId", "Time")},
])
def test_empty_input_raises(make):
    with pytest.raises(ValueError, match="empty"):
        build_sessions(make())


@pytest.mark.parametrize("times", [
    np.array(["a", "b"], dtype=object),
    np.array(["2014-04-07T10:51:09Z", "2014-04-07T10:52:09Z"]),
])
def test_non_numeric_times_raise(times):
    with pytest.raises(ValueError, match="'Time' must be numeric"):
        extract_events(table([1, 1], [1, 2], times))


def test_bad_id_types_raise():
    with pytest.raises(ValueError, match="non-integer floats"):
        extract_events(table([1, 1], [1.5, 2.0], [0, 1]))
    with pytest.raises(ValueError, match="all integers or all strings"):
        extract_events(table([1, 1], np.array([1, "a"], dtype=object), [0, 1]))
    with pytest.raises(ValueError, match="all integers or all strings"):
        extract_events(table([1, 1], np.array([True, False], dtype=object), [0, 1]))
    with pytest.raises(ValueError, match="holds datetimes"):
        extract_events(table(np.array(["2014-01-01", "2014-01-02"], dtype="datetime64[D]"),
                             [1, 2], [0, 1]))
    with pytest.raises(ValueError, match="one-dimensional"):
        extract_events(table([[1, 1]], [[1, 2]], [[0, 1]]))


def test_columns_of_different_lengths_raise():
    with pytest.raises(ValueError, match="different lengths"):
        extract_events(table([1, 1, 1], [1, 2], [0, 1, 2]))


def test_float_ids_that_are_integers_become_int64():
    s, i, t = extract_events(table([1.0, 1.0], [7.0, 8.0], [0, 1]))
    assert s.dtype == np.int64 and i.dtype == np.int64 and t.dtype == np.float64
    assert i.tolist() == [7, 8]


# ---------------------------------------------------------------------------------------------
# short sessions and unknown items: counted and logged, never silent
# ---------------------------------------------------------------------------------------------
def test_length_one_sessions_dropped_and_reported(caplog):
    data = table([1, 1, 2, 3, 3, 3, 4], [10, 11, 12, 10, 11, 13, 14], [0, 1, 2, 3, 4, 5, 6])
    with caplog.at_level(logging.WARNING, logger="gru_engine"):
        sessions, index, report = build_sessions(data)
    assert report == BuildReport(n_events_in=7, n_unknown_item_events=0, n_short_sessions=2,
                                 n_short_session_events=2)
    assert report.n_events_kept == 5
    assert "dropped 2 sessions shorter than 2 events (2 events)" in caplog.text
    assert sessions.session_ids.tolist() == [1, 3]
    assert sessions.offsets.tolist() == [0, 2, 5]
    # the index is built from all training events (items of dropped sessions included)
    assert index.ids.tolist() == [10, 11, 12, 13, 14]
    assert sessions.items.tolist() == [0, 1, 0, 1, 3]


def test_min_session_length_parameter():
    data = table([1, 1, 2, 2, 2], [1, 2, 1, 2, 3], [0, 1, 2, 3, 4])
    sessions, _, report = build_sessions(data, min_session_length=3)
    assert sessions.session_ids.tolist() == [2]
    assert report.n_short_sessions == 1 and report.n_short_session_events == 2


def test_no_session_left_raises():
    with pytest.raises(ValueError, match="no session with at least 2 events"):
        build_sessions(table([1, 2, 3], [1, 2, 3], [0, 1, 2]))


def test_nothing_dropped_logs_nothing(caplog):
    with caplog.at_level(logging.WARNING, logger="gru_engine"):
        _, _, report = build_sessions(table([1, 1], [1, 2], [0, 1]))
    assert report == BuildReport(2, 0, 0, 0)
    assert caplog.text == ""


def test_test_data_unknown_items_removed_before_sessions_are_built(caplog):
    _, index, _ = build_sessions(table([1, 1, 1], ["a", "b", "c"], [0, 1, 2]))
    test = table(
        # session 7: a X b -> "a b" survives (closes up around the unknown X)
        # session 8: X a   -> "a" alone, dropped as too short
        # session 9: c c   -> kept
        [7, 7, 7, 8, 8, 9, 9], ["a", "X", "b", "X", "a", "c", "c"], [0, 1, 2, 3, 4, 5, 6])
    with caplog.at_level(logging.WARNING, logger="gru_engine"):
        sessions, same_index, report = build_sessions(test, index)
    assert same_index is index
    assert report == BuildReport(n_events_in=7, n_unknown_item_events=2, n_short_sessions=1,
                                 n_short_session_events=1)
    assert report.n_events_kept == 4
    assert "removed 2 of 7 events whose item is unknown" in caplog.text
    assert sessions.session_ids.tolist() == [7, 9]
    assert sessions.offsets.tolist() == [0, 2, 4]
    assert sessions.items.tolist() == [0, 1, 2, 2]
    assert sessions.times.tolist() == [0.0, 2.0, 5.0, 6.0]


def test_test_data_with_only_unknown_items_raises():
    _, index, _ = build_sessions(table([1, 1], [1, 2], [0, 1]))
    with pytest.raises(ValueError, match="2 with unknown items"):
        build_sessions(table([5, 5], [8, 9], [0, 1]), index)


# ---------------------------------------------------------------------------------------------
# input kinds and column names
# ---------------------------------------------------------------------------------------------
def _assert_same(a: Sessions, b: Sessions):
    np.testing.assert_array_equal(a.items, b.items)
    np.testing.assert_array_equal(a.offsets, b.offsets)
    np.testing.assert_array_equal(a.times, b.times)
    np.testing.assert_array_equal(a.session_ids, b.session_ids)


def test_dict_dataframe_and_column_object_give_the_same_sessions():
    rng = np.random.default_rng(0)
    n = 200
    cols = table(rng.integers(0, 30, n), rng.integers(100, 140, n), rng.random(n) * 1000)
    lists = {k: v.tolist() for k, v in cols.items()}
    ref, ref_index, ref_report = build_sessions(cols)
    inputs = [Columns(cols), lists, Columns(lists)] + ([pd.DataFrame(cols)] if pd is not None else [])
    for data in inputs:
        got, index, report = build_sessions(data)
        _assert_same(ref, got)
        np.testing.assert_array_equal(index.ids, ref_index.ids)
        assert report == ref_report


def test_numpy_structured_array_input():
    rec = np.array([(1, 7, 0.5), (1, 8, 0.25), (2, 7, 1.0), (2, 9, 2.0)],
                   dtype=[("SessionId", "i8"), ("ItemId", "i4"), ("Time", "f8")])
    sessions, index, _ = build_sessions(rec)
    assert index.ids.tolist() == [7, 8, 9]
    assert sessions.items.tolist() == [1, 0, 0, 2]
    with pytest.raises(ValueError, match=r"missing column 'sid'; available columns: \['SessionId'"):
        build_sessions(rec, session_key="sid")


@needs_pandas
def test_custom_column_names():
    frame = pd.DataFrame({"sid": [1, 1, 2, 2], "iid": [5, 6, 6, 5], "ts": [3.0, 4.0, 1.0, 2.0],
                          "other": [0, 0, 0, 0]})
    sessions, index, _ = build_sessions(frame, session_key="sid", item_key="iid", time_key="ts")
    assert index.ids.tolist() == [5, 6]
    assert sessions.items.tolist() == [0, 1, 1, 0]
    with pytest.raises(ValueError, match="missing column 'SessionId'"):
        build_sessions(frame)
    assert DEFAULT_KEYS == {"session_key": "SessionId", "item_key": "ItemId", "time_key": "Time"}


@needs_pandas
def test_string_item_and_session_ids():
    frame = pd.DataFrame({"SessionId": ["s2", "s1", "s2", "s1", "s10", "s10"],
                          "ItemId": ["pear", "apple", "fig", "pear", "fig", "apple"],
                          "Time": [5, 1, 6, 2, 0, 1]})
    sessions, index, _ = build_sessions(frame)
    assert index.ids.dtype.kind == "U"
    assert index.ids.tolist() == ["pear", "apple", "fig"]
    # sessions ordered by session id (string order), events by time
    assert sessions.session_ids.tolist() == ["s1", "s10", "s2"]
    assert sessions.items.tolist() == [1, 0, 2, 1, 0, 2]
    assert index.to_index(["fig", "pear"]).tolist() == [2, 0]


# ---------------------------------------------------------------------------------------------
# ordering and CSR layout
# ---------------------------------------------------------------------------------------------
def test_item_indices_follow_first_appearance_in_the_input_as_given():
    # row order, not (session, time) order, decides: item 30 is first in the table although its
    # session is last after sorting and its time is the largest
    data = table([9, 1, 1, 9, 5, 5], [30, 20, 10, 20, 40, 30], [100, 2, 1, 101, 50, 51])
    sessions, index, _ = build_sessions(data)
    assert index.ids.tolist() == [30, 20, 10, 40]
    assert sessions.session_ids.tolist() == [1, 5, 9]
    assert sessions.items.tolist() == [2, 1, 3, 0, 0, 1]


def test_sort_is_stable_for_equal_times():
    data = table([2, 1, 2, 1, 2, 1], [1, 2, 3, 4, 5, 6], [7, 7, 7, 7, 3, 7])
    sessions, index, _ = build_sessions(data)
    ids = index.ids[sessions.items].tolist()
    # session 1: all at t=7 -> input order 2, 4, 6; session 2: 5 (t=3) then 1, 3 in input order
    assert ids == [2, 4, 6, 5, 1, 3]
    assert sessions.times.tolist() == [7, 7, 7, 3, 7, 7]


def test_csr_offsets_lengths_positions_and_support():
    data = table([3, 3, 3, 1, 1, 2, 2, 2, 2], [1, 2, 1, 3, 1, 2, 2, 2, 4],
                 [1, 2, 3, 0, 1, 5, 6, 7, 8])
    sessions, index, _ = build_sessions(data)
    assert sessions.offsets.dtype == np.int64 and sessions.items.dtype == np.int32
    assert sessions.times.dtype == np.float64
    assert sessions.offsets.tolist() == [0, 2, 6, 9]
    assert sessions.n_sessions == 3 and sessions.n_events == 9
    assert sessions.lengths.tolist() == [2, 4, 3]
    assert sessions.positions().tolist() == [0, 1, 0, 1, 2, 3, 0, 1, 2]
    assert sessions.positions().dtype == np.int32
    for s, sid in enumerate(sessions.session_ids):
        mask = data["SessionId"] == sid
        expected = index.to_index(data["ItemId"][mask][np.argsort(data["Time"][mask], kind="stable")])
        np.testing.assert_array_equal(sessions.items[sessions.offsets[s]:sessions.offsets[s + 1]],
                                      expected)
    assert sessions.item_support(len(index)).tolist() == [3, 4, 1, 1]
    assert sessions.item_support(6).tolist() == [3, 4, 1, 1, 0, 0]


def test_order_by_start_time_visits_sessions_by_first_event_stably():
    # session ids sort as 1, 2, 3, 4; first times 50, 10, 50, 20
    data = table([1, 1, 2, 2, 3, 3, 4, 4], [1, 2, 1, 2, 1, 2, 1, 2],
                 [50, 60, 10, 99, 50, 51, 20, 21])
    sessions, _, _ = build_sessions(data)
    order = sessions.order_by_start_time()
    assert order.dtype == np.int64
    assert sessions.session_ids[order].tolist() == [2, 4, 1, 3]


def test_order_by_start_time_is_stable_with_many_ties():
    # enough tied sessions that an unstable sort (quicksort) would reorder them
    rng = np.random.default_rng(5)
    n = 500
    start = rng.integers(0, 3, n).astype(float)
    data = table(np.repeat(np.arange(n), 2), np.tile([1, 2], n), np.repeat(start, 2) + [0, 1] * n)
    sessions, _, _ = build_sessions(data)
    expected = sorted(range(n), key=lambda s: (start[s], s))  # ties: by session number
    assert sessions.order_by_start_time().tolist() == expected


def test_datetime64_times_become_unix_seconds():
    times = np.array(["2014-04-07T10:51:09.277", "2014-04-07T10:51:10", "2014-04-07T10:50:00"],
                     dtype="datetime64[ms]")
    s, i, t = extract_events(table([1, 1, 1], [1, 2, 3], times))
    assert t.dtype == np.float64
    np.testing.assert_allclose(t, [1396867869.277, 1396867870.0, 1396867800.0], rtol=0, atol=1e-6)
    sessions, index, _ = build_sessions(table([1, 1, 1], [1, 2, 3], times))
    assert index.ids[sessions.items].tolist() == [3, 1, 2]


@needs_pandas
def test_tz_aware_pandas_times_are_converted_to_utc_seconds():
    frame = pd.DataFrame({"SessionId": [1, 1], "ItemId": [1, 2],
                          "Time": pd.to_datetime(["2014-04-07 12:51:09", "2014-04-07 12:51:10"])
                          .tz_localize("Europe/Berlin")})
    _, _, t = extract_events(frame)
    np.testing.assert_allclose(t, [1396867869.0, 1396867870.0], rtol=0, atol=1e-6)


def test_numeric_string_times_are_accepted():
    _, _, t = extract_events(table([1, 1], [1, 2], np.array(["1.5", "2"], dtype=object)))
    assert t.tolist() == [1.5, 2.0]


# ---------------------------------------------------------------------------------------------
# ItemIndex
# ---------------------------------------------------------------------------------------------
def test_item_index_lookup_and_to_index():
    index = ItemIndex(np.array([50, 10, 30]))
    assert len(index) == 3
    assert index.lookup([10, 99, 50, 30]).tolist() == [1, -1, 0, 2]
    assert index.lookup(np.array([[30, 7], [50, 10]])).tolist() == [[2, -1], [0, 1]]
    assert index.lookup([]).tolist() == []
    assert index.lookup([10]).dtype == np.int32
    assert index.to_index(np.array([30, 50])).tolist() == [2, 0]
    with pytest.raises(KeyError, match="1 item id"):
        index.to_index([10, 99])


def test_item_index_lookup_never_converts_between_kinds():
    ints = ItemIndex(np.array([5, 3]))
    assert ints.lookup(np.array([3.0, 3.5, np.nan])).tolist() == [1, -1, -1]
    assert ints.lookup(["3"]).tolist() == [-1]
    assert ints.lookup(np.array([3, "5", None, True], dtype=object)).tolist() == [1, -1, -1, -1]
    strs = ItemIndex(np.array(["b", "a"]))
    assert strs.lookup(np.array(["a", 1, None], dtype=object)).tolist() == [1, -1, -1]
    assert strs.lookup([1, 2]).tolist() == [-1, -1]
    assert strs.lookup(np.array([b"b"])).tolist() == [0]
    with pytest.raises(KeyError):
        strs.to_index([0])


def test_item_index_from_events_and_validation():
    index = ItemIndex.from_events(np.array(["z", "a", "z", "m", "a"]))
    assert index.ids.tolist() == ["z", "a", "m"]
    assert ItemIndex([4, 2]).ids.dtype == ItemIndex(np.array([4, 2])).ids.dtype
    with pytest.raises(ValueError, match="unique"):
        ItemIndex(np.array([1, 2, 1]))
    with pytest.raises(ValueError, match="one-dimensional"):
        ItemIndex(np.array([[1, 2]]))
    empty = ItemIndex(np.array([], dtype=np.int64))
    assert empty.lookup([1, 2]).tolist() == [-1, -1]


# ---------------------------------------------------------------------------------------------
# files
# ---------------------------------------------------------------------------------------------
@pytest.fixture(params=["pandas", "csv"])
def reader(request, monkeypatch):
    """Run a test with pandas and with pandas made unimportable (the csv fallback)."""
    if request.param == "csv":
        monkeypatch.setitem(sys.modules, "pandas", None)
    elif pd is None:
        pytest.skip("pandas not installed")
    return request.param


def _columns():
    return {"SessionId": np.array([3, 3, 1, 1], dtype=np.int64),
            "ItemId": np.array(["x", "y y", "x", "z"]),
            "Time": np.array([1396321200.123456, 0.1, 1e-7, 2.5e9])}


@pytest.mark.parametrize("name", ["events.tsv", "events.tsv.gz"])
def test_write_read_round_trip(tmp_path, reader, name):
    path = tmp_path / name
    write_events(path, _columns())
    if name.endswith(".gz"):
        with gzip.open(path, "rt") as f:
            assert f.readline() == "SessionId\tItemId\tTime\n"
    else:
        assert path.read_text().splitlines()[0] == "SessionId\tItemId\tTime"
    assert not (tmp_path / (name + ".tmp")).exists()
    got = read_events(path)
    assert list(got) == ["SessionId", "ItemId", "Time"]
    assert got["SessionId"].dtype == np.int64 and got["Time"].dtype == np.float64
    assert got["SessionId"].tolist() == [3, 3, 1, 1]
    assert list(got["ItemId"]) == ["x", "y y", "x", "z"]
    assert got["Time"].tolist() == _columns()["Time"].tolist()
    sessions, index, _ = build_sessions(got)
    assert index.ids.tolist() == ["x", "y y", "z"]


def test_read_events_without_pandas_really_uses_the_fallback(tmp_path, monkeypatch):
    path = tmp_path / "e.tsv"
    write_events(path, _columns())
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ImportError):
        import pandas  # noqa: F401
    got = read_events(path)
    assert got["ItemId"].dtype.kind == "U"  # pandas would give an object array


def test_write_events_chunks_and_separator(tmp_path, reader):
    n = 2500
    cols = {"a": np.arange(n), "b": np.arange(n) * 0.5}
    path = tmp_path / "x.csv.gz"
    write_events(path, cols, sep=",", chunk_rows=1000)
    got = read_events(path, sep=",")
    np.testing.assert_array_equal(got["a"], cols["a"])
    np.testing.assert_array_equal(got["b"], cols["b"])


def test_read_events_column_selection_and_headerless_files(tmp_path, reader):
    path = tmp_path / "raw.dat"
    path.write_text("1,2014-04-07T10:51:09.277Z,214536502,0\n1,2014-04-07T10:54:09.868Z,214536500,S\n")
    got = read_events(path, sep=",", names=["SessionId", "Timestamp", "ItemId", "Category"],
                      columns=["ItemId", "SessionId", "Timestamp"])
    assert list(got) == ["ItemId", "SessionId", "Timestamp"]
    assert got["ItemId"].tolist() == [214536502, 214536500]
    assert list(got["Timestamp"]) == ["2014-04-07T10:51:09.277Z", "2014-04-07T10:54:09.868Z"]
    path = tmp_path / "h.tsv"
    write_events(path, _columns())
    assert list(read_events(path, columns=["Time", "SessionId"])) == ["Time", "SessionId"]
    with pytest.raises(ValueError, match="ItemIdx"):
        read_events(path, columns=["ItemIdx"])


def test_read_events_errors(tmp_path, reader):
    with pytest.raises(FileNotFoundError, match="no such event file"):
        read_events(tmp_path / "nope.tsv")
    empty = tmp_path / "empty.tsv"
    empty.write_text("")
    with pytest.raises(ValueError, match="empty"):
        read_events(empty)


@needs_pandas
def test_read_events_with_and_without_pandas_agree(tmp_path, monkeypatch):
    path = tmp_path / "e.tsv.gz"
    write_events(path, _columns())
    with_pd = read_events(path)
    monkeypatch.setitem(sys.modules, "pandas", None)
    without = read_events(path)
    assert list(with_pd) == list(without)
    for key in with_pd:
        assert with_pd[key].tolist() == without[key].tolist()


def test_write_events_rejects_ragged_columns(tmp_path):
    with pytest.raises(ValueError, match="different lengths"):
        write_events(tmp_path / "x.tsv", {"a": [1, 2], "b": [1]})
    assert not list(tmp_path.iterdir())


def test_leave_last_out_split():
    from gru_engine.data import leave_last_out
    table = {"SessionId": np.array([2, 1, 1, 2, 1, 3, 3]), "ItemId": np.array([9, 5, 6, 8, 7, 6, 4]),
             "Time": np.array([0, 2, 1, 1, 3, 0, 1])}
    train, test, dropped = leave_last_out(table)
    # sorted by session then time; each sequence loses its last event in train
    assert train["SessionId"].tolist() == [1, 1, 2, 3] and train["ItemId"].tolist() == [6, 5, 9, 6]
    # the last items (7, 8, 4) never occur in train: no test sequence is left
    assert dropped == 3 and len(test["ItemId"]) == 0
    table["ItemId"] = np.array([9, 5, 6, 6, 5, 6, 9])  # last items 5, 6, 9: all in train
    train, test, dropped = leave_last_out(table)
    assert dropped == 0 and test["ItemId"].tolist() == [6, 5, 5, 9, 6, 6, 9]

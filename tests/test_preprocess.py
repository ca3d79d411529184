"""Tests of gru_engine.preprocess: each step and the full pipeline on a hand-made table whose
expected result is written out by hand, the raw-format readers on tiny files, and a check
against the bundled rsc15-100k sample (prepared upstream with the same split rule)."""
import gzip
import logging
import sys

import numpy as np
import pytest

from gru_engine import preprocess as P
from gru_engine.data import read_events

T0 = 1_400_000_000.0


def at(day, hour):
    return T0 + day * 86400.0 + hour * 3600.0


# session -> [(item, day, hour)]; comments give the fate of each session in `preprocess`
# with the defaults (min_item_support=5, min_session_length=2, test_days=valid_days=1)
HAND = {
    1: [(1, 0, 1), (2, 0, 2), (3, 0, 3)],              # train_tr
    2: [(1, 0, 5), (2, 0, 6)],                         # train_tr
    3: [(9, 0, 8)],                                    # length 1: dropped first
    4: [(2, 1, 1), (1, 1, 2), (7, 1, 3)],              # item 7 rare -> [2, 1], train_tr
    5: [(7, 1, 5), (3, 1, 6)],                         # item 7 rare -> [3], dropped at step 4
    6: [(1, 2, 1), (3, 2, 2), (7, 2, 3), (7, 2, 4)],   # -> [1, 3], train_tr
    7: [(3, 2, 10), (2, 2, 13)],                       # ends after train t_max - 1 day: valid
    8: [(4, 3, 1), (1, 3, 2)],                         # valid; 4 not in train_tr -> [1], dropped
    9: [(1, 3, 10), (4, 3, 11), (2, 3, 12)],           # valid -> [1, 2]; latest train event
    10: [(2, 3, 19), (3, 3, 21)],                      # ends after t_max - 1 day: test
    11: [(4, 4, 1), (4, 4, 2), (5, 4, 3), (4, 4, 4)],  # test; 5 not in train -> [4, 4, 4]
    12: [(5, 4, 5), (5, 4, 6), (5, 4, 7), (5, 4, 8), (1, 4, 20)],  # test -> [1], dropped
    13: [(6, 4, 10), (6, 4, 11)],                      # item 6 rare -> session vanishes
    14: [(3, 4, 23)],                                  # length 1: dropped first (its time
                                                       # must not count as t_max)
}
# item supports after the length-1 sessions are gone: 1:7 2:6 3:5 4:5 5:5 6:2 7:4


def hand_events(shuffle_seed=None):
    rows = [(s, i, at(d, h)) for s, evs in HAND.items() for i, d, h in evs]
    if shuffle_seed is not None:
        rows = [rows[j] for j in np.random.default_rng(shuffle_seed).permutation(len(rows))]
    s, i, t = zip(*rows)
    return {"SessionId": np.array(s), "ItemId": np.array(i), "Time": np.array(t)}


def as_sessions(events):
    """{session: [items in time order]} of an event dict."""
    out = {}
    ev = P.sort_events(events)
    for s, i in zip(ev["SessionId"].tolist(), ev["ItemId"].tolist()):
        out.setdefault(s, []).append(i)
    return out


# ---------------------------------------------------------------------------------------------
# single steps
# ---------------------------------------------------------------------------------------------
def test_sort_events_is_by_session_then_time_and_stable():
    ev = {"SessionId": np.array([2, 1, 2, 1, 2]), "ItemId": np.array([10, 11, 12, 13, 14]),
          "Time": np.array([5.0, 9.0, 5.0, 1.0, 3.0])}
    got = P.sort_events(ev)
    assert got["SessionId"].tolist() == [1, 1, 2, 2, 2]
    assert got["ItemId"].tolist() == [13, 11, 14, 10, 12]


def test_filter_short_sessions():
    got = P.filter_short_sessions(hand_events())
    assert sorted(as_sessions(got)) == [1, 2, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13]
    assert len(got["ItemId"]) == 34
    got3 = P.filter_short_sessions(hand_events(), min_length=4)
    assert sorted(as_sessions(got3)) == [6, 11, 12]


def test_filter_rare_items_keeps_support_equal_to_the_threshold():
    ev = P.filter_short_sessions(hand_events())
    got = P.filter_rare_items(ev, min_support=5)
    assert sorted(set(got["ItemId"].tolist())) == [1, 2, 3, 4, 5]  # 3, 4, 5 have exactly 5
    assert len(got["ItemId"]) == 28
    assert as_sessions(got)[5] == [3] and 13 not in as_sessions(got)
    got6 = P.filter_rare_items(ev, min_support=6)
    assert sorted(set(got6["ItemId"].tolist())) == [1, 2]


def test_filters_keep_event_order_and_columns():
    ev = hand_events(shuffle_seed=3)
    got = P.filter_rare_items(ev, 5)
    keep = np.isin(ev["ItemId"], [1, 2, 3, 4, 5])
    for k in P.KEYS:
        np.testing.assert_array_equal(got[k], ev[k][keep])


def test_split_by_time_uses_the_last_event_of_each_session():
    ev = {"SessionId": np.array([1, 1, 2, 2, 3, 3]), "ItemId": np.array([1, 2, 1, 2, 1, 2]),
          "Time": np.array([at(0, 0), at(1, 23), at(1, 1), at(1, 2), at(2, 0), at(2, 2)])}
    # t_max = day 2, 02:00; threshold day 1, 02:00 (inclusive)
    train, test = P.split_by_time(ev, 1)
    assert sorted(set(test["SessionId"].tolist())) == [1, 2, 3]
    train, test = P.split_by_time(ev, 0.5)  # threshold day 1, 14:00
    assert sorted(set(train["SessionId"].tolist())) == [2]
    assert sorted(set(test["SessionId"].tolist())) == [1, 3]
    assert test["Time"].tolist() == [at(0, 0), at(1, 23), at(2, 0), at(2, 2)]  # whole sessions


def test_split_by_time_by_calendar_day():
    midnight = 16930 * 86400.0  # 2016-05-09 00:00 UTC
    ev = {"SessionId": np.array([1, 1, 2, 2, 3, 3]), "ItemId": np.array([1, 2, 1, 2, 1, 2]),
          "Time": midnight + np.array([0.0, 10, 86399, 86399, 2 * 86400, 2 * 86400 + 5])}
    # days 0, 0, 2: the last 2 calendar days are days 1 and 2 -> only session 3
    train, test = P.split_by_time(ev, 2, by_day=True)
    assert sorted(set(test["SessionId"].tolist())) == [3]
    # in seconds, the last 2 days reach back to day 0, 00:00:05 -> sessions 1 and 2 too
    train, test = P.split_by_time(ev, 2)
    assert sorted(set(test["SessionId"].tolist())) == [1, 2, 3]


def test_split_by_time_errors():
    with pytest.raises(ValueError, match="last_days must be > 0"):
        P.split_by_time(hand_events(), 0)
    with pytest.raises(ValueError, match="empty"):
        P.split_by_time({k: np.array([]) for k in P.KEYS}, 1)
    with pytest.raises(ValueError, match=r"lack column\(s\) \['Time'\]"):
        P.split_by_time({"SessionId": [1], "ItemId": [1]}, 1)
    with pytest.raises(ValueError, match="different lengths"):
        P.filter_rare_items({"SessionId": [1, 2], "ItemId": [1], "Time": [1.0]})


def test_restrict_to_train_items_does_not_refilter_sessions():
    train = {"SessionId": np.array([1, 1]), "ItemId": np.array(["a", "b"]), "Time": np.array([0.0, 1])}
    test = {"SessionId": np.array([2, 2, 3, 3]), "ItemId": np.array(["a", "x", "x", "y"]),
            "Time": np.array([5.0, 6, 7, 8])}
    got = P.restrict_to_train_items(test, train)
    assert got["SessionId"].tolist() == [2] and got["ItemId"].tolist() == ["a"]


def test_empty_inputs_pass_through_filters():
    empty = {k: np.array([], dtype=np.int64) for k in P.KEYS}
    assert len(P.filter_short_sessions(empty)["ItemId"]) == 0
    assert len(P.filter_rare_items(empty)["ItemId"]) == 0
    assert P.counts(empty) == {"events": 0, "sessions": 0, "items": 0}


# ---------------------------------------------------------------------------------------------
# the full pipeline
# ---------------------------------------------------------------------------------------------
EXPECTED_SPLITS = {
    "train": {1: [1, 2, 3], 2: [1, 2], 4: [2, 1], 6: [1, 3], 7: [3, 2], 8: [4, 1], 9: [1, 4, 2]},
    "test": {10: [2, 3], 11: [4, 4, 4]},
    "train_tr": {1: [1, 2, 3], 2: [1, 2], 4: [2, 1], 6: [1, 3]},
    "train_valid": {7: [3, 2], 9: [1, 2]},
}
EXPECTED_STATS = {  # step: (events, sessions, items)
    "input": (36, 14, 8),
    "filter_short_sessions": (34, 12, 7),
    "filter_rare_items": (28, 11, 5),
    "filter_short_sessions_again": (27, 10, 5),
    "train": (16, 7, 4),
    "test_split": (11, 3, 5),
    "test_train_items": (6, 3, 4),
    "test": (5, 2, 3),
    "train_tr": (9, 4, 3),
    "train_valid_split": (7, 3, 4),
    "train_valid_train_items": (5, 3, 3),
    "train_valid": (4, 2, 3),
}


@pytest.mark.parametrize("seed", [None, 7])
def test_pipeline_on_the_hand_table(seed, caplog):
    with caplog.at_level(logging.INFO, logger="gru_engine"):
        result = P.preprocess(hand_events(seed))
    for split, expected in EXPECTED_SPLITS.items():
        assert as_sessions(result[split]) == expected, split
    stats = {step: (c["events"], c["sessions"], c["items"]) for step, c in result["stats"].items()}
    assert list(stats) == list(EXPECTED_STATS)
    assert stats == EXPECTED_STATS
    assert result["paths"] == {}
    assert "filter_rare_items" in caplog.text and "28 events" in caplog.text
    # each split is sorted by session then time, with times carried along
    train = result["train"]
    assert train["SessionId"].tolist() == [1, 1, 1, 2, 2, 4, 4, 6, 6, 7, 7, 8, 8, 9, 9, 9]
    assert train["Time"][:3].tolist() == [at(0, 1), at(0, 2), at(0, 3)]


def test_pipeline_parameters():
    result = P.preprocess(hand_events(), min_item_support=1, test_days=2, valid_days=0.5)
    # no rare items: sessions 5 = [7, 3] and 13 = [6, 6] survive the filters.
    # t_max = day 4 20:00 -> test = sessions ending at or after day 2 20:00: 8-13; train items
    # 1, 2, 3, 7 -> 8 = [1] and 12 = [1] too short, 11 and 13 empty
    assert as_sessions(result["test"]) == {9: [1, 2], 10: [2, 3]}
    assert as_sessions(result["train"]) == {1: [1, 2, 3], 2: [1, 2], 4: [2, 1, 7], 5: [7, 3],
                                            6: [1, 3, 7, 7], 7: [3, 2]}
    # train t_max = day 2 13:00 -> valid = sessions ending at or after day 2 01:00
    assert as_sessions(result["train_tr"]) == {1: [1, 2, 3], 2: [1, 2], 4: [2, 1, 7], 5: [7, 3]}
    assert as_sessions(result["train_valid"]) == {6: [1, 3, 7, 7], 7: [3, 2]}
    longer = P.preprocess(hand_events(), min_session_length=3, min_item_support=1)
    # sessions of >= 3 events: 1, 4, 6, 9, 11, 12; 11 and 12 end in the last day
    assert sorted(as_sessions(longer["train"])) == [1, 4, 6, 9]
    assert as_sessions(longer["test"]) == {11: [4, 4, 4]}  # 12 = [1] is too short


def test_pipeline_writes_gzip_tsv_files(tmp_path):
    result = P.preprocess(hand_events(), out_dir=tmp_path / "out", name="hand")
    for split, suffix in P.FILE_SUFFIX.items():
        path = tmp_path / "out" / f"hand_{suffix}.tsv.gz"
        assert result["paths"][split] == str(path)
        with gzip.open(path, "rt") as f:
            assert f.readline() == "SessionId\tItemId\tTime\n"
        back = read_events(path)
        for k in P.KEYS:
            assert back[k].tolist() == result[split][k].tolist(), (split, k)


def test_pipeline_errors():
    with pytest.raises(ValueError, match="no events left"):
        P.preprocess(hand_events(), min_item_support=100)
    one_day = {"SessionId": np.array([1, 1, 2, 2]), "ItemId": np.array([1, 2, 1, 2]),
               "Time": np.array([0.0, 10, 20, 30])}
    with pytest.raises(ValueError, match="nothing left to train on"):
        P.preprocess(one_day, min_item_support=1)
    with pytest.raises(ValueError, match="must be >= 1"):
        P.preprocess(one_day, min_item_support=0)
    bad = hand_events()
    bad["Time"][3] = np.nan
    with pytest.raises(ValueError, match="'Time' has 1 missing"):
        P.preprocess(bad)
    with pytest.raises(ValueError, match="empty"):
        P.preprocess({k: np.array([]) for k in P.KEYS})


def test_empty_splits_are_warned_about(caplog):
    ev = {"SessionId": np.array([1, 1, 2, 2]), "ItemId": np.array([1, 2, 1, 2]),
          "Time": np.array([at(0, 0), at(0, 1), at(3, 0), at(3, 1)])}
    with caplog.at_level(logging.WARNING, logger="gru_engine"):
        result = P.preprocess(ev, min_item_support=1)
    assert as_sessions(result["train"]) == {1: [1, 2]} and as_sessions(result["test"]) == {2: [1, 2]}
    assert result["stats"]["train_tr"]["events"] == 0
    assert "the train_tr split is empty" in caplog.text
    assert "the train_valid split is empty" in caplog.text
    assert "the test split" not in caplog.text


def test_bundled_sample_split_is_reproduced():
    """rsc15-100k (session-rec) was split with the same rule: re-joining its train_full and test
    and running the pipeline (no support filter: the upstream one ran on the raw slice) must
    give back exactly the same two files."""
    from gru_engine.sample_data import load_sample
    train, test = load_sample()
    union = {k: np.concatenate([train[k], test[k]]) for k in P.KEYS}
    result = P.preprocess(union, min_item_support=1)
    for got, want in ((result["train"], train), (result["test"], test)):
        want = P.sort_events(want)
        for k in P.KEYS:
            np.testing.assert_array_equal(got[k], want[k])
    assert result["stats"]["test"] == {"events": 13568, "sessions": 3416, "items": 1771}
    assert result["stats"]["train"] == {"events": 70278, "sessions": 17794, "items": 2933}


# ---------------------------------------------------------------------------------------------
# raw formats
# ---------------------------------------------------------------------------------------------
@pytest.fixture(params=["pandas", "csv"])
def reader(request, monkeypatch):
    if request.param == "csv":
        monkeypatch.setitem(sys.modules, "pandas", None)
    else:
        pytest.importorskip("pandas")
    return request.param


def test_parse_iso_utc():
    got = P.parse_iso_utc(np.array(["2014-04-07T10:51:09.277Z", "1970-01-01T00:00:00Z",
                                    "2014-04-01T03:00:00.5"], dtype=object), chunk=2)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, [1396867869.277, 0.0, 1396321200.5], rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="UTC offset"):
        P.parse_iso_utc(["2014-04-07T10:51:09+02:00"])
    with pytest.raises(ValueError, match="ISO-8601"):
        P.parse_iso_utc(["07/04/2014 10:51"])


YOOCHOOSE = """\
1,2014-04-07T10:51:09.277Z,214536502,0
1,2014-04-07T10:54:09.868Z,214536500,0
1,2014-04-07T10:54:46.998Z,214536506,S
2,2014-04-07T13:56:37.614Z,214662742,2053
11,2014-04-03T10:44:35.672Z,214821275,0
"""


@pytest.mark.parametrize("gz", [False, True])
def test_read_yoochoose_clicks(tmp_path, reader, gz):
    path = tmp_path / ("yoochoose-clicks.dat" + (".gz" if gz else ""))
    if gz:
        with gzip.open(path, "wt") as f:
            f.write(YOOCHOOSE)
    else:
        path.write_text(YOOCHOOSE)
    ev = P.read_yoochoose_clicks(path)
    assert list(ev) == list(P.KEYS)
    assert ev["SessionId"].tolist() == [1, 1, 1, 2, 11]
    assert ev["ItemId"].tolist() == [214536502, 214536500, 214536506, 214662742, 214821275]
    np.testing.assert_allclose(ev["Time"], [1396867869.277, 1396868049.868, 1396868086.998,
                                            1396878997.614, 1396521875.672], rtol=0, atol=1e-6)


DIGINETICA = """\
sessionId;userId;itemId;timeframe;eventdate
1;NA;81766;526309;2016-05-09
1;NA;31331;1031018;2016-05-09
2;5;32118;75848;2016-01-04
2;5;9654;0;2016-01-04
"""


def test_read_diginetica_views(tmp_path, reader):
    path = tmp_path / "train-item-views.csv"
    path.write_text(DIGINETICA)
    ev = P.read_diginetica_views(path)
    assert ev["SessionId"].tolist() == [1, 1, 2, 2]
    assert ev["ItemId"].tolist() == [81766, 31331, 32118, 9654]
    # 2016-05-09 00:00 UTC = 1462752000, 2016-01-04 = 1451865600; + timeframe / 1000
    np.testing.assert_allclose(ev["Time"], [1462752526.309, 1462753031.018, 1451865675.848,
                                            1451865600.0], rtol=0, atol=1e-6)
    bad = tmp_path / "bad.csv"
    bad.write_text("sessionId;userId;itemId;timeframe;eventdate\n1;NA;5;10;09/05/2016\n")
    with pytest.raises(ValueError, match="eventdate"):
        P.read_diginetica_views(bad)


RETAILROCKET = """\
timestamp,visitorid,event,itemid,transactionid
1433223000000,7,view,100,
1433221332117,7,view,101,
1433221392117,7,addtocart,101,
1433224800000,7,view,102,
1433226601000,7,view,100,
1433221300000,3,view,103,
1433221400000,3,transaction,103,4000
1433221500000,3,view,100,
"""


def test_sessionize():
    users = np.array([5, 5, 5, 9, 5, 9])
    times = np.array([0.0, 1800.0, 3601.0, 10.0, 3600.5, 5000.0])
    # user 5: 0, 1800 (gap == 30 min: same), 3600.5 (gap 1800.5: new), 3601; user 9: 10, 5000
    assert P.sessionize(users, times).tolist() == [0, 0, 1, 2, 1, 3]
    assert P.sessionize(users, times, max_gap=10_000).tolist() == [0, 0, 0, 1, 0, 1]
    assert P.sessionize([], []).tolist() == []


def test_read_retailrocket_events(tmp_path, reader):
    path = tmp_path / "events.csv"
    path.write_text(RETAILROCKET)
    ev = P.read_retailrocket_events(path)
    # views only. visitor 3: 1433221300, 1433221500 -> session 0.
    # visitor 7 by time: 1433221332.117, 1433223000 (gap 1667.9 s), 1433224800 (gap exactly
    # 1800 s: same session), 1433226601 (gap 1801 s: new session)
    got = sorted(zip(ev["SessionId"].tolist(), ev["Time"].tolist(), ev["ItemId"].tolist()))
    assert got == [(0, 1433221300.0, 103), (0, 1433221500.0, 100),
                   (1, 1433221332.117, 101), (1, 1433223000.0, 100), (1, 1433224800.0, 102),
                   (2, 1433226601.0, 100)]
    ev = P.read_retailrocket_events(path, session_gap=60.0, event_types=("view", "addtocart"))
    assert len(ev["ItemId"]) == 7 and len(set(ev["SessionId"].tolist())) == 6


def test_preprocess_file_uses_dataset_defaults(tmp_path):
    # three weeks, one visitor a day viewing items 1, 2, 3 at 0, 60 and 120 s after midnight
    lines = ["timestamp,visitorid,event,itemid,transactionid"]
    for day in range(21):
        for k, item in enumerate((1, 2, 3)):
            lines.append(f"{int((T0 + day * 86400 + k * 60) * 1000)},{day},view,{item},")
    (tmp_path / "events.csv").write_text("\n".join(lines) + "\n")
    stats = P.preprocess_file("retailrocket", tmp_path / "events.csv", tmp_path / "out")
    # default 7 days: t_max = day 20 +120 s, threshold day 13 +120 s (inclusive) -> days 13..20
    assert stats["test"]["sessions"] == 8
    assert stats["train_valid"]["sessions"] == 8  # days 5..12
    assert stats["train_tr"]["sessions"] == 5  # days 0..4
    for suffix in ("train_full", "test", "train_tr", "train_valid"):
        back = read_events(tmp_path / "out" / f"retailrocket_{suffix}.tsv.gz")
        key = {"train_full": "train"}.get(suffix, suffix)
        assert len(back["ItemId"]) == stats[key]["events"]
    stats = P.preprocess_file("retailrocket", tmp_path / "events.csv", tmp_path / "o2",
                              test_days=2.5, name="rr")
    assert stats["test"]["sessions"] == 3
    assert (tmp_path / "o2" / "rr_test.tsv.gz").exists()
    with pytest.raises(ValueError, match="unknown dataset 'foo'"):
        P.preprocess_file("foo", tmp_path / "events.csv", tmp_path)


def test_written_files_read_back_with_the_data_layer(tmp_path):
    from gru_engine.data import build_sessions
    result = P.preprocess(hand_events(), out_dir=tmp_path, name="h")
    train_sessions, index, report = build_sessions(read_events(result["paths"]["train"]))
    test_sessions, _, test_report = build_sessions(read_events(result["paths"]["test"]), index)
    assert report.n_short_sessions == 0 and test_report.n_unknown_item_events == 0
    assert train_sessions.n_events == 16 and test_sessions.n_events == 5

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


# ---------------------------------------------------------------------------------------------
# users: the raw formats keep the user column; the session-aware split (HRNN protocol)
# ---------------------------------------------------------------------------------------------
def test_diginetica_and_retailrocket_keep_the_user(tmp_path, reader):
    path = tmp_path / "train-item-views.csv"
    path.write_text(DIGINETICA)
    ev = P.read_diginetica_views(path)
    assert ev["UserId"].tolist() == [None, None, 5, 5]  # NA -> missing, ids stay integers
    assert P.counts(ev)["users"] == 1
    path = tmp_path / "events.csv"
    path.write_text(RETAILROCKET)
    ev = P.read_retailrocket_events(path)
    got = sorted(zip(ev["SessionId"].tolist(), ev["UserId"].tolist()))
    assert got == [(0, 3), (0, 3), (1, 7), (1, 7), (1, 7), (2, 7)]


def test_time_split_keeps_the_user_column(tmp_path):
    ev = hand_events()
    ev["UserId"] = np.array([None if s % 3 == 0 else f"u{s % 4}" for s in ev["SessionId"]],
                            dtype=object)
    result = P.preprocess(ev, out_dir=tmp_path, name="h")
    assert as_sessions(result["test"]) == EXPECTED_SPLITS["test"]  # the user changes nothing
    back = read_events(result["paths"]["train"])
    assert list(back) == ["SessionId", "ItemId", "Time", "UserId"]
    for s, u in zip(back["SessionId"].tolist(), back["UserId"].tolist()):
        assert (u != u) if s % 3 == 0 else u == f"u{s % 4}"  # anonymous: an empty field
    assert result["stats"]["train"]["users"] == 4  # u1 (1), u2 (2), u0 (4, 8), u3 (7)


# Last.fm 1K: no header, newest first per user, tab-separated; track mbid may be empty
LASTFM = (
    "user_000002\t2009-05-04T13:40:00Z\tart-1\tDeep Dish\ttrk-3\tSay Hello\n"
    "user_000002\t2009-05-04T13:10:00Z\tart-1\tDeep Dish\t\tFlashdance \"Live\"\n"
    "user_000002\t2009-05-04T12:00:00Z\tart-2\tThe Dogs D'Amour\ttrk-1\tWait Until I'm Dead\n"
    "user_000002\t2009-05-04T11:59:00Z\tart-2\tThe Dogs D'Amour\ttrk-2\tFall in Love Again?\n"
    "user_000001\t2009-05-01T09:00:00Z\tart-3\tX\ttrk-1\tWait Until I'm Dead\n"
    "user_000001\t2009-05-01T08:45:30Z\tart-3\tX\ttrk-3\tY\n"
    "user_000001\t2009-05-01T08:40:00Z\t\t\t\t\n"            # no track at all: skipped
    "user_000001\tbroken line\n"                              # 2 fields: skipped
    "user_000001\t2009-04-30T08:00:00Z\tart-3\tX\ttrk-2\tZ\n"
)


@pytest.mark.parametrize("gz", [False, True])
def test_read_lastfm_listens(tmp_path, gz, caplog):
    path = tmp_path / ("userid-timestamp-artid-artname-traid-traname.tsv" + (".gz" if gz else ""))
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(LASTFM)
    else:
        path.write_text(LASTFM, encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="gru_engine"):
        ev = P.read_lastfm_listens(path)
    assert "skipped 1 lines without exactly 6" in caplog.text and "line 8" in caplog.text
    assert "skipped 1 lines with neither a track id nor a track name" in caplog.text
    name_id = P.lastfm_name_id("Deep Dish", 'Flashdance "Live"')  # quotes kept literally
    assert name_id.startswith("name:") and len(name_id) == 29
    assert P.lastfm_name_id("Deep Dis", 'hFlashdance "Live"') != name_id
    rows = sorted(zip(ev["UserId"].tolist(), ev["Time"].tolist(), ev["SessionId"].tolist(),
                      ev["ItemId"].tolist()))
    t = lambda s: float(np.datetime64(s, "s").astype(np.int64))  # noqa: E731
    # user 1: 04-30 08:00 | 05-01 08:45:30, 09:00 (14.5 min gap); user 2: 11:59, 12:00 |
    # 13:10 (70 min gap: new), 13:40 (exactly 30 min: same session)
    assert rows == [
        ("user_000001", t("2009-04-30T08:00:00"), 0, "trk-2"),
        ("user_000001", t("2009-05-01T08:45:30"), 1, "trk-3"),
        ("user_000001", t("2009-05-01T09:00:00"), 1, "trk-1"),
        ("user_000002", t("2009-05-04T11:59:00"), 2, "trk-2"),
        ("user_000002", t("2009-05-04T12:00:00"), 2, "trk-1"),
        ("user_000002", t("2009-05-04T13:10:00"), 3, name_id),
        ("user_000002", t("2009-05-04T13:40:00"), 3, "trk-3")]
    assert len(set(P.read_lastfm_listens(path, session_gap=3 * 3600)["SessionId"].tolist())) == 3
    empty = tmp_path / "empty.tsv"
    empty.write_text("a\tb\n")
    with pytest.raises(ValueError, match="no listening line"):
        P.read_lastfm_listens(empty)


def at_user(user, sess, items, day):
    return [(sess, i, at(day, k), user) for k, i in enumerate(items)]


# session: user, items, day; comments: fate under preprocess_session_aware(min_item_support=1)
USER_HAND = (
    at_user("A", 1, [1, 2, 3], 0)         # train_tr
    + at_user("A", 2, [2, 3], 1)          # train_tr
    + at_user("A", 10, [1, 3], 1.5)       # A's last train session: train_valid
    + at_user("A", 3, [3, 1, 2], 2)       # A's last session: test
    + at_user("B", 4, [1, 2], 0)          # B's only train session: train_tr (no valid)
    + at_user("B", 5, [2, 9], 3)          # test; 9 not in train -> [2]: dropped
    + at_user("C", 6, [1], 1)             # length 1: dropped -> C keeps one session:
    + at_user("C", 7, [1, 2], 2)          #   C dropped by filter_users
    + at_user(None, 8, [1, 2], 0)         # anonymous: dropped
    + at_user("E", 9, [3, 1], 0)          # E's only session: dropped by filter_users
)


def user_events(rows=USER_HAND, seed=None):
    if seed is not None:
        rows = [rows[j] for j in np.random.default_rng(seed).permutation(len(rows))]
    s, i, t, u = zip(*rows)
    return {"SessionId": np.array(s), "ItemId": np.array(i), "Time": np.array(t),
            "UserId": np.array(u, dtype=object)}


@pytest.mark.parametrize("seed", [None, 5])
def test_session_aware_pipeline_on_a_hand_table(seed, tmp_path):
    result = P.preprocess_session_aware(user_events(seed=seed), min_item_support=1,
                                        out_dir=tmp_path, name="u")
    assert as_sessions(result["train"]) == {1: [1, 2, 3], 2: [2, 3], 10: [1, 3], 4: [1, 2]}
    assert as_sessions(result["test"]) == {3: [3, 1, 2]}
    assert as_sessions(result["train_tr"]) == {1: [1, 2, 3], 2: [2, 3], 4: [1, 2]}
    assert as_sessions(result["train_valid"]) == {10: [1, 3]}
    stats = {k: (v["events"], v["sessions"], v["users"]) for k, v in result["stats"].items()}
    assert stats["input"] == (21, 10, 4)  # the anonymous session counts no user
    assert stats["drop_anonymous"] == (19, 9, 4)
    assert stats["filter_short_sessions"] == (18, 8, 4)
    assert stats["filter_users"] == (14, 6, 2)
    assert stats["test_split"] == (5, 2, 2) and stats["test"] == (3, 1, 1)
    back = read_events(result["paths"]["test"])
    assert back["UserId"].tolist() == ["A"] * 3 and back["ItemId"].tolist() == [3, 1, 2]
    assert read_events(result["paths"]["train_tr"])["UserId"].tolist() == ["A"] * 5 + ["B"] * 2


def test_session_aware_pipeline_filters_and_options():
    # item support 5: items 1 (7 events in kept users... counted before the user filter), 2, 3
    result = P.preprocess_session_aware(user_events(), min_item_support=5)
    assert sorted(set(result["train"]["ItemId"].tolist())) == [1, 2, 3]
    assert as_sessions(result["test"]) == {3: [3, 1, 2]}
    three = P.preprocess_session_aware(user_events(), min_item_support=1, min_sessions_per_user=3)
    assert set(three["train"]["UserId"].tolist()) == {"A"}  # B has 2 sessions
    two = P.preprocess_session_aware(user_events(), min_item_support=1, test_sessions=2,
                                     min_sessions_per_user=3)
    assert as_sessions(two["test"]) == {10: [1, 3], 3: [3, 1, 2]}
    assert as_sessions(two["train"]) == {1: [1, 2, 3], 2: [2, 3]}


def test_split_last_sessions_orders_by_start_then_end():
    ev = {"SessionId": np.array([1, 1, 2, 2, 3, 3]), "ItemId": np.array([1, 2, 1, 2, 1, 2]),
          "Time": np.array([5.0, 9.0, 5.0, 8.0, 0.0, 1.0]), "UserId": np.array([7] * 6)}
    train, test = P.split_last_sessions(ev)  # 1 and 2 start together; 1 ends later: last
    assert sorted(set(test["SessionId"].tolist())) == [1]
    train, test = P.split_last_sessions(ev, n_sessions=3)  # needs 4 sessions: all train
    assert len(test["ItemId"]) == 0 and len(train["ItemId"]) == 6
    _, test = P.split_last_sessions(ev, n_sessions=3, min_history=0)
    assert len(test["ItemId"]) == 6


def test_session_aware_errors():
    ev = user_events()
    no_user = {k: v for k, v in ev.items() if k != "UserId"}
    with pytest.raises(ValueError, match="needs a 'UserId' column"):
        P.preprocess_session_aware(no_user)
    with pytest.raises(ValueError, match="lack the column 'UserId'"):
        P.drop_anonymous(no_user)
    with pytest.raises(ValueError, match="min_sessions_per_user must be >= test_sessions"):
        P.preprocess_session_aware(ev, test_sessions=2)
    with pytest.raises(ValueError, match="every session needs a known user"):
        P.split_last_sessions(P.sort_events(ev))
    two = user_events()
    two["UserId"][0] = "B"  # session 1 now has events of A and B
    with pytest.raises(ValueError, match="session 1 has events of two users"):
        P.preprocess_session_aware(two)
    with pytest.raises(ValueError, match="session 1 has events of two users"):
        P.preprocess(two)
    mixed = user_events()
    mixed["UserId"][0] = 5
    with pytest.raises(ValueError, match="'UserId' holds ids of type"):
        P.preprocess_session_aware(mixed)
    with pytest.raises(ValueError, match="no events left"):
        P.preprocess_session_aware(ev, min_sessions_per_user=10)


def lastfm_lines(n_users=4, n_sessions=5, items=(1, 2, 3)):
    """Listens of users on consecutive days, newest first per user, as in the raw file."""
    lines = []
    for u in range(n_users):
        for d in reversed(range(n_sessions)):
            for k in reversed(range(len(items))):
                stamp = str(np.datetime64(int(T0 + d * 86400 + u * 7 + k * 60), "s")) + "Z"
                lines.append(f"user_{u:06d}\t{stamp}\tart\tA\ttrk-{items[k]}\tT{items[k]}")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("dataset", ["lastfm", "retailrocket", "diginetica"])
def test_preprocess_file_session_aware_split_of_each_raw_format(tmp_path, dataset):
    """Four users with five 3-click sessions each (one a day), in each raw format: one
    command gives the session-aware split: each user's last session is test."""
    if dataset == "lastfm":
        raw = tmp_path / "userid-timestamp-artid-artname-traid-traname.tsv"
        raw.write_text(lastfm_lines())
    elif dataset == "retailrocket":
        raw = tmp_path / "events.csv"
        raw.write_text("timestamp,visitorid,event,itemid,transactionid\n" + "".join(
            f"{int((T0 + d * 86400 + u * 7 + k * 60) * 1000)},{u},view,{k + 1},\n"
            for u in range(4) for d in range(5) for k in range(3)))
    else:
        raw = tmp_path / "train-item-views.csv"
        day = lambda d: str(np.datetime64(int(T0 // 86400) + d, "D"))  # noqa: E731
        raw.write_text("sessionId;userId;itemId;timeframe;eventdate\n" + "".join(
            f"{u * 10 + d};{u};{k + 1};{k * 60000};{day(d)}\n"
            for u in range(4) for d in range(5) for k in range(3))
            + "99;NA;1;0;2016-01-01\n99;NA;2;5;2016-01-01\n")  # anonymous: dropped
    stats = P.preprocess_file(dataset, raw, tmp_path / "out", split="user")
    assert stats["test"] == {"events": 12, "sessions": 4, "items": 3, "users": 4}
    assert stats["train"]["sessions"] == 16 and stats["train_valid"]["sessions"] == 4
    test = read_events(tmp_path / "out" / f"{dataset}_sessionaware_test.tsv.gz")
    train = read_events(tmp_path / "out" / f"{dataset}_sessionaware_train_full.tsv.gz")
    for u in set(test["UserId"].tolist()):  # the test session is the user's latest
        assert test["Time"][test["UserId"] == u].min() > train["Time"][train["UserId"] == u].max()
    stats = P.preprocess_file(dataset, raw, tmp_path / "o2", split="user", test_sessions=2,
                              min_sessions_per_user=5)
    assert stats["test"]["sessions"] == 8 and stats["train_valid"]["sessions"] == 8


def test_preprocess_file_split_errors(tmp_path):
    raw = tmp_path / "x.tsv"
    raw.write_text(lastfm_lines(n_sessions=2))
    with pytest.raises(ValueError, match="rsc15 .* has no user column"):
        P.preprocess_file("rsc15", raw, tmp_path, split="user")
    with pytest.raises(ValueError, match="split must be one of"):
        P.preprocess_file("lastfm", raw, tmp_path, split="users")
    with pytest.raises(ValueError, match="no events left"):
        P.preprocess_file("lastfm", raw, tmp_path, split="user", min_sessions_per_user=3)


def test_cli_preprocess_session_aware(tmp_path, capsys):
    from gru_engine.cli import main
    raw = tmp_path / "listens.tsv"
    raw.write_text(lastfm_lines())
    assert main(["preprocess", "lastfm", str(raw), str(tmp_path / "out"), "--split", "user",
                 "--min-item-support", "1"]) == 0
    out = capsys.readouterr().out
    assert "test: {'events': 12, 'sessions': 4, 'items': 3, 'users': 4}" in out
    assert (tmp_path / "out" / "lastfm_sessionaware_train_tr.tsv.gz").exists()
    assert main(["preprocess", "lastfm", str(raw), str(tmp_path / "o"),
                 "--min-sessions-per-user", "3"]) == 2
    assert "--split user only" in capsys.readouterr().err
    assert main(["preprocess", "rsc15", str(raw), str(tmp_path / "o"), "--split", "user"]) == 2

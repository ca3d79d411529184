"""Tests of gru_engine.session_aware: user columns (missing users, kinds, errors) and the
user of each built session."""
import numpy as np
import pytest

from gru_engine.data import build_sessions
from gru_engine.session_aware import (USER_KEY, build_user_sessions, extract_users, user_column,
                                      users_of_sessions)


def test_extract_users_kinds_and_missing():
    ids, known = extract_users({USER_KEY: np.array([3.0, np.nan, 7.0])})
    assert ids.dtype == np.int64 and ids.tolist() == [3, 0, 7] and known.tolist() == [1, 0, 1]
    ids, known = extract_users({USER_KEY: np.array(["a", None, "b"], dtype=object)})
    assert ids.tolist() == ["a", "", "b"] and known.tolist() == [True, False, True]
    ids, known = extract_users({USER_KEY: np.array([np.nan, np.nan])})
    assert not known.any() and ids.dtype == np.int64
    with pytest.raises(ValueError, match="missing column 'UserId'"):
        extract_users({"SessionId": [1]})
    with pytest.raises(ValueError, match="non-integer floats"):
        extract_users({USER_KEY: np.array([1.5])})
    with pytest.raises(ValueError, match="ids of type"):
        extract_users({USER_KEY: np.array([1, "a"], dtype=object)})


def test_user_column_for_writing():
    assert user_column(np.array([1, 2])).dtype == np.int64
    got = user_column(np.array([4.0, np.nan]))
    assert got.dtype == object and got.tolist() == [4, None]  # not 4.0


def test_users_of_sessions_refuses_a_session_with_two_users():
    sessions, user, known = users_of_sessions(np.array([5, 5, 2]), np.array([1, 1, 0]),
                                              np.array([True, True, False]))
    assert sessions.tolist() == [2, 5] and user.tolist() == [0, 1] and known.tolist() == [0, 1]
    with pytest.raises(ValueError, match="session 5 has events of two users \\(none and 1\\)"):
        users_of_sessions(np.array([5, 5]), np.array([1, 0]), np.array([True, False]))


def table():
    # sessions 10 (u 'b', 2 events), 11 ('a'), 12 (anonymous), 13 ('b', 1 event: dropped),
    # 14 ('a', later than 11)
    return {"SessionId": np.array([10, 10, 11, 11, 12, 12, 13, 14, 14]),
            "ItemId": np.array([1, 2, 2, 3, 1, 3, 1, 3, 1]),
            "Time": np.array([5.0, 6, 1, 2, 0, 1, 9, 7, 8]),
            USER_KEY: np.array(["b", "b", "a", "a", None, None, "b", "a", "a"], dtype=object)}


def test_build_user_sessions():
    us, index, report = build_user_sessions(table())
    plain, plain_index, _ = build_sessions(table())
    np.testing.assert_array_equal(us.sessions.items, plain.items)  # the same sessions
    assert index.ids.tolist() == plain_index.ids.tolist()
    assert us.sessions.session_ids.tolist() == [10, 11, 12, 14]
    assert us.user_ids.tolist() == ["a", "b"] and us.users.tolist() == [1, 0, -1, 0]
    assert [s.tolist() for s in us.sessions_by_user()] == [[1, 3], [0]]
    assert us.codes_of(np.array(["b", "z", "a"])).tolist() == [1, -1, 0]
    assert us.codes_of(np.array([1])).tolist() == [-1]  # ids of the other kind: unknown
    assert report.n_short_sessions == 1
    # with a given index (test data): sessions of unknown items go, users follow
    test = table()
    test["ItemId"] = np.array([1, 9, 2, 3, 1, 3, 1, 3, 1])
    us, _, report = build_user_sessions(test, index)
    assert us.sessions.session_ids.tolist() == [11, 12, 14] and us.users.tolist() == [0, -1, 0]
    assert us.user_ids.tolist() == ["a"]


def test_build_user_sessions_errors():
    t = table()
    del t[USER_KEY]
    with pytest.raises(ValueError, match="missing column 'UserId'"):
        build_user_sessions(t)
    t = table()
    t[USER_KEY][1] = "a"
    with pytest.raises(ValueError, match="session 10 has events of two users"):
        build_user_sessions(t)


def test_user_history_pop_scores():
    from gru_engine.session_aware import UserHistoryPop
    us, index, _ = build_user_sessions(table())
    scorer = UserHistoryPop(len(index))  # index ids: 1, 2, 3 (first appearance)
    scorer.begin(2)
    scorer.begin_users(us)
    scorer.start_sessions(np.array([0, 1]), np.array(["a", "zz"]), np.array([True, True]))
    got = scorer.score(np.array([0, 1]), np.array([0, 0], dtype=np.int32), np.array([True, True]))
    # user a clicked 2, 3 (session 11) and 3, 1 (14); popularity (sessions 10, 11, 12, 14;
    # 13 is too short) 1: 3, 2: 2, 3: 3
    pop = 0.5 * np.array([3, 2, 3]) / 3
    np.testing.assert_allclose(got, [[1, 1, 2] + pop, pop], rtol=1e-6)
    # a new session no one named (a plain replay reusing slot 0) is anonymous
    got = scorer.score(np.array([0]), np.array([0], dtype=np.int32), np.array([True]))
    np.testing.assert_allclose(got, [pop], rtol=1e-6)

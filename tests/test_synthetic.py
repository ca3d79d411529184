"""Tests of gru_engine.synthetic: the generated session-aware data has the process its
docstring states, a cross-session signal in the signal arm and none in the control."""
import numpy as np
import pytest

from gru_engine.preprocess import sessionize
from gru_engine.synthetic import session_aware_events, session_aware_split

SMALL = dict(n_users=300, sessions_per_user=6, n_items=400, n_tastes=20, taste_weight=0.3)


@pytest.fixture(scope="module", params=[True, False], ids=["signal", "control"])
def arm(request):
    return request.param, *session_aware_events(**SMALL, persistent=request.param, seed=4)


def not_first(events):
    return np.r_[False, events["SessionId"][1:] == events["SessionId"][:-1]]


def test_layout_and_reproducibility(arm):
    persistent, ev, truth = arm
    n = len(ev["ItemId"])
    assert list(ev) == ["SessionId", "ItemId", "Time", "UserId"]
    assert all(len(v) == n and v.dtype.kind in "if" for v in ev.values())
    assert np.all(np.diff(ev["SessionId"]) >= 0)
    assert np.all(ev["UserId"] == ev["SessionId"] // SMALL["sessions_per_user"])
    lengths = np.bincount(ev["SessionId"])
    assert lengths.min() >= 3 and lengths.max() <= 8 and len(lengths) == 300 * 6
    assert np.bincount(truth["cluster"]).tolist() == [20] * 20
    again, _ = session_aware_events(**SMALL, persistent=persistent, seed=4)
    for k in ev:
        np.testing.assert_array_equal(ev[k], again[k])
    other, _ = session_aware_events(**SMALL, persistent=persistent, seed=5)
    assert not np.array_equal(other["ItemId"][:200], ev["ItemId"][:200])


def test_sessions_are_recovered_by_a_30_minute_sessionisation(arm):
    _, ev, _ = arm
    got = sessionize(ev["UserId"], ev["Time"])
    # the same partition (numbering follows (user, time), as SessionId does here)
    np.testing.assert_array_equal(got, ev["SessionId"])


def test_every_click_is_a_taste_click_or_a_chain_successor(arm):
    _, ev, truth = arm
    later = not_first(ev)
    prev, cur = ev["ItemId"][np.flatnonzero(later) - 1], ev["ItemId"][later]
    in_taste = truth["cluster"][cur] == truth["session_taste"][ev["SessionId"][later]]
    in_chain = (truth["successors"][prev] == cur[:, None]).any(axis=1)
    assert np.all(in_taste | in_chain)


def test_within_session_statistics_are_the_same_in_both_arms(arm):
    """Taste clicks: taste_weight + (1 - taste_weight) * P(a chain step lands in the cluster
    by chance, ~1/n_tastes); the first click is uniform: ~1/n_tastes in the cluster."""
    _, ev, truth = arm
    later = not_first(ev)
    match = truth["cluster"][ev["ItemId"]] == truth["session_taste"][ev["SessionId"]]
    expected = 0.3 + 0.7 / 20
    assert abs(match[later].mean() - expected) < 0.015
    assert abs(match[~later].mean() - 1 / 20) < 0.015


def history_guess_accuracy(ev, truth):
    """Accuracy of guessing each user's last-session taste as the most frequent cluster of
    the clicks (after the first) of the user's earlier sessions."""
    train, test = session_aware_split(ev)
    later = not_first(train)
    users, clusters = train["UserId"][later], truth["cluster"][train["ItemId"][later]]
    counts = np.zeros((SMALL["n_users"], SMALL["n_tastes"]))
    np.add.at(counts, (users, clusters), 1)
    last = test["SessionId"][np.r_[True, test["SessionId"][1:] != test["SessionId"][:-1]]]
    return np.mean(counts.argmax(axis=1)[last // SMALL["sessions_per_user"]]
                   == truth["session_taste"][last])


def test_the_signal_persists_across_sessions_only_in_the_signal_arm(arm):
    persistent, ev, truth = arm
    acc = history_guess_accuracy(ev, truth)
    if persistent:
        assert acc > 0.9
        assert np.all(truth["session_taste"].reshape(300, 6) == truth["user_taste"][:, None])
    else:
        assert acc < 0.15  # chance: 1 / 20
        assert np.mean(truth["session_taste"].reshape(300, 6)[:, 1:]
                       == truth["user_taste"][:, None]) < 0.15


def test_split_puts_each_users_last_session_in_test(arm):
    _, ev, _ = arm
    train, test = session_aware_split(ev)
    assert sorted(set(test["SessionId"].tolist())) == list(range(5, 1800, 6))
    assert len(train["ItemId"]) + len(test["ItemId"]) == len(ev["ItemId"])


def test_no_taste_gives_a_pure_chain():
    ev, truth = session_aware_events(n_users=50, taste_weight=0.0, seed=1)
    later = not_first(ev)
    prev, cur = ev["ItemId"][np.flatnonzero(later) - 1], ev["ItemId"][later]
    assert np.all((truth["successors"][prev] == cur[:, None]).any(axis=1))


@pytest.mark.parametrize("kwargs, match", [
    ({"n_users": 0}, "n_users must be an integer >= 1"),
    ({"n_items": 101, "n_tastes": 10}, "multiple of n_tastes"),
    ({"taste_weight": 1.5}, r"taste_weight must be in \[0, 1\]"),
    ({"session_length": (1, 4)}, "2 <= min <= max"),
    ({"session_length": (5, 4)}, "2 <= min <= max"),
    ({"session_length": 3}, r"\(min, max\) integers"),
    ({"n_successors": True}, "n_successors must be an integer"),
])
def test_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        session_aware_events(**kwargs)

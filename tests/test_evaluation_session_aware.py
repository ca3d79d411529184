"""Tests of evaluation.evaluate_session_aware (the HRNN protocol): users reach a user-aware
scorer in the right order for every batch size, plain scorers get what evaluate_sessions
gives, errors; and on generated data a history-reading baseline gains only with the signal."""
import numpy as np
import pytest

from gru_engine.data import build_sessions
from gru_engine.evaluation import UserAwareScorer, evaluate_session_aware, evaluate_sessions
from gru_engine.session_aware import UserHistoryPop, build_user_sessions
from gru_engine.synthetic import session_aware_events, session_aware_split


class Recorder:
    """A user-aware scorer whose scores are a one-hot of the session's user (item = user) and
    that checks each new session's first click against the user it was told."""

    def __init__(self, n_items, first_item_of_user):
        self.n_items, self.first = n_items, first_item_of_user
        self.begun_with = "unset"

    def begin(self, n_rows):
        self.user = np.full(n_rows, -1)
        self.told = np.zeros(n_rows, dtype=bool)

    def begin_users(self, history):
        self.begun_with = history

    def start_sessions(self, rows, user_ids, known):
        assert not self.told[rows].any()
        self.user[rows] = np.where(known, user_ids, -1)
        self.told[rows] = True

    def score(self, rows, items, new_session):
        assert np.array_equal(self.told[rows], new_session)  # told exactly the new ones
        for r, item, new in zip(rows, items, new_session):
            if new:  # the first click of user u's session is item first[u]; anonymous: 0
                assert item == (self.first[self.user[r]] if self.user[r] >= 0 else 0)
        self.told[rows] = False
        out = np.zeros((len(rows), self.n_items), dtype=np.float32)
        has = self.user[rows] >= 0
        out[np.flatnonzero(has), self.user[rows][has]] = 1.0
        return out


def table(n_users=7, seed=0):
    """User u (0..n_users-1) has one test session that starts with item 10 + u and whose
    later clicks are u (so the user's one-hot scores rank them first); plus one anonymous
    session; sessions start in a shuffled order and have different lengths."""
    rng = np.random.default_rng(seed)
    rows, sid = [], 0
    for u in list(range(n_users)) + [None]:
        start = rng.uniform(0, 100)
        first = 0 if u is None else 10 + u
        clicks = [first] + [u if u is not None else 1] * int(rng.integers(1, 5))
        rows += [(sid, i, start + k, u) for k, i in enumerate(clicks)]
        sid += 1
    s, i, t, u = zip(*rows)
    return {"SessionId": np.array(s), "ItemId": np.array(i), "Time": np.array(t),
            "UserId": np.array(u, dtype=object)}


@pytest.mark.parametrize("batch_size", [1, 3, 512])
def test_each_new_session_is_told_its_user(batch_size):
    from gru_engine.data import ItemIndex
    index = ItemIndex(np.arange(20))
    test, _, _ = build_user_sessions(table(), index)
    scorer = Recorder(20, {u: 10 + u for u in range(7)})
    assert isinstance(scorer, UserAwareScorer)
    result = evaluate_session_aware(scorer, test, batch_size=batch_size, cutoffs=(1,))
    assert scorer.begun_with is None
    # 7 user sessions: every later click is the user's item, ranked 1st by the one-hot scores;
    # the anonymous session's clicks tie with everything (conservative rank 20)
    t = table()
    n_user_preds = sum(np.count_nonzero(t["SessionId"] == s) - 1 for s in range(7))
    n_anon = np.count_nonzero(t["SessionId"] == 7) - 1
    assert result["n_events"] == n_user_preds + n_anon
    assert result["recall@1"] == pytest.approx(n_user_preds / (n_user_preds + n_anon))
    assert result["n_users"] == 7 and result["user_aware"] is True


def test_plain_scorers_get_the_plain_evaluation():
    ev, _ = session_aware_events(n_users=40, sessions_per_user=3, n_items=60, n_tastes=6, seed=2)
    train, test = session_aware_split(ev)
    history, index, _ = build_user_sessions(train)
    test_us, _, _ = build_user_sessions(test, index)

    class Pop:  # a plain scorer: no user hooks
        n_items = len(index)

        def begin(self, n):
            pass

        def score(self, rows, items, new_session):
            return np.tile(np.arange(self.n_items, dtype=np.float32), (len(rows), 1))

    got = evaluate_session_aware(Pop(), test_us, history, batch_size=7)
    want = evaluate_sessions(Pop(), build_sessions(test, index)[0], batch_size=7)
    assert got["user_aware"] is False and got["n_users_with_history"] == 40
    for k in ("recall@20", "mrr@20", "n_events", "by_position"):
        assert got[k] == want[k]


def test_errors():
    ev, _ = session_aware_events(n_users=5, sessions_per_user=3, n_items=40, n_tastes=4, seed=3)
    train, test = session_aware_split(ev)
    history, index, _ = build_user_sessions(train)
    test_us, _, _ = build_user_sessions(test, index)
    scorer = UserHistoryPop(len(index))
    with pytest.raises(ValueError, match="test must be UserSessions"):
        evaluate_session_aware(scorer, build_sessions(test, index)[0])
    with pytest.raises(ValueError, match="history must be UserSessions"):
        evaluate_session_aware(scorer, test_us, history.sessions)
    # the test sessions as "history" of the train ones: history after the test start
    with pytest.raises(ValueError, match="has history up to time .* after the start"):
        evaluate_session_aware(scorer, history, test_us)
    strs = {**test, "UserId": test["UserId"].astype(str)}
    with pytest.raises(ValueError, match="different kinds"):
        evaluate_session_aware(scorer, build_user_sessions(strs, index)[0], history)


def history_baseline_recall(persistent, use_history=True):
    ev, _ = session_aware_events(n_users=300, sessions_per_user=8, n_items=400, n_tastes=20,
                                 taste_weight=0.3, persistent=persistent, seed=6)
    train, test = session_aware_split(ev)
    history, index, _ = build_user_sessions(train)
    test_us, _, _ = build_user_sessions(test, index)
    result = evaluate_session_aware(UserHistoryPop(len(index)), test_us,
                                    history if use_history else None, cutoffs=(20,))
    assert result["n_users_with_history"] == (300 if use_history else 0)
    return result["recall@20"]


def test_history_baseline_gains_only_with_the_cross_session_signal():
    """UserHistoryPop reads only the user's earlier sessions: with the signal its top items
    hold the user's taste cluster (20 items, 30% of the clicks); in the control only what any
    user's history holds (items the shared chain visits often). ~4,500 predictions each: the
    standard error of a recall near 0.1 is ~0.005."""
    signal, control = history_baseline_recall(True), history_baseline_recall(False)
    assert signal > control + 0.02
    assert history_baseline_recall(True, use_history=False) == 0.0  # all scores tie

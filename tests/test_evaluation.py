"""evaluate_sessions: exact metrics, the session-parallel schedule, and argument checks."""
import logging

import numpy as np
import pytest

from gru_engine import evaluation
from gru_engine.data import Sessions, build_sessions
from gru_engine.evaluation import SessionScorer, evaluate_sessions
from gru_engine.exceptions import ModelFitError


def make_sessions(seqs, start_times=None):
    """Sessions from a list of item lists; session ``s`` starts at ``start_times[s]``."""
    if start_times is None:
        start_times = range(len(seqs))
    lengths = [len(s) for s in seqs]
    offsets = np.zeros(len(seqs) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    times = np.concatenate([t + np.arange(n, dtype=np.float64) * 1e-3
                            for t, n in zip(start_times, lengths)])
    return Sessions(items=np.concatenate([np.asarray(s, dtype=np.int32) for s in seqs]),
                    offsets=offsets, times=times, session_ids=np.arange(len(seqs)))


def random_sessions(rng, n_sessions, n_items, max_len=30):
    lengths = np.minimum(rng.geometric(0.15, size=n_sessions) + 1, max_len)
    seqs = [rng.integers(0, n_items, size=n).tolist() for n in lengths]
    return make_sessions(seqs, start_times=rng.permutation(n_sessions) * 10.0)


class HistoryScorer:
    """Scores depend on the last two clicks of the slot's session: ``T[cur] + U[prev]``
    (``U[n_items]`` when there is no previous click). Integer-valued tables make many ties.

    Records every call and checks the protocol (distinct rows in range, no click on a slot
    whose session was never started)."""

    def __init__(self, T, U):
        self.T, self.U = T, U
        self.n_items = T.shape[0]
        self.calls = []
        self.begun = []

    def begin(self, n_rows):
        self.begun.append(n_rows)
        self.cur = np.full(n_rows, -1, dtype=np.int64)

    def score(self, rows, items, new_session):
        assert rows.dtype == np.int64 and items.dtype == np.int32 and new_session.dtype == bool
        assert len(np.unique(rows)) == len(rows)
        assert rows.min() >= 0 and rows.max() < len(self.cur)
        assert np.all(new_session | (self.cur[rows] >= 0)), "a slot continued without a start"
        self.calls.append((rows.copy(), items.copy(), new_session.copy()))
        prev = np.where(new_session, self.n_items, self.cur[rows])
        self.cur[rows] = items
        return (self.T[items] + self.U[prev]).astype(np.float32)

    def reference_scores(self, prefix):
        prev = prefix[-2] if len(prefix) > 1 else self.n_items
        return (self.T[prefix[-1]] + self.U[prev]).astype(np.float32)


def history_scorer(rng, n_items, levels=3):
    return HistoryScorer(rng.integers(0, levels, size=(n_items, n_items)).astype(np.float32),
                         rng.integers(0, levels, size=(n_items + 1, n_items)).astype(np.float32))


def reference_evaluate(scorer, sessions, cutoffs, mode, targets="all"):
    """Session by session, click by click, ranks by plain counting."""
    ranks, positions = [], []
    for s in range(sessions.n_sessions):
        seq = sessions.items[sessions.offsets[s]:sessions.offsets[s + 1]]
        for p in range(len(seq) - 1):
            if targets == "last" and p != len(seq) - 2:
                continue
            sc = scorer.reference_scores(seq[:p + 1])
            t = sc[seq[p + 1]]
            greater, equal = int(np.sum(sc > t)), int(np.sum(sc == t))
            ranks.append({"conservative": greater + equal, "optimistic": greater + 1,
                          "median": greater + (equal + 1) / 2}[mode])
            positions.append(p + 1)
    ranks, positions = np.array(ranks, dtype=np.float64), np.array(positions)
    out = {"n_events": len(ranks)}
    for k in cutoffs:
        out[f"recall@{k}"] = np.mean(ranks <= k)
        out[f"mrr@{k}"] = np.mean(np.where(ranks <= k, 1 / ranks, 0))
    out["positions"] = np.minimum(positions, 20)
    return out


def strip(result):
    return {k: v for k, v in result.items() if k != "seconds"}


# ---------------------------------------------------------------------------------------------
# exact values
# ---------------------------------------------------------------------------------------------
class TableScorer:
    """Scores depend on the current click only: row ``T[item]``."""

    def __init__(self, T, dtype=np.float32):
        self.T = np.asarray(T, dtype=dtype)
        self.n_items = self.T.shape[0]

    def begin(self, n_rows):
        pass

    def score(self, rows, items, new_session):
        return self.T[items]


HAND_TABLE = [[0, 3, 1, 2],   # after item 0
              [1, 0, 1, 3],   # after item 1: items 0 and 2 tie
              [2, 2, 2, 2],   # after item 2: everything ties
              [3, 0, 0, 1]]   # after item 3
# A: 0 -> 1 -> 2   B: 1 -> 0   C: 2 -> 3 -> 0
HAND_SESSIONS = [[0, 1, 2], [1, 0], [2, 3, 0]]
# predictions (target: greater, equal): A1 (1: 0,1), A2 (2: 1,2), B1 (0: 1,2), C1 (3: 0,4), C2 (0: 0,1)


@pytest.mark.parametrize("batch_size", [1, 2, 3, 100])
def test_hand_computed_metrics(batch_size):
    sessions = make_sessions(HAND_SESSIONS)
    r = evaluate_sessions(TableScorer(HAND_TABLE), sessions, cutoffs=(1, 3, 5),
                          batch_size=batch_size)
    # conservative ranks: 1, 3, 3, 4, 1
    assert r["n_events"] == 5 and r["n_sessions"] == 3
    assert r["recall@1"] == pytest.approx(2 / 5) and r["mrr@1"] == pytest.approx(2 / 5)
    assert r["recall@3"] == pytest.approx(4 / 5)
    assert r["mrr@3"] == pytest.approx((1 + 1 / 3 + 1 / 3 + 0 + 1) / 5)
    assert r["recall@5"] == 1.0
    assert r["mrr@5"] == pytest.approx((1 + 1 / 3 + 1 / 3 + 1 / 4 + 1) / 5)
    pos = r["by_position"]
    assert [b["position"] for b in pos] == [1, 2] and [b["n"] for b in pos] == [3, 2]
    assert pos[0]["recall@1"] == pytest.approx(1 / 3)   # ranks 1, 3, 4
    assert pos[0]["mrr@5"] == pytest.approx((1 + 1 / 3 + 1 / 4) / 3)
    assert pos[1]["recall@1"] == pytest.approx(1 / 2)   # ranks 3, 1

    # optimistic ranks: 1, 2, 2, 1, 1
    r = evaluate_sessions(TableScorer(HAND_TABLE), sessions, cutoffs=(1, 5), mode="optimistic",
                          batch_size=batch_size)
    assert r["recall@1"] == pytest.approx(3 / 5) and r["mrr@5"] == pytest.approx(4 / 5)
    assert strip(r) == strip(evaluate_sessions(TableScorer(HAND_TABLE), sessions, cutoffs=(1, 5),
                                               mode="standard", batch_size=batch_size))
    # median ranks: 1, 2.5, 2.5, 2.5, 1
    r = evaluate_sessions(TableScorer(HAND_TABLE), sessions, cutoffs=(2, 3), mode="median",
                          batch_size=batch_size)
    assert r["recall@2"] == pytest.approx(2 / 5) and r["recall@3"] == 1.0
    assert r["mrr@3"] == pytest.approx((1 + 0.4 + 0.4 + 0.4 + 1) / 5)
    # last prediction of each session only: ranks 3 (A), 3 (B), 1 (C)
    r = evaluate_sessions(TableScorer(HAND_TABLE), sessions, cutoffs=(1, 3), targets="last",
                          batch_size=batch_size)
    assert r["n_events"] == 3
    assert r["recall@1"] == pytest.approx(1 / 3) and r["mrr@3"] == pytest.approx(5 / 9)
    assert [(b["position"], b["n"]) for b in r["by_position"]] == [(1, 1), (2, 2)]


def test_oracle_and_anti_oracle():
    n_items = 50
    rng = np.random.default_rng(0)
    seqs = []
    for n in rng.integers(2, 12, size=40):
        first = int(rng.integers(0, n_items))
        seqs.append([(first + j) % n_items for j in range(n)])  # next item = item + 1
    sessions = make_sessions(seqs)
    oracle = np.zeros((n_items, n_items), dtype=np.float32)
    oracle[np.arange(n_items), (np.arange(n_items) + 1) % n_items] = 1.0
    for mode in ("conservative", "optimistic", "median"):
        r = evaluate_sessions(TableScorer(oracle), sessions, cutoffs=(1, 20), mode=mode,
                              batch_size=7)
        assert r["recall@1"] == r["mrr@1"] == r["recall@20"] == r["mrr@20"] == 1.0
        assert r["n_events"] == sum(len(s) - 1 for s in seqs)
        r = evaluate_sessions(TableScorer(-oracle), sessions, cutoffs=(1, 20, 49), mode=mode,
                              batch_size=7)
        assert r["recall@49"] == r["mrr@49"] == r["recall@1"] == 0.0
    r = evaluate_sessions(TableScorer(-oracle), sessions, cutoffs=(50,), batch_size=7)
    assert r["recall@50"] == 1.0 and r["mrr@50"] == pytest.approx(1 / 50)


@pytest.mark.parametrize("mode", ["conservative", "optimistic", "median"])
@pytest.mark.parametrize("targets", ["all", "last"])
def test_matches_reference_for_any_batch_size(mode, targets):
    rng = np.random.default_rng(1)
    n_items = 23
    sessions = random_sessions(rng, 60, n_items)
    scorer = history_scorer(rng, n_items)
    cutoffs = (1, 2, 5, 10)
    ref = reference_evaluate(scorer, sessions, cutoffs, mode, targets)
    results = []
    for batch_size in (1, 4, 17, 60, 512):
        r = evaluate_sessions(scorer, sessions, cutoffs=cutoffs, mode=mode, targets=targets,
                              batch_size=batch_size)
        for key in ref:
            if key != "positions":
                assert r[key] == pytest.approx(ref[key], abs=1e-12), (batch_size, key)
        results.append(strip(r))
    assert all(r == results[0] for r in results[1:])
    counts = np.bincount(ref["positions"], minlength=21)
    assert [b["n"] for b in results[0]["by_position"]] == [int(c) for c in counts if c]
    assert results[0]["by_position"][-1]["position"] == "20+"


def test_counts_by_position_and_the_20_plus_bucket():
    seqs = [[1] * 25, [2] * 3, [3] * 20, [4] * 21]
    r = evaluate_sessions(TableScorer(np.eye(5)), make_sessions(seqs), cutoffs=(1,))
    assert r["n_events"] == 24 + 2 + 19 + 20
    pos = r["by_position"]
    assert [b["position"] for b in pos] == list(range(1, 20)) + ["20+"]
    assert [b["n"] for b in pos] == [4, 4] + [3] * 17 + [24 - 19 + 20 - 19]
    assert sum(b["n"] for b in pos) == r["n_events"]
    assert "by_position" not in evaluate_sessions(TableScorer(np.eye(5)), make_sessions(seqs),
                                                  by_position=False)


# ---------------------------------------------------------------------------------------------
# the schedule
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("batch_size", [1, 3, 8, 100])
def test_schedule_session_parallel(batch_size):
    rng = np.random.default_rng(2)
    n_items = 30
    seqs = [rng.integers(0, n_items, size=n).tolist() for n in rng.integers(1, 9, size=25)]
    start_times = rng.permutation(len(seqs)).astype(float)
    sessions = make_sessions(seqs, start_times)
    scorer = history_scorer(rng, n_items)
    evaluate_sessions(scorer, sessions, batch_size=batch_size)

    replayed = [s for s in np.argsort(start_times, kind="stable") if len(seqs[s]) >= 2]
    n_slots = min(batch_size, len(replayed))
    assert scorer.begun == [n_slots]
    # Per slot, split the stream of clicks at new_session: the sessions minus their last click.
    streams = {}
    active = []
    for step, (rows, items, new) in enumerate(scorer.calls):
        assert np.all(np.diff(rows) > 0), "rows are passed in slot order"
        active.append(len(rows))
        for r, i, n in zip(rows.tolist(), items.tolist(), new.tolist()):
            if n:
                streams.setdefault(r, []).append((step, [i]))
            else:
                assert streams[r][-1][0] + len(streams[r][-1][1]) == step, "slot left idle"
                streams[r][-1][1].append(i)
    starts = sorted((step, r, clicks) for r, lst in streams.items() for step, clicks in lst)
    assert [clicks for _, _, clicks in starts] == [seqs[s][:-1] for s in replayed]
    # every slot is busy from step 0 until sessions run out, then the batch only shrinks
    assert active[0] == n_slots and all(a >= b for a, b in zip(active, active[1:]))
    assert sum(active) == sum(len(seqs[s]) - 1 for s in replayed)
    # a freed slot takes the next session at once (the next step)
    for r, lst in streams.items():
        for (s0, c0), (s1, _) in zip(lst, lst[1:]):
            assert s1 == s0 + len(c0)


def test_real_sessions_from_the_data_layer():
    rng = np.random.default_rng(3)
    n = 4000
    table = {"SessionId": rng.integers(0, 600, size=n), "ItemId": rng.integers(0, 90, size=n),
             "Time": rng.random(n) * 1e5}
    sessions, index, _ = build_sessions(table)
    pop = np.bincount(sessions.items, minlength=len(index)).astype(np.float32)
    scorer = TableScorer(np.tile(pop, (len(index), 1)))
    r = evaluate_sessions(scorer, sessions, cutoffs=(5, 20), batch_size=64)
    nxt = np.concatenate([sessions.items[a + 1:b] for a, b in
                          zip(sessions.offsets[:-1], sessions.offsets[1:])])
    ranks = (pop[None, :] >= pop[nxt][:, None]).sum(1)
    assert r["n_events"] == len(nxt) == sessions.n_events - sessions.n_sessions
    assert r["recall@20"] == pytest.approx(np.mean(ranks <= 20), abs=1e-12)
    assert r["mrr@5"] == pytest.approx(np.mean(np.where(ranks <= 5, 1 / ranks, 0)), abs=1e-12)


def test_single_click_sessions_are_skipped():
    seqs = [[1], [0, 1], [2], [1, 2, 0]]
    scorer = HistoryScorer(np.eye(3, dtype=np.float32), np.zeros((4, 3), dtype=np.float32))
    r = evaluate_sessions(scorer, make_sessions(seqs), batch_size=2)
    assert r["n_events"] == 3 and r["n_sessions"] == 2
    assert scorer.begun == [2]
    assert sum(len(rows) for rows, _, _ in scorer.calls) == 3


# ---------------------------------------------------------------------------------------------
# protocol, progress, errors
# ---------------------------------------------------------------------------------------------
def test_scorers_follow_the_protocol():
    assert isinstance(TableScorer(np.eye(3)), SessionScorer)
    assert not isinstance(object(), SessionScorer)


def test_float64_scores_are_accepted():
    sessions = make_sessions(HAND_SESSIONS)
    with pytest.warns(UserWarning, match="float64"):
        a = evaluate_sessions(TableScorer(HAND_TABLE, np.float64), sessions)
    b = evaluate_sessions(TableScorer(HAND_TABLE), sessions)
    assert strip(a) == strip(b)


def test_progress_callback_and_log(monkeypatch, caplog):
    rng = np.random.default_rng(4)
    sessions = random_sessions(rng, 30, 10)
    seen = []
    monkeypatch.setattr(evaluation, "_LOG_EVERY_S", 0.0)
    with caplog.at_level(logging.INFO, logger="gru_engine"):
        r = evaluate_sessions(TableScorer(np.eye(10)), sessions, batch_size=4,
                              progress=lambda done, total: seen.append((done, total)))
    total = sessions.n_events - sessions.n_sessions
    assert seen[-1] == (total, total) and r["n_events"] == total
    assert all(a[0] < b[0] for a, b in zip(seen, seen[1:]))
    assert any("clicks scored" in rec.getMessage() for rec in caplog.records)
    assert any("evaluated %d predictions" % total in rec.getMessage() for rec in caplog.records)


def test_nan_scores_are_refused():
    table = np.eye(4, dtype=np.float32)
    table[2, 1] = np.nan  # the scores after a click on item 2
    with pytest.raises(ModelFitError):
        evaluate_sessions(TableScorer(table), make_sessions([[0, 1, 2, 3]]))
    # also when the NaN scores follow a click whose prediction is not ranked
    with pytest.raises(ModelFitError):
        evaluate_sessions(TableScorer(table), make_sessions([[2, 3, 1]]), targets="last")
    assert evaluate_sessions(TableScorer(table), make_sessions([[3, 1, 2]]))["n_events"] == 2


class RankingScorer(HistoryScorer):
    """A scorer with its own ``rank`` (as a GPU scorer has): ranks without handing out scores."""

    def __init__(self, T, U):
        super().__init__(T, U)
        self.n_score_calls = 0
        self.n_rank_calls = 0

    def score(self, rows, items, new_session):
        self.n_score_calls += 1
        return super().score(rows, items, new_session)

    def rank(self, rows, items, new_session, targets, mode):
        self.n_rank_calls += 1
        assert targets.dtype == np.int64 and len(targets) == len(rows)
        scores = HistoryScorer.score(self, rows, items, new_session)
        nan_rows = np.isnan(scores).any(1)
        ranks = evaluation.rank_targets(np.nan_to_num(scores), targets, mode)
        return np.where(nan_rows, np.nan, ranks).astype(np.float32)


@pytest.mark.parametrize("mode", ["conservative", "median"])
def test_scorer_with_its_own_rank(mode):
    rng = np.random.default_rng(5)
    sessions = random_sessions(rng, 40, 15)
    plain = history_scorer(rng, 15)
    ranking = RankingScorer(plain.T, plain.U)
    expected = evaluate_sessions(plain, sessions, mode=mode, batch_size=8)
    got = evaluate_sessions(ranking, sessions, mode=mode, batch_size=8)
    assert strip(got) == strip(expected)
    assert ranking.n_score_calls == 0 and ranking.n_rank_calls == len(plain.calls)


def test_scorer_rank_nan_or_out_of_range_is_refused():
    table = np.eye(4, dtype=np.float32)
    table[2, 1] = np.nan
    scorer = RankingScorer(table, np.zeros((5, 4), dtype=np.float32))
    with pytest.raises(ModelFitError, match="invalid ranks"):
        evaluate_sessions(scorer, make_sessions([[0, 1, 2, 3]]))

    class ZeroRank(RankingScorer):  # what a counting kernel returns for a NaN target score
        def rank(self, rows, items, new_session, targets, mode):
            return np.zeros(len(rows))
    with pytest.raises(ModelFitError, match="invalid ranks"):
        evaluate_sessions(ZeroRank(np.eye(4), np.zeros((5, 4))), make_sessions([[0, 1]]))


@pytest.mark.parametrize("kwargs, match", [
    ({"cutoffs": ()}, "cutoffs"),
    ({"cutoffs": (0, 5)}, "cutoffs"),
    ({"cutoffs": (-1,)}, "cutoffs"),
    ({"cutoffs": (2.5,)}, "cutoffs"),
    ({"cutoffs": ("5",)}, "cutoffs"),
    ({"cutoffs": (True,)}, "cutoffs"),
    ({"mode": "pessimistic"}, "mode"),
    ({"batch_size": 0}, "batch_size"),
    ({"batch_size": 2.0}, "batch_size"),
    ({"targets": "first"}, "targets"),
    ({"n_threads": -1}, "n_threads"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        evaluate_sessions(TableScorer(HAND_TABLE), make_sessions(HAND_SESSIONS), **kwargs)


def test_single_int_cutoff_and_duplicates():
    r = evaluate_sessions(TableScorer(HAND_TABLE), make_sessions(HAND_SESSIONS), cutoffs=3)
    assert r["recall@3"] == pytest.approx(4 / 5)
    r = evaluate_sessions(TableScorer(HAND_TABLE), make_sessions(HAND_SESSIONS), cutoffs=[3, 1, 3])
    assert [k for k in r if k.startswith("recall")] == ["recall@1", "recall@3"]


def test_bad_scorer_or_sessions():
    with pytest.raises(ValueError, match="n_items"):
        evaluate_sessions(TableScorer(np.eye(3)), make_sessions([[0, 5]]))
    with pytest.raises(ValueError, match="at least 2"):
        evaluate_sessions(TableScorer(np.eye(3)), make_sessions([[0], [1]]))

    class Wrong(TableScorer):
        def score(self, rows, items, new_session):
            return self.T[items][:, :-1]
    with pytest.raises(ValueError, match="shape"):
        evaluate_sessions(Wrong(np.eye(3)), make_sessions([[0, 1]]))

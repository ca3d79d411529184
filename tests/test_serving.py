"""Serving (gru_engine/serving.py): the live session store against offline scoring and
evaluation, threads, eviction, unknown items, snapshots; scorers built once per model;
similar_items against a NumPy cosine reference; the CUDA backend through the emulator."""
import threading

import numpy as np
import pytest

from gru_engine.model import SessionGRU
from gru_engine.ranking import top_k
from gru_engine.serving import SessionStore, shared_scorer

N_ITEMS = 120


def _events(n_sessions=400, seed=0, n_items=N_ITEMS):
    """Sessions that walk a ring of items (learnable), ids = 1000 + 3 * index."""
    rng = np.random.default_rng(seed)
    sess, items = [], []
    for s in range(n_sessions):
        start, n = rng.integers(n_items), rng.integers(2, 8)
        walk = (start + np.cumsum(rng.integers(1, 3, n))) % n_items
        sess += [s] * n
        items += list(walk)
    items = 1000 + 3 * np.asarray(items)
    return {"SessionId": np.asarray(sess), "ItemId": items,
            "Time": np.arange(len(items), dtype=float)}


@pytest.fixture(scope="module")
def model():
    return SessionGRU(layers=[16], n_epochs=2, batch_size=16, n_sample=32, n_threads=1,
                      random_state=0).fit(_events())


@pytest.fixture(scope="module")
def model2():
    """Two layers: the store's state rows hold both side by side."""
    return SessionGRU(layers=[12, 8], n_epochs=1, batch_size=16, n_sample=32, n_threads=1,
                      random_state=1).fit(_events())


def _sessions(model, n, seed, max_len=6):
    rng = np.random.default_rng(seed)
    ids = model.item_index_.ids
    return [list(ids[rng.integers(len(ids), size=rng.integers(1, max_len + 1))])
            for _ in range(n)]


def _replay(store, sessions, k, sids=None, exclude_seen=False):
    """Feed the sessions click by click, interleaved (all first clicks, then all second ones);
    returns each session's answer after its last click."""
    sids = list(range(len(sessions))) if sids is None else sids
    last = {}
    for t in range(max(len(s) for s in sessions)):
        live = [j for j, s in enumerate(sessions) if len(s) > t]
        r = store.step([sids[j] for j in live], [sessions[j][t] for j in live], k=k,
                       exclude_seen=exclude_seen)
        for row, j in enumerate(live):
            last[j] = (r.items[row], r.scores[row])
    return [last[j] for j in range(len(sessions))]


# ---- the store against offline scoring --------------------------------------------------------
@pytest.mark.parametrize("fixture", ["model", "model2"])
def test_store_answers_equal_predict_next(fixture, request):
    m = request.getfixturevalue(fixture)
    sessions = _sessions(m, 60, seed=1)
    store = SessionStore(m, capacity=100, k=10)
    full = m.predict_next(sessions)
    want_idx, want_val = top_k(full, 10)
    for (items, scores), wi, wv, s in zip(_replay(store, sessions, 10), want_idx, want_val,
                                          sessions):
        np.testing.assert_allclose(scores, wv, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(items, m.item_index_.ids[wi])


def test_store_gives_the_metrics_of_offline_evaluation(model):
    """Replaying test sessions click by click through the store and reading the true next item's
    position in its top-20 gives evaluate()'s Recall@20 and MRR@20."""
    test = _events(150, seed=7)
    ids = np.asarray(test["ItemId"])
    by_session = np.split(ids, np.flatnonzero(np.diff(test["SessionId"])) + 1)
    store = SessionStore(model, capacity=50, k=20)
    hits, rr, n = 0, 0.0, 0
    for s, clicks in enumerate(by_session):
        for t in range(len(clicks) - 1):
            r = store.step([s], [clicks[t]])
            pos = np.flatnonzero(r.items[0] == clicks[t + 1])
            n += 1
            if len(pos):
                hits += 1
                rr += 1.0 / (pos[0] + 1)
        store.end(s)
    want = model.evaluate(test, cutoffs=(20,), by_position=False)
    assert want["n_events"] == n
    assert hits / n == pytest.approx(want["recall@20"], abs=1e-12)
    assert rr / n == pytest.approx(want["mrr@20"], rel=1e-9)
    assert want["recall@20"] > 0.2  # a model that learned: the comparison means something


def test_recommend_for_repeats_the_last_answer_and_keeps_the_state(model):
    sessions = _sessions(model, 20, seed=2)
    store = SessionStore(model, capacity=30, k=8)
    last = _replay(store, sessions, 8)
    peek = store.recommend_for(list(range(20)))
    for row, (items, scores) in enumerate(last):
        np.testing.assert_allclose(peek.scores[row], scores, rtol=1e-6)
    assert not peek.cold.any() and not peek.unknown_item.any()
    # the state is unchanged: the next click gives what a store without the peek gives
    other = SessionStore(model, capacity=30, k=8)
    _replay(other, sessions, 8)
    nxt = [s[0] for s in sessions]
    np.testing.assert_array_equal(store.step(list(range(20)), nxt).scores,
                                  other.step(list(range(20)), nxt).scores)
    cold = store.recommend_for(["nobody"])
    assert cold.cold[0] and np.isnan(cold.scores[0]).all()
    popular = model.item_index_.ids[np.argsort(-model.item_support_, kind="stable")[:8]]
    np.testing.assert_array_equal(cold.items[0], popular)


def test_repeated_session_in_one_call_equals_consecutive_calls(model):
    ids = model.item_index_.ids
    a, b = SessionStore(model, capacity=5), SessionStore(model, capacity=5)
    r = a.step(["x", "y", "x", "x"], [ids[1], ids[2], ids[3], ids[4]], k=5)
    want = [b.step(["x", "y"], [ids[1], ids[2]], k=5), b.step(["x"], [ids[3]], k=5),
            b.step(["x"], [ids[4]], k=5)]
    np.testing.assert_array_equal(r.items[[0, 1]], want[0].items)
    np.testing.assert_array_equal(r.items[2], want[1].items[0])
    np.testing.assert_array_equal(r.items[3], want[2].items[0])
    assert r.new_session.tolist() == [True, True, False, False]


def test_exclude_seen(model):
    ids = model.item_index_.ids
    store = SessionStore(model, capacity=5)
    clicks = [ids[3], ids[4], ids[5], ids[4]]
    for c in clicks:
        r = store.step(["s"], [c], k=len(ids), exclude_seen=True)
    finite = r.items[0][np.isfinite(r.scores[0])]
    assert set(finite) == set(ids) - set(clicks)
    assert np.isneginf(r.scores[0][-3:]).all()  # -inf pads the 3 excluded items
    plain = store.recommend_for(["s"], k=len(ids))
    assert set(plain.items[0]) == set(ids)


def test_n_threads_blocks_equal_one_thread(model):
    sessions = _sessions(model, 200, seed=3)
    one = _replay(SessionStore(model, capacity=200, k=5, n_threads=1), sessions, 5)
    two = _replay(SessionStore(model, capacity=200, k=5, n_threads=2), sessions, 5)
    for (i1, s1), (i2, s2) in zip(one, two):
        np.testing.assert_allclose(s1, s2, rtol=1e-5, atol=1e-6)


def test_eight_threads_equal_sequential_calls(model):
    """8 threads x 1,000 step calls over 1,000 sessions (each thread owns its sessions, so
    every session's click order is fixed): the answers equal those of the same calls made one
    after another."""
    ids = model.item_index_.ids
    rng = np.random.default_rng(4)
    n_threads, n_calls = 8, 1000
    calls = []
    for t in range(n_threads):
        own = np.arange(t, 1000, n_threads)
        calls.append([(list(rng.choice(own, size=rng.integers(1, 4), replace=False)),
                       list(ids[rng.integers(len(ids), size=3)])) for _ in range(n_calls)])
    store = SessionStore(model, capacity=1000, k=5)
    got = [[None] * n_calls for _ in range(n_threads)]
    errors = []

    def work(t):
        try:
            for c, (sids, items) in enumerate(calls[t]):
                r = store.step(sids, items[:len(sids)])
                got[t][c] = (r.items, r.scores)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(n_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    seq = SessionStore(model, capacity=1000, k=5)
    for t in range(n_threads):
        for c, (sids, items) in enumerate(calls[t]):
            r = seq.step(sids, items[:len(sids)])
            np.testing.assert_array_equal(got[t][c][0], r.items)
            np.testing.assert_array_equal(got[t][c][1], r.scores)
    assert len(store) == len(seq) == 1000


# ---- eviction, end, unknown items ---------------------------------------------------------
def test_lru_eviction(model):
    ids = model.item_index_.ids
    store = SessionStore(model, capacity=3, k=5)
    fresh = SessionStore(model, capacity=3, k=5)
    for s in ("a", "b", "c"):
        store.step([s], [ids[1]])
    store.step(["a"], [ids[2]])            # a used last: b is now the least recent
    r = store.step(["d"], [ids[3]])
    assert store.session_ids() == ["c", "a", "d"] and "b" not in store
    assert r.new_session[0]
    again = store.step(["b"], [ids[4]])    # b restarts from the empty state; c evicted
    assert again.new_session[0] and "c" not in store
    np.testing.assert_array_equal(again.scores, fresh.step(["z"], [ids[4]]).scores)
    with pytest.raises(ValueError, match="capacity"):
        store.step(["p", "q", "r", "s"], [ids[1]] * 4)


def test_idle_eviction_with_a_fake_clock(model):
    ids = model.item_index_.ids
    now = [100.0]
    store = SessionStore(model, capacity=10, idle_timeout_s=30, clock=lambda: now[0])
    store.step(["a", "b"], [ids[1], ids[2]])
    now[0] = 120.0
    store.recommend_for(["a"])             # using a session keeps it alive
    now[0] = 140.0
    assert store.evict_idle() == 1 and store.session_ids() == ["a"]
    now[0] = 151.0
    r = store.step(["a"], [ids[3]])        # idle 31 s: evicted at the call, starts again
    assert r.new_session[0] and len(store) == 1


def test_end(model):
    ids = model.item_index_.ids
    store = SessionStore(model, capacity=2)
    store.step([7], [ids[1]])
    assert store.end(7) and not store.end(7) and len(store) == 0
    assert store.step([7], [ids[2]]).new_session[0]


def test_unknown_items_leave_the_state_and_are_flagged(model):
    ids = model.item_index_.ids
    store, ref = SessionStore(model, capacity=5, k=6), SessionStore(model, capacity=5, k=6)
    first = store.step(["s"], [ids[1]])
    ref.step(["s"], [ids[1]])
    for bad in (-5, 10**15, "a string", 2.5, None):
        r = store.step(["s"], [bad])
        assert r.unknown_item[0] and not r.cold[0]
        np.testing.assert_allclose(r.scores, first.scores, rtol=1e-6)
    np.testing.assert_array_equal(store.step(["s"], [ids[2]]).scores,
                                  ref.step(["s"], [ids[2]]).scores)
    mixed = SessionStore(model, capacity=5, k=6).step(["a", "b"], [ids[1], "x"])
    assert mixed.unknown_item.tolist() == [False, True]  # one bad id leaves the others known
    np.testing.assert_array_equal(mixed.scores[0], first.scores[0])
    r = store.step(["new", "s"], [-1, ids[3]])   # a new session whose first click is unknown
    assert r.unknown_item.tolist() == [True, False] and r.cold.tolist() == [True, False]
    assert np.isnan(r.scores[0]).all() and "new" in store
    r = store.step(["new"], [ids[3]])            # its first known click starts its state
    assert not r.new_session[0] and not r.cold[0]
    np.testing.assert_array_equal(r.scores, ref.step(["other"], [ids[3]]).scores)


def test_bad_calls_raise_clear_errors(model):
    store = SessionStore(model, capacity=2)
    with pytest.raises(ValueError, match="one length"):
        store.step([1, 2], [model.item_index_.ids[0]])
    with pytest.raises(ValueError, match="k must be"):
        store.step([1], [model.item_index_.ids[0]], k=0)
    with pytest.raises(ValueError, match="hashable"):
        store.step([[1]], [model.item_index_.ids[0]])
    with pytest.raises(ValueError, match="capacity"):
        SessionStore(model, capacity=0)
    with pytest.raises(ValueError, match="idle_timeout_s"):
        SessionStore(model, idle_timeout_s=-1)


# ---- snapshots ------------------------------------------------------------------------------
def test_snapshot_round_trip(model2, tmp_path):
    m = model2
    now = [50.0]
    sessions = _sessions(m, 30, seed=5)
    store = SessionStore(m, capacity=40, idle_timeout_s=100, k=7, clock=lambda: now[0])
    _replay(store, sessions, 7, exclude_seen=True)
    store.step([999], [-1])  # a cold session survives too
    now[0] = 80.0
    path = tmp_path / "sessions.npz"
    store.save(path)
    back = SessionStore.load(path, m, clock=lambda: now[0])
    assert back.session_ids() == store.session_ids()
    assert (back.capacity, back.idle_timeout_s, back.k) == (40, 100.0, 7)
    sids = list(range(30))
    for excl in (False, True):
        a, b = store.recommend_for(sids, exclude_seen=excl), back.recommend_for(sids,
                                                                                exclude_seen=excl)
        np.testing.assert_array_equal(a.items, b.items)
        np.testing.assert_array_equal(a.scores, b.scores)
    nxt = [s[0] for s in sessions]
    a, b = store.step(sids, nxt, exclude_seen=True), back.step(sids, nxt, exclude_seen=True)
    np.testing.assert_array_equal(a.scores, b.scores)
    assert 999 in back  # (recommend_for would mark it used)
    now[0] = 151.0  # 999 was last used at 50 s: its idle time carries over the restart
    assert back.evict_idle() == 1 and 999 not in back


def test_snapshot_refuses_files_that_do_not_fit(model, model2, tmp_path):
    ids = model.item_index_.ids
    store = SessionStore(model, capacity=4)
    store.step([1, 2], [ids[1], ids[2]])
    path = tmp_path / "s.npz"
    store.save(path)
    with pytest.raises(ValueError, match="width"):
        SessionStore.load(path, model2)
    with pytest.raises(ValueError, match="fit capacity"):
        SessionStore.load(path, model, capacity=1)
    other = SessionGRU(**dict(model.get_params(), random_state=5)).fit(_events())
    with pytest.warns(UserWarning, match="parameters differ"):
        SessionStore.load(path, other)
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    cases = {"last_item": np.array([0, 10**6]), "state": arrays["state"][:1],
             "seen_indices": np.array([-1, 0])}
    for name, value in cases.items():
        bad = tmp_path / f"bad_{name}.npz"
        np.savez(bad, **dict(arrays, **{name: value}))
        with pytest.raises(ValueError, match=name):
            SessionStore.load(bad, model)
    (tmp_path / "empty.npz").write_bytes(b"")
    (tmp_path / "trunc.npz").write_bytes(path.read_bytes()[:100])
    for p in (tmp_path / "empty.npz", tmp_path / "trunc.npz", tmp_path, tmp_path / "none.npz"):
        with pytest.raises(ValueError, match="snapshot|no such file|directory"):
            SessionStore.load(p, model)
    model_file = tmp_path / "model.npz"
    model.save(model_file)
    with pytest.raises(ValueError, match="not a session store snapshot"):
        SessionStore.load(model_file, model)


@pytest.mark.parametrize("name", ["gru_v1", "user_v1"])
def test_snapshot_of_format_version_1_still_loads(name):
    """Snapshots written by the release before context snapshots (08a3000, format version 1;
    tests/fixtures/snapshots/make_fixtures.py) load and answer as that release did."""
    import os
    HERE = os.path.join(os.path.dirname(__file__), "fixtures", "snapshots")
    import json
    with np.load(os.path.join(HERE, name + ".npz")) as f:
        assert json.loads(bytes(f["header"]).decode())["format_version"] == 1
    model = SessionGRU.load(os.path.join(HERE, name + ".model.npz"))
    store = SessionStore.load(os.path.join(HERE, name + ".npz"), model, n_threads=1)
    with np.load(os.path.join(HERE, name + ".answers.npz")) as f:
        want = {k: f[k] for k in f.files}
    assert store.session_ids() == want["live"].tolist()
    a = store.recommend_for(store.session_ids())
    np.testing.assert_array_equal(a.items, want["items"])
    np.testing.assert_allclose(a.scores, want["scores"], rtol=1e-6)
    b = store.step(want["next_sessions"].tolist(), want["next_clicks"])
    np.testing.assert_array_equal(b.items, want["next_items"])
    np.testing.assert_allclose(b.scores, want["next_scores"], rtol=1e-6)


# ---- scorers built once ---------------------------------------------------------------------
def test_scorers_share_item_tables_until_params_change(model):
    import copy
    m = copy.deepcopy(model)
    a, b = m.scorer(), m.scorer()
    assert a.output is b.output and a.net is b.net and a is not b
    sessions = _sessions(m, 10, seed=6)
    before = m.predict_next(sessions)
    np.testing.assert_array_equal(before, m.predict_next(sessions))
    m.params_ = dict(m.params_, By=m.params_["By"] + 1.0)  # a new dict: rebuilt
    assert m.scorer().output is not a.output
    np.testing.assert_allclose(m.predict_next(sessions), before + 1.0, rtol=1e-5, atol=1e-5)
    fresh = m._build_scorer()
    np.testing.assert_array_equal(m._predict_next(fresh, [m.item_index_.to_index(s)
                                                          for s in sessions]),
                                  m.predict_next(sessions))


def test_scores_in_fit_callbacks_follow_the_epochs():
    """The CPU trainer updates the parameters in place: each epoch's recommend must see them."""
    data = _events(200, seed=8)
    got = []
    m = SessionGRU(layers=[8], n_epochs=3, batch_size=16, n_sample=16, n_threads=1,
                   random_state=3)

    def callback(epoch, elapsed, loss):
        ids = m.item_index_.ids
        got.append((m.recommend([ids[1], ids[2]], k=5)[1],
                    m._recommend(m._build_scorer(), m.item_index_.to_index([ids[1], ids[2]]),
                                 5, None)[1]))
    m.fit(data, callback=callback)
    for cached, fresh in got:
        np.testing.assert_array_equal(cached, fresh)
    assert not np.array_equal(got[0][0], got[-1][0])


def test_concurrent_recommend_calls(model):
    sessions = _sessions(model, 40, seed=9)
    want = [model.recommend(s, k=5) for s in sessions]
    out = [None] * len(sessions)

    def work(j):
        out[j] = model.recommend(sessions[j], k=5)
    threads = [threading.Thread(target=work, args=(j,)) for j in range(len(sessions))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for (wi, ws), (gi, gs) in zip(want, out):
        np.testing.assert_array_equal(wi, gi)
        np.testing.assert_array_equal(ws, gs)


# ---- similar items --------------------------------------------------------------------------
def _cosine_reference(Wy, q, k):
    W = Wy.astype(np.float64)
    n = np.linalg.norm(W, axis=1)
    S = (W[q] @ W.T) / np.maximum(np.outer(n[q], n), 1e-30)
    S[np.arange(len(q)), q] = -np.inf
    order = np.argsort(-S, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(S, order, axis=1)


def test_similar_items_against_numpy_cosine(model):
    ids = model.item_index_.ids
    q = np.array([0, 5, 17, 5])
    got_ids, got = model.similar_items(ids[q], k=10)
    order, want = _cosine_reference(model.params_["Wy"], q, 10)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert got_ids.shape == (4, 10)
    for r in range(4):
        assert ids[q[r]] not in got_ids[r]
        # the reference's order up to near-ties
        assert (got_ids[r] == ids[order[r]]).mean() >= 0.8
    one_ids, one = model.similar_items(ids[5], k=3)
    assert one_ids.shape == (3,)
    np.testing.assert_allclose(one, got[1][:3], rtol=1e-6)
    all_ids, _ = model.similar_items(ids[5], k=10_000)
    assert len(all_ids) == len(ids) - 1 and ids[5] not in all_ids


def test_similar_items_unknown_ids(model):
    ids = model.item_index_.ids
    with pytest.raises(KeyError, match=r"\[-3, 'nope'\]"):
        model.similar_items(np.array([ids[0], -3, "nope"], dtype=object))
    with pytest.raises(ValueError, match="k must"):
        model.similar_items(ids[0], k=0)


# ---- FeatureSessionGRU: new items clicked in live sessions -------------------------------------
def test_feature_model_new_items_through_the_store(tmp_path):
    from gru_engine.feature_model import FeatureSessionGRU
    from gru_engine.features import CategoricalFeatures, DenseFeatures
    data = _events(300, seed=10)
    ids = np.unique(data["ItemId"])
    rng = np.random.default_rng(0)
    vec = rng.normal(size=(len(ids), 5))
    feats = {"vec": DenseFeatures(ids, vec, project=3),
             "cat": CategoricalFeatures(ids, np.arange(len(ids)) % 5, dim=3)}
    m = FeatureSessionGRU(layers=[8], n_epochs=1, batch_size=16, n_sample=16, n_threads=1,
                          random_state=0).fit(data, item_features=feats)
    new = {"vec": DenseFeatures([7, 8], rng.normal(size=(2, 5))),
           "cat": CategoricalFeatures([7, 8], [1, 2])}
    sessions = [[ids[1], 7, ids[2]], [8], [ids[3], ids[4]], [8, 7, 7]]
    want = m.predict_next(sessions, item_features=new)
    store = SessionStore(m, capacity=10, k=5)
    for t in range(3):
        live = [j for j, s in enumerate(sessions) if len(s) > t]
        r = store.step(live, [sessions[j][t] for j in live],
                       item_features=new if t < 2 else None)  # 7 (clicked at t=1) is kept
        assert not r.unknown_item.any()
    got = store.recommend_for(list(range(4)))
    wi, wv = top_k(want, 5)
    np.testing.assert_allclose(got.scores, wv, rtol=1e-5, atol=1e-6)
    assert store.step([0], [9]).unknown_item[0]  # no features given: unknown
    path = tmp_path / "f.npz"
    store.save(path)
    back = SessionStore.load(path, m)
    np.testing.assert_array_equal(back.recommend_for(list(range(4))).scores,
                                  store.recommend_for(list(range(4))).scores)
    np.testing.assert_array_equal(back.step([1], [7]).scores, store.step([1], [7]).scores)
    # recommend with new items reuses the output layer of the cached scorer
    sc = shared_scorer(m)
    from gru_engine.network import with_new_items
    assert m.scorer(with_new_items(m.params_, m.n_items_, store._new_bags, True)).output \
        is sc.output


# ---- advance, and the fused top-k of the CPU store ---------------------------------------------
def _rounds(store, sessions, call, **kw):
    """Click t of every session in round t (sessions of one length: every round holds every
    session, in one order); returns the last round's answer."""
    sids = list(range(len(sessions)))
    for t in range(len(sessions[0])):
        r = getattr(store, call)(sids, [s[t] for s in sessions], **kw)
    return r


@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("exclude_seen", [False, True])
def test_advance_then_recommend_for_equals_step(model, n_threads, exclude_seen):
    """advance moves the sessions as step does (bit for bit: same calls, same batches), and
    recommend_for afterwards gives step's answer; the next step agrees too."""
    rng = np.random.default_rng(30 + n_threads)
    ids = model.item_index_.ids
    sessions = [list(ids[rng.integers(len(ids), size=4)]) for _ in range(70)]
    a = SessionStore(model, capacity=80, k=7, n_threads=n_threads)
    b = SessionStore(model, capacity=80, k=7, n_threads=n_threads)
    want = _rounds(a, sessions, "step", exclude_seen=exclude_seen)
    adv = _rounds(b, sessions, "advance")
    assert not adv.unknown_item.any() and not adv.new_session.any()
    np.testing.assert_array_equal(b._slots.host(np.arange(80))[0], a._slots.host(np.arange(80))[0])
    got = b.recommend_for(list(range(70)), exclude_seen=exclude_seen)
    np.testing.assert_array_equal(got.items, want.items)
    np.testing.assert_array_equal(got.scores, want.scores)
    assert not got.cold.any()
    nxt = list(ids[rng.integers(len(ids), size=70)])
    for x, y in zip(a.step(list(range(70)), nxt), b.step(list(range(70)), nxt)):
        np.testing.assert_array_equal(x, y)


def test_advance_bookkeeping(model):
    """advance: new sessions, unknown items (state unchanged) and seen items as step."""
    ids = model.item_index_.ids
    store = SessionStore(model, capacity=4, k=5)
    r = store.advance(["a", "b", "a"], [ids[1], "nope", ids[2]])
    assert r.new_session.tolist() == [True, True, False]
    assert r.unknown_item.tolist() == [False, True, False]
    assert store.recommend_for(["b"]).cold[0]  # no known click yet
    assert len(store) == 2 and store._live["a"].n_clicks == 2 and store._live["a"].seen == {1, 2}
    ref = SessionStore(model, capacity=4, k=5)
    ref.step(["a"], [ids[1]])
    last = ref.step(["a"], [ids[2]], exclude_seen=True)
    got = store.recommend_for(["a"], exclude_seen=True)
    np.testing.assert_array_equal(got.items, last.items)
    np.testing.assert_array_equal(got.scores, last.scores)
    with pytest.raises(ValueError, match="one length"):
        store.advance(["a", "b"], [ids[1]])


@pytest.mark.parametrize("k", [5, N_ITEMS - 3])  # the kernel's sorted rows / its heap rows
def test_store_top_k_equals_scores_then_top_k(model, k):
    """The store's answers (fused kernel where the CPU has it) equal scoring every item with the
    scorer's ``score`` for the same slots and batches, masking the seen items with -inf and
    taking top_k: same items, same float32 bits, ties to the lower index; the fused tile ran."""
    from gru_engine.ranking import panel_path, panels_available
    rng = np.random.default_rng(40)
    ids = model.item_index_.ids
    store = SessionStore(model, capacity=64, k=k, n_threads=1)
    ref = model.scorer()
    ref.begin(64)
    counts0 = store._slots.scorer.output.path_counts.copy()
    seen = {}
    for t in range(4):
        sids = sorted(rng.choice(50, 40, replace=False).tolist())
        clicks = ids[rng.integers(len(ids), size=40)]
        new = np.array([sid not in store for sid in sids])
        r = store.step(sids, clicks, exclude_seen=t % 2 == 1)
        rows = np.array([store._live[sid].slot for sid in sids], np.int64)
        S = ref.score(rows, model.item_index_.lookup(clicks).astype(np.int32), new).copy()
        for i, (sid, c) in enumerate(zip(sids, clicks)):
            seen.setdefault(sid, set()).add(int(model.item_index_.lookup([c])[0]))
            if t % 2 == 1:
                S[i, sorted(seen[sid])] = -np.inf
        want_idx, want_val = top_k(S, k)
        np.testing.assert_array_equal(r.items, ids[want_idx])
        np.testing.assert_array_equal(r.scores.view(np.int32), want_val.view(np.int32))
    if panels_available():
        assert (store._slots.scorer.output.path_counts - counts0)[panel_path()] >= 8


def test_blas_one_thread_limits_and_restores(model):
    """Inside (nested too): every BLAS at one thread; after: as before; store calls too."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    from gru_engine.threads import blas_one_thread
    store = SessionStore(model, capacity=4, k=5)  # its scorer's BLAS is loaded
    blas = lambda: [i["num_threads"] for i in threadpoolctl.threadpool_info()
                    if i["user_api"] == "blas"]
    before = blas()
    with blas_one_thread():
        assert set(blas()) == {1}
        with blas_one_thread():
            assert set(blas()) == {1}
        assert set(blas()) == {1}
    assert blas() == before
    store.step(["a"], [model.item_index_.ids[1]])
    store.advance(["a", "b"], model.item_index_.ids[[2, 3]])
    assert blas() == before


# ---- CUDA (the kernels in the CPU emulator) -------------------------------------------------
def test_cuda_store_equals_cpu_store(model, cuda_model, tmp_path):
    """A model scoring on CUDA (here: the CPU-fitted parameters with ``device_='cuda'``, run by
    the emulator) gives the CPU store's answers; similar_items on the device too."""
    import copy
    try:
        from gru_engine.backends.cuda import Scorer  # noqa: F401
    except ImportError as e:  # pragma: no cover
        pytest.skip(f"the CUDA backend's Scorer is not available: {e}")
    gpu = copy.deepcopy(model)
    gpu.device_ = "cuda"
    cpu = model
    sessions = _sessions(gpu, 12, seed=12, max_len=4)
    gs, cs = SessionStore(gpu, capacity=12, k=5), SessionStore(cpu, capacity=12, k=5)
    assert gs.cuda and not cs.cuda
    for excl in (False, True):
        for (gi, gv), (ci, cv) in zip(_replay(gs, sessions, 5, exclude_seen=excl),
                                      _replay(cs, sessions, 5, exclude_seen=excl)):
            np.testing.assert_allclose(gv, cv, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(gs.recommend_for(list(range(12))).scores,
                               cs.recommend_for(list(range(12))).scores, rtol=1e-5, atol=1e-5)
    path = tmp_path / "gpu_sessions.npz"
    gs.save(path)  # device states to the file and back, and onto the CPU
    for other, tol in ((SessionStore.load(path, gpu), 0), (SessionStore.load(path, cpu), 1e-5)):
        np.testing.assert_allclose(other.recommend_for(list(range(12))).scores,
                                   gs.recommend_for(list(range(12))).scores, rtol=tol, atol=tol)
    r = gs.step([0, 99], [-1, -1])  # unknown items on the device path too
    assert r.unknown_item.all() and r.cold.tolist() == [False, True]
    ids, scores = gpu.similar_items(gpu.item_index_.ids[:4], k=6)
    cids, cscores = cpu.similar_items(cpu.item_index_.ids[:4], k=6)
    np.testing.assert_allclose(scores, cscores, rtol=1e-5, atol=1e-6)
    assert (ids == cids).mean() >= 0.8


def test_cuda_feature_store_new_items_equal_cpu(cuda_model):
    """FeatureSessionGRU on the (emulated) device: new items with features through the store."""
    import copy
    from gru_engine.feature_model import FeatureSessionGRU
    from gru_engine.features import CategoricalFeatures, DenseFeatures
    data = _events(300, seed=10)
    ids = np.unique(data["ItemId"])
    rng = np.random.default_rng(0)
    feats = {"vec": DenseFeatures(ids, rng.normal(size=(len(ids), 5)), project=3),
             "cat": CategoricalFeatures(ids, np.arange(len(ids)) % 5, dim=3)}
    cpu = FeatureSessionGRU(layers=[8], n_epochs=1, batch_size=16, n_sample=16, n_threads=1,
                            random_state=0).fit(data, item_features=feats)
    gpu = copy.deepcopy(cpu)
    gpu.device_ = "cuda"
    new = {"vec": DenseFeatures([7, 8], rng.normal(size=(2, 5))),
           "cat": CategoricalFeatures([7, 8], [1, 2])}
    a, b = SessionStore(cpu, capacity=4), SessionStore(gpu, capacity=4)
    assert b.cuda
    for sids, clicks in (([0, 1], [ids[1], 8]), ([0, 1], [7, ids[2]]), ([0], [ids[3]])):
        ra, rb = (s.step(sids, clicks, item_features=new) for s in (a, b))
        assert not ra.unknown_item.any() and not rb.unknown_item.any()
        np.testing.assert_allclose(rb.scores, ra.scores, rtol=1e-5, atol=1e-5)


def test_cuda_advance_and_topk_with_exclusions(model, cuda_model):
    """CUDA scorer (emulated): advance moves the state as score does, topk with Exclusions
    (masked on the device) equals score + -inf + top_k; the CUDA store's advance then
    recommend_for equals its step."""
    import copy
    from gru_engine.ranking import Exclusions
    gpu = copy.deepcopy(model)
    gpu.device_ = "cuda"
    a, b = gpu.scorer(), gpu.scorer()
    assert not hasattr(a, "state")
    a.begin(10)
    b.begin(10)
    rng = np.random.default_rng(50)
    rows = np.arange(10, dtype=np.int64)
    n = gpu.n_items_
    for t in range(3):
        items = rng.integers(0, n, 10).astype(np.int32)
        new = np.full(10, t == 0)
        if t < 2:
            a.advance(rows, items, new)
            b.score(rows, items, new)
            continue
        ex = Exclusions([rng.choice(n, rng.integers(0, 20), replace=False) for _ in range(10)], n)
        idx, val = a.topk(rows, items, new, 12, ex)
        S = np.array(b.score(rows, items, new))
        ex.mask(S)
        want_idx, want_val = top_k(S, 12)
        np.testing.assert_array_equal(np.asarray(idx, np.int64), want_idx)
        np.testing.assert_array_equal(val, want_val)
    with pytest.raises(ValueError, match="k must be"):
        a.topk(rows, items, new, n + 1)
    sessions = _sessions(gpu, 8, seed=51, max_len=3)
    sessions = [s + s[:1] * (3 - len(s)) for s in sessions]  # one length: 3 clicks
    gs, gb = SessionStore(gpu, capacity=8, k=5), SessionStore(gpu, capacity=8, k=5)
    want = _rounds(gs, sessions, "step", exclude_seen=True)
    _rounds(gb, sessions, "advance")
    got = gb.recommend_for(list(range(8)), exclude_seen=True)
    np.testing.assert_array_equal(got.items, want.items)
    np.testing.assert_allclose(got.scores, want.scores, rtol=1e-6, atol=1e-6)

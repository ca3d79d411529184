"""Baselines: exact scores on hand-made sessions, NumPy references, scorer state, contract."""
import numpy as np
import pytest

from gru_engine.baselines import BPRMF, ItemKNN, Pop, SessionPop, _top_n_per_row
from gru_engine.exceptions import ModelFitError

ALL_MODELS = [Pop, SessionPop, ItemKNN, BPRMF]


def table(sessions):
    """Event table (dict of arrays) from a list of sessions of item ids; time = click order."""
    sid, iid, tt = [], [], []
    t = 0
    for s, items in enumerate(sessions):
        for it in items:
            sid.append(s)
            iid.append(it)
            tt.append(t)
            t += 1
    return {"SessionId": np.array(sid), "ItemId": np.array(iid), "Time": np.array(tt, dtype=float)}


def run_session(scorer, items, row=0, n_rows=1):
    """Feed one session (dense item indices) to row ``row``; scores after each click."""
    if n_rows:
        scorer.begin(n_rows)
    out = []
    for step, it in enumerate(items):
        out.append(scorer.score(np.array([row]), np.array([it], dtype=np.int32),
                                np.array([step == 0]))[0].copy())
    return out


# items 10, 20, 30, 40 get dense indices 0, 1, 2, 3 (order of first appearance)
HAND = [[10, 20], [10, 30], [10, 20, 20], [40, 20]]


def generated_clusters(n_sessions, n_clusters=8, per_cluster=12, length=6, seed=0):
    """Sessions whose items all come from one cluster of items (popularity carries no signal)."""
    rng = np.random.default_rng(seed)
    sessions = []
    for _ in range(n_sessions):
        c = rng.integers(n_clusters)
        sessions.append(list(c * per_cluster + rng.integers(0, per_cluster, size=length)))
    return sessions


# ---- POP / S-POP --------------------------------------------------------------------------
def test_pop_scores_are_training_support():
    model = Pop().fit(table(HAND))
    np.testing.assert_array_equal(model.popularity_, [3, 4, 1, 1])
    sc = model.scorer()
    sc.begin(2)
    out = sc.score(np.array([0, 1]), np.array([3, 0], dtype=np.int32), np.array([True, True]))
    np.testing.assert_array_equal(out, np.array([[3, 4, 1, 1]] * 2, dtype=np.float32))
    ids, _ = model.recommend([40], k=2)
    np.testing.assert_array_equal(ids, [20, 10])


def test_session_pop_counts_with_popularity_tie_break():
    model = SessionPop().fit(table(HAND))
    pop = np.array([3, 4, 1, 1], dtype=np.float64) / 5.0
    steps = run_session(model.scorer(), [2, 3, 2])  # clicks 30, 40, 30
    expect = [pop + [0, 0, 1, 0], pop + [0, 0, 1, 1], pop + [0, 0, 2, 1]]
    for got, want in zip(steps, expect):
        np.testing.assert_array_equal(got, want.astype(np.float32))
    # after 30, 40: item 30 (pop 1) and 40 (pop 1) tie on count and popularity; 20 beats 10
    assert steps[1][1] > steps[1][0]
    ids, _ = SessionPop().fit(table(HAND)).recommend([40, 30, 30], k=3)
    np.testing.assert_array_equal(ids, [30, 40, 20])


def test_session_pop_resets_row_and_keeps_rows_apart():
    sc = SessionPop().fit(table(HAND)).scorer()
    pop = np.array([3, 4, 1, 1], dtype=np.float32) / np.float32(5.0)
    sc.begin(2)
    sc.score(np.array([0, 1]), np.array([2, 3], dtype=np.int32), np.array([True, True]))
    out = sc.score(np.array([0, 1]), np.array([2, 3], dtype=np.int32), np.array([False, True]))
    np.testing.assert_allclose(out[0], pop + [0, 0, 2, 0])
    np.testing.assert_allclose(out[1], pop + [0, 0, 0, 1])  # new session: the old 40 is gone
    # a long session grows the history buffer beyond its initial capacity
    steps = run_session(sc, [1] * 40)
    assert steps[-1][1] == pytest.approx(40 + 0.8)


# ---- Item-KNN -----------------------------------------------------------------------------
def dense_knn_reference(sessions_idx, n_items, lam, alpha):
    x = np.zeros((len(sessions_idx), n_items))
    for s, items in enumerate(sessions_idx):
        x[s, items] = 1.0
    co = x.T @ x
    d = np.diag(co).copy()
    sim = co / (np.power(d + lam, alpha)[:, None] * np.power(d + lam, 1 - alpha)[None, :])
    np.fill_diagonal(sim, 0.0)
    return np.nan_to_num(sim)


def test_item_knn_hand_values():
    # |S_10| = 3, |S_20| = 3, |S_30| = 1, |S_40| = 1; co(10,20) = 2, co(10,30) = 1, co(20,40) = 1
    model = ItemKNN(lambda_=0.0, alpha=0.5).fit(table(HAND))
    sim = model.similarity_.toarray()
    assert sim[0, 1] == pytest.approx(2 / 3)
    assert sim[0, 2] == pytest.approx(1 / np.sqrt(3))
    assert sim[1, 3] == pytest.approx(1 / np.sqrt(3))
    assert sim[2, 3] == 0.0 and np.all(np.diag(sim) == 0.0)
    model = ItemKNN(lambda_=1.0, alpha=0.25).fit(table(HAND))
    sim = model.similarity_.toarray()
    assert sim[0, 2] == pytest.approx(1 / (4 ** 0.25 * 2 ** 0.75))
    assert sim[2, 0] == pytest.approx(1 / (2 ** 0.25 * 4 ** 0.75))
    np.testing.assert_array_equal(model.support_, [3, 3, 1, 1])


@pytest.mark.parametrize("lam,alpha", [(0.0, 0.5), (20.0, 0.5), (3.0, 0.2), (1.0, 1.0)])
def test_item_knn_matches_dense_reference(lam, alpha):
    rng = np.random.default_rng(1)
    sessions = [list(rng.integers(0, 30, size=rng.integers(2, 7))) for _ in range(200)]
    model = ItemKNN(lambda_=lam, alpha=alpha, n_neighbors=None).fit(table(sessions))
    idx = [model.item_index_.to_index(s) for s in sessions]
    ref = dense_knn_reference(idx, model.n_items_, lam, alpha)
    np.testing.assert_allclose(model.similarity_.toarray(), ref, rtol=1e-6, atol=1e-7)
    # the scorer returns the row of the LAST click, whatever came before
    steps = run_session(model.scorer(), [4, 7, 2])
    for step, it in zip(steps, [4, 7, 2]):
        np.testing.assert_allclose(step, ref[it], rtol=1e-6, atol=1e-7)


def test_item_knn_keeps_top_neighbors():
    rng = np.random.default_rng(2)
    sessions = [list(rng.integers(0, 25, size=rng.integers(2, 8))) for _ in range(150)]
    full = ItemKNN(n_neighbors=None).fit(table(sessions)).similarity_.toarray()
    top = ItemKNN(n_neighbors=5).fit(table(sessions)).similarity_.toarray()
    for i in range(full.shape[0]):
        order = np.lexsort((np.arange(full.shape[1]), -full[i]))[:5]
        order = order[full[i, order] > 0]
        want = np.zeros_like(full[i])
        want[order] = full[i, order]
        np.testing.assert_array_equal(top[i], want)


def test_top_n_kernel_breaks_ties_by_lower_index():
    indptr = np.array([0, 5, 7], dtype=np.int64)
    indices = np.array([0, 2, 3, 5, 8, 1, 4], dtype=np.int32)
    data = np.array([0.5, 0.9, 0.5, 0.5, 0.1, 1.0, 2.0], dtype=np.float32)
    p, i, d = _top_n_per_row(indptr, indices, data, 3)
    np.testing.assert_array_equal(p, [0, 3, 5])
    np.testing.assert_array_equal(i, [0, 2, 3, 1, 4])
    np.testing.assert_array_equal(d, np.array([0.5, 0.9, 0.5, 1.0, 2.0], dtype=np.float32))


# ---- BPR-MF -------------------------------------------------------------------------------
def test_bprmf_scores_are_mean_item_vector_products():
    model = BPRMF(n_factors=4, n_epochs=2, random_state=0).fit(table(HAND * 3))
    V, b = model.item_factors_, model.item_bias_
    steps = run_session(model.scorer(), [0, 2, 2])
    for t, got in enumerate(steps):
        mean = V[[0, 2, 2][:t + 1]].mean(axis=0)
        np.testing.assert_allclose(got, mean @ V.T + b, rtol=1e-5, atol=1e-6)


def test_bprmf_reset_between_sessions():
    model = BPRMF(n_factors=4, n_epochs=1, random_state=0).fit(table(HAND * 3))
    V, b = model.item_factors_, model.item_bias_
    sc = model.scorer()
    sc.begin(3)
    sc.score(np.array([2]), np.array([0], dtype=np.int32), np.array([True]))
    out = sc.score(np.array([2]), np.array([3], dtype=np.int32), np.array([True]))
    np.testing.assert_allclose(out[0], V[3] @ V.T + b, rtol=1e-5, atol=1e-6)


def test_bprmf_learns_cluster_pattern_and_beats_pop():
    train = generated_clusters(600, seed=0)
    test = generated_clusters(60, seed=1)
    bpr = BPRMF(n_factors=16, n_epochs=15, learning_rate=0.1, random_state=0).fit(table(train))
    pop = Pop().fit(table(train))
    r_bpr = bpr.evaluate(table(test), cutoffs=(12,))["recall@12"]
    r_pop = pop.evaluate(table(test), cutoffs=(12,))["recall@12"]
    assert r_pop < 0.3 and r_bpr > 0.8, (r_bpr, r_pop)


def test_evaluate_interface_on_knn():
    """Item-KNN through the shared evaluator: 'x -> partner' pairs are learned exactly."""
    train = [[2 * i, 2 * i + 1] for i in range(10)] * 3
    res = ItemKNN(lambda_=0.0).fit(table(train)).evaluate(table(train[:10]), cutoffs=(1, 20))
    assert res["n_events"] == 10 and res["recall@1"] == 1.0 and res["mrr@20"] == 1.0


def test_bprmf_is_deterministic_with_random_state():
    a = BPRMF(n_factors=8, n_epochs=2, random_state=3).fit(table(HAND * 5))
    b = BPRMF(n_factors=8, n_epochs=2, random_state=3).fit(table(HAND * 5))
    np.testing.assert_array_equal(a.item_factors_, b.item_factors_)
    assert a.loss_history_ == b.loss_history_


def test_bprmf_divergence_raises():
    with pytest.raises(ModelFitError):
        BPRMF(n_factors=8, n_epochs=3, learning_rate=1e30, random_state=0).fit(table(HAND * 5))


# ---- contract -----------------------------------------------------------------------------
@pytest.mark.parametrize("cls", ALL_MODELS)
def test_scorer_output_contract(cls):
    model = cls().fit(table(generated_clusters(50)))
    sc = model.scorer()
    sc.begin(4)
    out = sc.score(np.array([3, 1], dtype=np.int64), np.array([0, 5], dtype=np.int32),
                   np.array([True, True]))
    assert out.shape == (2, model.n_items_) and sc.n_items == model.n_items_
    assert out.dtype == np.float32 and out.flags.c_contiguous
    with pytest.raises(ValueError, match="item indices"):
        sc.score(np.array([0]), np.array([model.n_items_], dtype=np.int32), np.array([True]))
    if cls in (SessionPop, BPRMF):  # per-row state: a slot outside begin(n_rows) is refused
        for bad_row in (-1, 4):
            with pytest.raises(ValueError, match="rows must be in"):
                sc.score(np.array([bad_row]), np.array([0], dtype=np.int32), np.array([True]))


def test_set_params_changes_fit():
    model = ItemKNN().set_params(lambda_=0.0, n_neighbors=None)
    assert model.get_params() == {"lambda_": 0.0, "alpha": 0.5, "n_neighbors": None}
    assert model.fit(table(HAND)).similarity_.toarray()[0, 1] == pytest.approx(2 / 3)


@pytest.mark.parametrize("cls,params", [
    (ItemKNN, {"lambda_": -1.0}), (ItemKNN, {"alpha": 1.5}), (ItemKNN, {"alpha": float("nan")}),
    (ItemKNN, {"n_neighbors": 0}), (ItemKNN, {"n_neighbors": 2.5}), (ItemKNN, {"lambda_": "20"}),
    (BPRMF, {"n_factors": 0}), (BPRMF, {"n_epochs": 0}), (BPRMF, {"learning_rate": 0.0}),
    (BPRMF, {"lambda_item": -0.1}), (BPRMF, {"lambda_session": float("inf")}),
    (BPRMF, {"init_std": 0}), (BPRMF, {"random_state": -1}), (BPRMF, {"n_factors": True}),
])
def test_bad_hyperparameters_raise(cls, params):
    name = next(iter(params))
    with pytest.raises(ValueError, match=name):
        cls(**params).fit(table(HAND))


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_bprmf_sgd_step_is_minus_lr_times_the_finite_difference_gradient(sign):
    """One (session, positive, negative) triple through the training kernel (float64) moves
    U[s], V[p], V[q], b[p], b[q] by -lr x the gradient of the regularised BPR loss
    -log sigmoid(U_s (V_p - V_q) + b_p - b_q) + lam_u/2 |U_s|^2 + lam_i/2 (|V_p|^2 + |V_q|^2 +
    b_p^2 + b_q^2), checked by central finite differences (both branches of the stable
    log-sigmoid); every other entry stays; the kernel returns the unregularised loss."""
    from gru_engine.baselines import _bpr_epoch
    rng = np.random.default_rng(4)
    U, V, b = rng.normal(0, 0.7, (3, 4)), rng.normal(0, 0.7, (5, 4)), rng.normal(0, 0.3, 5)
    s, p, q, lr, lam_u, lam_i = 1, 2, 4, 0.05, 0.3, 0.2
    x0 = U[s] @ (V[p] - V[q]) + b[p] - b[q]
    U[s] *= sign * np.sign(x0)  # x > 0 and x < 0

    def loss():
        x = U[s] @ (V[p] - V[q]) + b[p] - b[q]
        return (np.logaddexp(0.0, -x) + lam_u / 2 * U[s] @ U[s]
                + lam_i / 2 * (V[p] @ V[p] + V[q] @ V[q] + b[p] ** 2 + b[q] ** 2))

    def num_grad(a):
        g = np.zeros_like(a)
        for k in np.ndindex(a.shape):
            old = a[k]
            a[k] = old + 1e-6
            fp = loss()
            a[k] = old - 1e-6
            fm = loss()
            a[k] = old
            g[k] = (fp - fm) / 2e-6
        return g
    want = {name: a - lr * num_grad(a) for name, a in (("U", U), ("V", V), ("b", b))}
    x = U[s] @ (V[p] - V[q]) + b[p] - b[q]
    assert np.sign(x) == sign
    triple = (np.array([s]), np.array([p], np.int32), np.array([q], np.int32))
    total = _bpr_epoch(U, V, b, *triple, lr, lam_u, lam_i)
    assert total == pytest.approx(np.logaddexp(0.0, -x), rel=1e-12)
    for name, a in (("U", U), ("V", V), ("b", b)):
        np.testing.assert_allclose(a, want[name], rtol=1e-8, atol=1e-10, err_msg=name)
    # a negative equal to the positive is skipped: nothing moves
    before = [a.copy() for a in (U, V, b)]
    assert _bpr_epoch(U, V, b, np.array([s]), np.array([p], np.int32), np.array([p], np.int32),
                      lr, lam_u, lam_i) == 0.0
    for a, old in zip((U, V, b), before):
        np.testing.assert_array_equal(a, old)

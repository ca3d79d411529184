"""SKNN, V-SKNN, STAN, VSTAN: the Numba kernel against a slow, obvious Python reference."""
import math

import numpy as np
import pytest

from gru_engine.exceptions import NotFittedError
from gru_engine.neighbors import SKNN, STAN, VSKNN, VSTAN

DAY = 86400.0


def generated(n_sessions=300, n_items=40, seed=0):
    """Random sessions (repeats allowed) over a few item clusters; times in seconds, spread
    over ~20 days with ties between sessions' last times."""
    rng = np.random.default_rng(seed)
    sid, iid, tt = [], [], []
    for s in range(n_sessions):
        length = int(rng.integers(1, 8))
        c = rng.integers(4)
        start = float(rng.integers(0, 20)) * DAY + float(rng.integers(0, 3)) * 3600
        for t in range(length):
            it = int(c * 10 + rng.integers(0, 10)) if rng.random() < 0.8 else int(rng.integers(n_items))
            sid.append(s)
            iid.append(it)
            tt.append(start + t)
    return {"SessionId": np.array(sid), "ItemId": np.array(iid), "Time": np.array(tt)}


# ---- the reference: dicts and sets, one prediction at a time --------------------------------
def _weight(kind, p, L, lam=None):
    return {"same": 1.0, "div": p / L, "linear": max(0.0, 1 - 0.1 * (L - p)),
            "quadratic": (p / L) ** 2, "log": 1 / math.log10(L - p + 1.7),
            "exp": math.exp(-(L - p) / lam) if lam else 1.0}[kind]


def _step(kind, step):
    return {"same": 1.0, "div": 1 / step, "linear": max(0.0, 1 - 0.1 * step),
            "quadratic": 1 / step ** 2, "log": 1 / math.log10(step + 1.7)}[kind]


def reference_scores(model, clicks):
    """Scores (n_items,) of every item after the clicks (dense indices) of one session."""
    ix = model.index_
    n_items = model.n_items_
    # training sessions back from the index's CSR (rank -> {item: last position}), by rank
    sessions = [dict(zip(ix.sess_items[ix.sess_ptr[r]:ix.sess_ptr[r + 1]].tolist(),
                         ix.sess_lastpos[ix.sess_ptr[r]:ix.sess_ptr[r + 1]].tolist()))
                for r in range(ix.n_sessions)]
    L = len(clicks)
    last = {it: p + 1 for p, it in enumerate(clicks)}
    name = type(model).__name__
    if name == "SKNN":
        w = {i: 1.0 for i in last}
    elif name == "VSKNN":
        w = {i: _weight(model.weighting, p, L) for i, p in last.items()}
    else:
        w = {i: _weight("exp", p, L, model.lambda_spw) for i, p in last.items()}
    # the most recent (lowest rank) sessions sharing an item; rank is the recency order
    rel = sorted(r for r, s in enumerate(sessions) if set(s) & set(last))
    if model.sample_size:
        rel = rel[:model.sample_size]
    sims = []
    for r in rel:
        shared = set(sessions[r]) & set(last)
        if name == "VSKNN":
            sim = sum(w[i] for i in sorted(shared)) / len(last)
        else:  # sums in item order, as the kernel, so that exact ties stay ties
            sim = sum(w[i] for i in sorted(shared)) / (
                math.sqrt(sum(w[i] * w[i] for i in sorted(w))) * math.sqrt(len(sessions[r])))
        if name in ("STAN", "VSTAN") and model.lambda_snh:
            sim *= math.exp(-ix.sess_age[r] / (model.lambda_snh * DAY))
        sims.append((sim, r))
    sims.sort(key=lambda x: (-x[0], x[1]))
    neigh = [(s, r) for s, r in sims[:model.k] if s > 0]
    out = np.zeros(n_items)
    for sim, r in neigh:
        n = sessions[r]
        istar = max((i for i in n if i in last), key=lambda i: last[i])
        for i, p in n.items():
            if not getattr(model, "remind", True) and i in last:
                continue
            v = sim
            if name == "VSKNN":
                v *= _step(model.weighting_score, L - last[istar] + 1)
                v *= 1 + model.idf_weighting * ix.idf[i]
            if name in ("STAN", "VSTAN") and model.lambda_inh:
                v *= math.exp(-abs(p - n[istar]) / model.lambda_inh)
            if name == "VSTAN":
                if model.lambda_ipw:
                    v *= math.exp(-(L - last[istar]) / model.lambda_ipw)
                if model.lambda_idf:
                    v *= 1 + model.lambda_idf * ix.idf[i]
            out[i] += v
    return out


MODELS = [
    SKNN(k=7, sample_size=25),
    SKNN(k=500, sample_size=0),
    VSKNN(k=9, sample_size=30),
    VSKNN(k=5, sample_size=0, weighting="quadratic", weighting_score="log", idf_weighting=2.0,
          remind=False),
    VSKNN(k=6, sample_size=40, weighting="linear", weighting_score="quadratic"),
    STAN(k=8, sample_size=30),
    STAN(k=8, sample_size=0, lambda_spw=None, lambda_snh=None, lambda_inh=None, remind=False),
    VSTAN(k=10, sample_size=35),
    VSTAN(k=4, sample_size=20, lambda_spw=3.0, lambda_snh=2.0, lambda_inh=0.7, lambda_ipw=2.0,
          lambda_idf=0.0),
]


@pytest.mark.parametrize("model", MODELS, ids=lambda m: repr(m))
def test_kernel_matches_reference(model):
    train = generated()
    model.fit(train)
    rng = np.random.default_rng(5)
    sc = model.scorer()
    sc.begin(4)
    # four interleaved sessions in four slots, restarted once, against the reference
    hist = {r: [] for r in range(4)}
    for step in range(14):
        rows = np.array([r for r in range(4) if (step + r) % 3 != 0])
        new = np.array([step == 7 and r == 1 or not hist[r] for r in rows])
        items = rng.integers(0, model.n_items_, size=len(rows)).astype(np.int32)
        out = sc.score(rows, items, new).copy()
        for i, r in enumerate(rows):
            if new[i]:
                hist[r] = []
            hist[r].append(int(items[i]))
            want = reference_scores(model, hist[r])
            np.testing.assert_allclose(out[i], want, rtol=2e-5, atol=1e-7)


def test_sample_size_keeps_most_recent_sessions():
    # item 1 in three sessions with last times 10 < 20 < 30; sample_size=1 keeps only the
    # latest one, whose other item (4) is then the only candidate besides item 1 itself
    train = {"SessionId": np.array([0, 0, 1, 1, 2, 2]), "ItemId": np.array([1, 2, 1, 3, 1, 4]),
             "Time": np.array([9, 10, 19, 20, 29, 30.0])}
    model = SKNN(k=5, sample_size=1).fit(train)
    ids, scores = model.recommend([1], k=4)
    assert set(ids[scores > 0]) == {1, 4}
    ids, scores = SKNN(k=5, sample_size=0).fit(train).recommend([1], k=4)
    assert set(ids[scores > 0]) == {1, 2, 3, 4}


def test_unrelated_sessions_change_nothing():
    # a block of sessions over other items: never a candidate, so the same neighbours and the
    # same scores up to the common recency factor (the last training time moves)
    train = generated(n_sessions=200)
    other = generated(n_sessions=2000, seed=3)
    big = {"SessionId": np.r_[train["SessionId"], other["SessionId"] + 1000],
           "ItemId": np.r_[train["ItemId"], other["ItemId"] + 1000],
           "Time": np.r_[train["Time"], other["Time"] + 3 * DAY]}
    a = STAN(k=20, sample_size=50).fit(train)
    b = STAN(k=20, sample_size=50).fit(big)
    ids_a, s_a = a.recommend([3, 5, 3], k=15)
    ids_b, s_b = b.recommend([3, 5, 3], k=15)
    np.testing.assert_array_equal(ids_a, ids_b)
    np.testing.assert_allclose(s_b / s_a, s_b[0] / s_a[0], rtol=1e-5)
    assert s_b[0] / s_a[0] < 1  # the neighbours are 3 days older relative to the new end


def test_evaluate_recommend_and_contract():
    train = generated()
    test = generated(n_sessions=40, seed=9)
    for cls in (SKNN, VSKNN, STAN, VSTAN):
        model = cls()
        with pytest.raises(NotFittedError):
            model.scorer()
        res = model.fit(train).evaluate(test, cutoffs=(5, 20))
        assert 0 < res["recall@20"] <= 1 and res["n_events"] > 0
        assert res["recall@20"] > 0.6  # clustered sessions: far above random (20/40 = 0.5)
        ids, scores = model.recommend([3, 4], k=5)
        assert len(ids) == 5 and np.all(np.diff(scores) <= 0)
        assert model.get_params() == cls(**model.get_params()).get_params()


@pytest.mark.parametrize("params, bad", [
    (dict(k=0), "k"), (dict(sample_size=-1), "sample_size"), (dict(k=2.5), "k"),
])
def test_bad_common_parameters_name_the_parameter(params, bad):
    for cls in (SKNN, VSKNN, STAN, VSTAN):
        with pytest.raises(ValueError, match=bad):
            cls(**params).fit(generated(n_sessions=20))


@pytest.mark.parametrize("cls, params, bad", [
    (VSKNN, dict(weighting="cubic"), "weighting"),
    (VSKNN, dict(weighting_score="x"), "weighting_score"),
    (VSKNN, dict(idf_weighting=-1), "idf_weighting"),
    (STAN, dict(lambda_spw=0), "lambda_spw"),
    (STAN, dict(lambda_snh=-2), "lambda_snh"),
    (STAN, dict(remind="yes"), "remind"),
    (VSTAN, dict(lambda_ipw=0), "lambda_ipw"),
    (VSTAN, dict(lambda_idf=-1), "lambda_idf"),
])
def test_bad_model_parameters_name_the_parameter(cls, params, bad):
    model = cls(**params)
    with pytest.raises(ValueError, match=bad):
        model.fit(generated(n_sessions=20))
    assert not hasattr(model, "index_")

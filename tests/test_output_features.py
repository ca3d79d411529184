"""Output features (FeatureSessionGRU(output_features=True)): step gradients in float64 against
finite differences, scoring against the effective output matrix, new items (add_items),
save/load, recommend and the session store, defaults unchanged, errors."""
import numpy as np
import pytest

from gru_engine import params as hp
from gru_engine.backends.cpu import Trainer
from gru_engine.data import ItemIndex
from gru_engine.feature_model import FeatureSessionGRU
from gru_engine.features import CategoricalFeatures, DenseFeatures, encode_item_features
from gru_engine.network import PARAM_KEYS, build_layout
from gru_engine.output_features import OUTPUT_KEYS, build, effective_output, merge_bags

from test_feature_model import N_ITEMS, _check_gradients, _features, make_cluster_data


def _trainer(arch, combine, kinds, seed=0, loss="cross-entropy"):
    rng = np.random.default_rng(seed)
    index = ItemIndex(np.arange(N_ITEMS) + 100)
    enc = encode_item_features(_features(kinds), index)
    lay = build_layout(N_ITEMS, arch, combine, "constrained", [5], 3, [5], enc, rng, np.float64)
    params = {k: lay[k] for k in PARAM_KEYS}
    params.update(build(enc, N_ITEMS, lay["Hc"], np.float64))
    params["Wy"] *= 3
    params["Fy"][...] = rng.normal(size=params["Fy"].shape)
    params["Fb"][...] = rng.normal(size=params["Fb"].shape)
    ce = loss == "cross-entropy"
    hy = hp.hyper(hp.validate(dict(hp.DEFAULTS, loss=loss, logq=1.0 if ce else 0.0,
                                   elu_param=1.0 if loss == "bpr-max" else 0.0, bpreg=0.5,
                                   batch_size=4, n_sample=3, sample_store_size=100)))
    tr = Trainer(params, hy, rng.integers(1, 10, N_ITEMS), sum_mode=combine == "sum")
    wk = tr.work
    wk.HP[:] = rng.normal(size=wk.HP.shape) * 0.5
    tr.out.lq[:] = rng.normal(size=tr.out.lq.shape)
    return tr, params, rng


def _fd_output(tr, params, rng, eps=1e-6):
    """(fd, analytic) of Fy and Fb, and the other blocks' errors of _check_gradients."""
    in_items = rng.integers(0, N_ITEMS, 4).astype(np.int32)
    cols = np.concatenate([rng.integers(0, N_ITEMS, 4), rng.integers(0, N_ITEMS, 3)]).astype(
        np.int32)
    _, grads = tr.forward_backward(in_items, 4, cols, len(cols))
    out = {}
    for key in ("Fy", "Fb"):
        p = params[key]
        fd = np.zeros_like(p)
        for k in range(p.size):
            old = p.flat[k]
            p.flat[k] = old + eps
            lp, _ = tr.forward_backward(in_items, 4, cols, len(cols))
            p.flat[k] = old - eps
            lm, _ = tr.forward_backward(in_items, 4, cols, len(cols))
            p.flat[k] = old
            fd.flat[k] = (lp - lm) / (2 * eps)
        out[key] = (fd, grads[key])
    return out


def _rel(fd, an):
    denom = np.linalg.norm(fd) + np.linalg.norm(an)
    assert denom > 0
    return np.linalg.norm(fd - an) / denom


@pytest.mark.parametrize("kinds,arch,combine", [(["multi"], "parallel", "concat"),
                                                (["cat", "dense"], "parallel", "sum"),
                                                (["tok", "proj"], "feature", "concat")])
@pytest.mark.parametrize("loss", ["cross-entropy", "bpr-max"])
def test_gradients_match_finite_differences(kinds, arch, combine, loss):
    tr, params, rng = _trainer(arch, combine, kinds, loss=loss)
    for key, (fd, an) in _fd_output(tr, params, rng).items():
        assert _rel(fd, an) < 1e-6, key
    # the rest of the network's gradients with the feature rows in the output vectors
    for key, (fd, an) in _check_gradients(tr, params, np.random.default_rng(5)).items():
        if np.any(fd) or np.any(an):
            assert _rel(fd, an) < 1e-6, key


def test_effective_output_pools_the_bags():
    index = ItemIndex(np.arange(N_ITEMS) + 100)
    enc = encode_item_features(_features(["multi", "dense"]), index)
    of = build(enc, N_ITEMS, 4)
    rng = np.random.default_rng(0)
    params = dict(of, Wy=rng.normal(size=(N_ITEMS, 4)), By=rng.normal(size=N_ITEMS))
    params["Fy"] = rng.normal(size=of["Fy"].shape)
    params["Fb"] = rng.normal(size=of["Fb"].shape)
    Wy, By = effective_output(params)
    rows0 = enc[0].n_rows
    for i in range(N_ITEMS):
        want, wb = params["Wy"][i].copy(), params["By"][i]
        for e, off in ((enc[0], 0), (enc[1], rows0)):
            for j in range(e.indptr[i], e.indptr[i + 1]):
                want += e.weights[j] * params["Fy"][off + e.indices[j]]
                wb += e.weights[j] * params["Fb"][off + e.indices[j]]
        np.testing.assert_allclose(Wy[i], want, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(By[i], wb, rtol=1e-6, atol=1e-6)


def test_merge_bags_orders_sources_per_item():
    a = (np.array([0, 1, 1, 3]), np.array([0, 1, 2]), np.array([1., 2., 3.]))
    b = (np.array([0, 0, 2, 3]), np.array([0, 1, 1]), np.array([4., 5., 6.]))
    ip, ind, w = merge_bags([a, b], [3, 2], 3)
    assert list(ip) == [0, 1, 3, 6]
    assert list(ind) == [0, 3, 4, 1, 2, 4]
    assert list(w) == [1, 4, 5, 2, 3, 6]


# ---- fitted models ----------------------------------------------------------------------------
def _data(n_items=300, n_sessions=300, seed=3):
    events, signal, _ = make_cluster_data(n_items=n_items, n_clusters=30, n_sessions=n_sessions,
                                          seed=seed)
    clusters = np.argmax(signal @ np.random.default_rng(0).normal(size=(8, 30)), axis=1)
    feats = {"cat": CategoricalFeatures(np.arange(n_items), clusters, dim=4),
             "vec": DenseFeatures(np.arange(n_items), signal)}
    return events, feats


SMALL = dict(layers=[8], n_epochs=2, batch_size=16, n_sample=16, random_state=0, n_threads=1)


@pytest.mark.parametrize("arch,combine,strategy", [("parallel", "concat", "simultaneous"),
                                                   ("parallel", "sum", "alternating"),
                                                   ("parallel", "concat", "residual"),
                                                   ("feature", "concat", "interleaved")])
def test_fit_trains_feature_rows_and_scores_with_them(arch, combine, strategy):
    events, feats = _data()
    m = FeatureSessionGRU(architecture=arch, combine=combine, strategy=strategy,
                          output_features=True, **dict(SMALL, n_epochs=3)).fit(
        events, item_features=feats)
    assert np.any(m.params_["Fy"] != 0) and np.any(m.params_["Fb"] != 0)
    Wy, By = effective_output(m.params_)
    s = m.predict_next([[events["ItemId"][0], events["ItemId"][1]]])[0]
    # the same scores from the network's hidden state times the effective output layer
    sc = m.scorer()
    sc.begin(1)
    sc.score(np.zeros(1, np.int64), m.item_index_.to_index([events["ItemId"][0]]).astype(
        np.int32), np.array([True]))
    last = sc.score(np.zeros(1, np.int64), m.item_index_.to_index([events["ItemId"][1]]).astype(
        np.int32), np.array([False]))
    np.testing.assert_allclose(s, last[0], rtol=1e-5, atol=1e-5)
    assert np.isfinite(m.evaluate(events, cutoffs=(20,))["recall@20"])


def test_default_is_unchanged_by_the_option():
    events, feats = _data()
    a = FeatureSessionGRU(**SMALL).fit(events, item_features=feats)
    b = FeatureSessionGRU(output_features=False, **SMALL).fit(events, item_features=feats)
    assert set(a.params_) == set(PARAM_KEYS)
    for k in PARAM_KEYS:
        np.testing.assert_array_equal(a.params_[k], b.params_[k])


def test_new_items_are_recommended_from_their_features(tmp_path):
    events, feats = _data(n_items=300, n_sessions=400)
    held = np.arange(250, 300)
    keep = ~np.isin(events["ItemId"], held)
    train = {k: v[keep] for k, v in events.items()}
    m = FeatureSessionGRU(output_features=True, **dict(SMALL, n_epochs=3)).fit(
        train, item_features=feats)
    n0 = m.n_items_
    assert not np.any(np.isin(m.item_index_.ids, held))
    unknown = set(range(300)) - set(m.item_index_.ids.tolist())
    new = m.add_items(feats)
    assert set(new) == unknown and set(held) <= unknown and m.n_items_ == n0 + len(new)
    assert np.all(m.params_["Wy"][n0:] == 0) and np.all(m.params_["By"][n0:] == 0)
    # a held-out item gets the feature part of the output layer: its score is finite, and
    # items of one cluster (same features) score alike
    recs, scores = m.recommend([int(train["ItemId"][0])], k=m.n_items_)
    assert set(held) & set(recs.tolist())
    res = m.evaluate(events, cutoffs=(20,))
    assert res["n_events"] > 0
    # similar items by the effective vectors: a new item has neighbours, never a NaN
    ids, cos = m.similar_items(int(held[0]), k=5)
    assert len(ids) == 5 and np.all(np.isfinite(cos)) and cos[0] > 0
    # save / load keeps the added items and the feature rows
    path = tmp_path / "m.npz"
    m.save(path)
    m2 = FeatureSessionGRU.load(path)
    for k in OUTPUT_KEYS + ("Wy", "By"):
        np.testing.assert_array_equal(m.params_[k], m2.params_[k])
    r2, s2 = m2.recommend([int(train["ItemId"][0])], k=10)
    np.testing.assert_array_equal(recs[:10], r2)
    np.testing.assert_allclose(scores[:10], s2, rtol=1e-6)
    # the live session store gives the same top items
    from gru_engine.serving import SessionStore
    store = SessionStore(m2)
    got = store.step(["u"], [int(train["ItemId"][0])], k=10)
    np.testing.assert_array_equal(got.items[0], r2)


def test_partial_fit_adds_new_items_through_their_features():
    events, feats = _data()
    held = np.arange(250, 300)
    keep = ~np.isin(events["ItemId"], held)
    m = FeatureSessionGRU(output_features=True, **SMALL).fit(
        {k: v[keep] for k, v in events.items()}, item_features=feats)
    n0 = m.n_items_
    m.partial_fit(events, item_features=feats, n_epochs=1)
    assert m.n_items_ == len(np.unique(events["ItemId"])) and set(held) <= set(
        m.item_index_.ids.tolist())
    assert np.any(m.params_["Wy"][n0:] != 0)  # trained now
    assert np.isfinite(m.evaluate(events, cutoffs=(20,))["recall@20"])


def test_errors():
    events, feats = _data()
    with pytest.raises(ValueError, match="output_features must be True or False"):
        FeatureSessionGRU(output_features="yes", **SMALL).fit(events, item_features=feats)
    with pytest.raises(ValueError, match="architecture='id'"):
        FeatureSessionGRU(architecture="id", output_features=True, **SMALL).fit(events)
    with pytest.raises(ValueError, match="cannot be combined with context"):
        FeatureSessionGRU(output_features=True, context_output="multiply", **SMALL).fit(
            events, item_features=feats)
    m = FeatureSessionGRU(**SMALL).fit(events, item_features=feats)
    with pytest.raises(ValueError, match="output_features=True"):
        m.add_items(feats)


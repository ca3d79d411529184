"""FeatureSessionGRU: step gradients (float64 finite differences), strategies, the signal test
on generated data, scoring against a NumPy reference, save/load, errors."""
import numpy as np
import pytest

from gru_engine import params as hp
from gru_engine.data import ItemIndex
from gru_engine.backends.cpu import Trainer
from gru_engine.network import S_C0, S_C1, S_D0, S_D1
from gru_engine.feature_model import FeatureSessionGRU
from gru_engine.network import build_layout, epoch_plan
from gru_engine.features import (CategoricalFeatures, DenseFeatures, TokenFeatures,
                                 encode_item_features)
from gru_engine.model import SessionGRU

N_ITEMS = 12
IDS = np.arange(100, 110)  # items 110, 111 have no features (defaults)


def _features(kinds):
    r = np.random.default_rng(1)
    all_ = {
        "dense": DenseFeatures(IDS, r.normal(size=(10, 6))),
        "proj": DenseFeatures(IDS[:8], r.normal(size=(8, 5)), project=3),
        "cat": CategoricalFeatures(IDS, r.integers(0, 3, (10, 2)), dim=3),
        "multi": CategoricalFeatures(IDS, [[1, 2], [3], [1, 4, 5], [], [2], [2, 3], [1], [5], [4],
                                           [3, 3]], dim=3, pooling="mean"),
        "tok": TokenFeatures(IDS, ["a b c", "b", "c c d", "", "a", "x y", "z", "a a", "b", "q"],
                             dim=3, n_buckets=5),
    }
    return {k: all_[k] for k in kinds}


def _trainer(arch, combine, mode, kinds, layers=(5,), flayers=(4,), loss="cross-entropy", seed=0):
    rng = np.random.default_rng(seed)
    index = ItemIndex(np.arange(N_ITEMS) + 100)
    enc = encode_item_features(_features(kinds), index)
    lay = build_layout(N_ITEMS, arch, combine, mode, list(layers), 3, list(flayers), enc, rng,
                       np.float64)
    params = {k: lay[k] for k in ("SI", "LI", "indptr", "indices", "weights", "theta", "T",
                                  "Wy", "By")}
    params["Wy"] *= 3
    params["T"] *= 2
    ce = loss == "cross-entropy"
    hy = hp.hyper(hp.validate(dict(hp.DEFAULTS, loss=loss, logq=1.0 if ce else 0.0, bpreg=0.5,
                                   elu_param=1.0 if loss == "bpr-max" else 0.0, batch_size=4,
                                   n_sample=3, sample_store_size=100)))
    tr = Trainer(params, hy, rng.integers(1, 10, N_ITEMS), sum_mode=combine == "sum")
    # non-trivial previous hidden states, dropout masks and log q
    wk = tr.work
    wk.HP[:] = rng.normal(size=wk.HP.shape) * 0.5
    tr.out.lq[:] = rng.normal(size=tr.out.lq.shape)
    wk.M0f[:] = rng.uniform(0.5, 1.5, size=wk.M0f.shape)
    wk.MK[:] = rng.uniform(0.5, 1.5, size=wk.MK.shape)
    return tr, params, rng


def _check_gradients(tr, params, rng, B=4, eps=1e-6):
    """Relative error ||fd - analytic|| / (||fd|| + ||analytic||) per parameter block, over the
    parameters the step trains (frozen ones must get exactly zero)."""
    in_items = rng.integers(0, N_ITEMS, B).astype(np.int32)
    cols = np.concatenate([rng.integers(0, N_ITEMS, B), rng.integers(0, N_ITEMS, 3)]).astype(np.int32)
    C = len(cols)
    _, grads = tr.forward_backward(in_items, B, cols, C)
    errors = {}
    for key in ("theta", "T", "Wy", "By"):
        p = params[key]
        fd = np.zeros_like(p)
        for k in range(p.size):
            old = p.flat[k]
            p.flat[k] = old + eps
            lp, _ = tr.forward_backward(in_items, B, cols, C)
            p.flat[k] = old - eps
            lm, _ = tr.forward_backward(in_items, B, cols, C)
            p.flat[k] = old
            fd.flat[k] = (lp - lm) / (2 * eps)
        errors[key] = (fd, grads[key])
    return errors


def _assert_close(errors, trained_mask=None, no_table=False):
    for key, (fd, an) in errors.items():
        if key == "T" and no_table:  # raw dense input: no learned table at all
            assert not np.any(fd) and not np.any(an)
            continue
        if trained_mask is not None and key in trained_mask:
            m = trained_mask[key]
            assert np.all(an[~m] == 0), key
            fd, an = fd[m], an[m]
        denom = np.linalg.norm(fd) + np.linalg.norm(an)
        assert denom > 0, f"{key}: no gradient at all"
        assert np.linalg.norm(fd - an) / denom < 1e-6, key


@pytest.mark.parametrize("kind", ["dense", "proj", "cat", "multi", "tok"])
def test_encoder_gradients(kind):
    tr, params, rng = _trainer("feature", "concat", "constrained", [kind])
    _assert_close(_check_gradients(tr, params, rng), no_table=kind == "dense")


@pytest.mark.parametrize("arch,combine,mode", [
    ("parallel", "concat", "constrained"), ("parallel", "concat", "onehot"),
    ("parallel", "concat", "embedding"), ("parallel", "sum", "constrained"),
    ("parallel", "sum", "onehot"), ("parallel", "sum", "embedding"),
    ("feature", "concat", "constrained"), ("feature", "sum", "constrained"),
])
def test_architecture_gradients(arch, combine, mode):
    flayers = (5,) if combine == "sum" else (4,)
    tr, params, rng = _trainer(arch, combine, mode, ["dense", "proj", "multi", "tok"],
                               flayers=flayers)
    _assert_close(_check_gradients(tr, params, rng))


@pytest.mark.parametrize("loss", ["bpr-max", "top1-max"])
def test_stacked_layers_and_ranking_losses(loss):
    tr, params, rng = _trainer("parallel", "concat", "constrained", ["cat", "tok"],
                               layers=(5, 4), flayers=(3, 4), loss=loss)
    _assert_close(_check_gradients(tr, params, rng))


def test_frozen_and_inactive_subnets():
    """Residual phase 1 of [id, cat, tok]: id frozen, cat trained, tok inactive (no effect on
    the loss). The trained parts get exact gradients, the frozen parts exactly zero."""
    tr, params, rng = _trainer("parallel", "concat", "constrained", ["cat", "tok"])
    SI = tr.net.SI
    tr.set_phase([True, True, False], [False, True, False], freeze_out=True)
    errors = _check_gradients(tr, params, rng)
    th = np.zeros(len(params["theta"]), bool)
    th[SI[1, S_D0]:SI[1, S_D1]] = True
    tab = np.zeros(len(params["T"]), bool)
    from gru_engine.network import S_TCOLS, S_TOFF, S_TROWS
    tab[SI[1, S_TOFF]:SI[1, S_TOFF] + SI[1, S_TROWS] * SI[1, S_TCOLS]] = True
    _assert_close({k: errors[k] for k in ("theta", "T", "By")}, {"theta": th, "T": tab})
    # Wy: the trained block (cat's) is exact; the frozen id block is not updated in training
    # (step_update skips it), the inactive tok block gets nothing
    fd, an = errors["Wy"]
    c0, c1 = SI[1, S_C0], SI[1, S_C1]
    blk = np.linalg.norm(fd[:, c0:c1] - an[:, c0:c1]) / (np.linalg.norm(fd[:, c0:c1]) + np.linalg.norm(an[:, c0:c1]))
    assert blk < 1e-6
    assert not np.any(an[:, SI[2, S_C0]:SI[2, S_C1]])
    # the inactive subnet does not change the loss: its finite differences are zero
    fd_theta = errors["theta"][0]
    assert np.all(np.abs(fd_theta[SI[2, S_D0]:SI[2, S_D1]]) < 1e-9)
    assert np.all(np.abs(errors["Wy"][0][:, SI[2, S_C0]:SI[2, S_C1]]) < 1e-9)


def test_epoch_plan():
    assert epoch_plan("simultaneous", 2, 2) == [([True, True], [True, True], False, False)] * 2
    alt = epoch_plan("alternating", 3, 4)
    assert [p[1] for p in alt] == [[True, False, False], [False, True, False],
                                   [False, False, True], [True, False, False]]
    res = epoch_plan("residual", 2, 5)
    assert [p[0] for p in res] == [[True, False]] * 2 + [[True, True]] * 3
    assert [p[1] for p in res] == [[True, False]] * 2 + [[False, True]] * 3
    assert all(p[3] for p in res)
    assert all(p[2] for p in epoch_plan("interleaved", 2, 2))


# ---- generated data where the features carry the signal -------------------------------------
def make_cluster_data(n_items=6000, n_clusters=400, n_sessions=2000, length=6, d=8, seed=0):
    """Next item = a random item of the cluster that follows the current item's cluster; item
    ids are many and sparse (each seen ~2 times in training). Dense features: the cluster
    centroid plus small noise."""
    rng = np.random.default_rng(seed)
    cluster = rng.integers(0, n_clusters, n_items)
    members = [np.flatnonzero(cluster == k) for k in range(n_clusters)]
    nxt = rng.permutation(n_clusters)
    items = np.empty((n_sessions, length), np.int64)
    for s in range(n_sessions):
        it = rng.integers(n_items)
        for p in range(length):
            items[s, p] = it
            it = rng.choice(members[nxt[cluster[it]]])
    events = {"SessionId": np.repeat(np.arange(n_sessions), length), "ItemId": items.ravel(),
              "Time": np.arange(n_sessions * length, dtype=float)}
    centroids = rng.normal(size=(n_clusters, d))
    signal = centroids[cluster] + 0.1 * rng.normal(size=(n_items, d))
    noise = rng.normal(size=(n_items, d))
    return events, signal, noise


def _split(events, frac=0.8, length=6):
    cut = int(len(events["SessionId"]) * frac) // length * length
    return ({k: v[:cut] for k, v in events.items()}, {k: v[cut:] for k, v in events.items()})


COMMON = dict(layers=[32], n_epochs=3, batch_size=32, n_sample=64, learning_rate=0.1,
              random_state=1)


@pytest.fixture(scope="module")
def cluster_data():
    events, signal, noise = make_cluster_data()
    train, test = _split(events)
    base = SessionGRU(**COMMON).fit(train).evaluate(test, cutoffs=(20,))
    return train, test, signal, noise, base


def test_features_with_signal_beat_id_only(cluster_data):
    train, test, signal, _, base = cluster_data
    feats = {"vec": DenseFeatures(np.arange(6000), signal)}
    for arch in ("parallel", "feature"):
        m = FeatureSessionGRU(architecture=arch, **COMMON).fit(train, item_features=feats)
        r = m.evaluate(test, cutoffs=(20,))
        assert r["recall@20"] > base["recall@20"] + 0.25, (arch, r["recall@20"], base["recall@20"])


def test_noise_features_tie_with_id_only(cluster_data):
    train, test, _, noise, base = cluster_data
    feats = {"vec": DenseFeatures(np.arange(6000), noise)}
    m = FeatureSessionGRU(**COMMON).fit(train, item_features=feats)
    r = m.evaluate(test, cutoffs=(20,))
    assert abs(r["recall@20"] - base["recall@20"]) < 0.04, (r["recall@20"], base["recall@20"])


# ---- fitting behaviour ------------------------------------------------------------------------
def _small():
    events, signal, _ = make_cluster_data(n_items=300, n_clusters=30, n_sessions=300, seed=3)
    feats = {"vec": DenseFeatures(np.arange(300), signal, project=4),
             "cat": CategoricalFeatures(np.arange(300), np.arange(300) % 7, dim=4)}
    return events, feats


SMALL = dict(layers=[8], n_epochs=2, batch_size=16, n_sample=16, random_state=0)


@pytest.mark.parametrize("strategy", ["simultaneous", "alternating", "residual", "interleaved"])
@pytest.mark.parametrize("combine", ["concat", "sum"])
def test_strategies_fit_and_score(strategy, combine):
    events, feats = _small()
    m = FeatureSessionGRU(strategy=strategy, combine=combine, **SMALL)
    if strategy == "residual" and combine == "sum":
        with pytest.raises(ValueError, match="residual"):
            m.fit(events, item_features=feats)
        return
    m = FeatureSessionGRU(strategy=strategy, combine=combine, **dict(SMALL, n_epochs=3))
    m.fit(events, item_features=feats)
    assert len(m.loss_history_) == 3 and np.all(np.isfinite(m.loss_history_))
    assert m.subnet_names_ == ["id", "vec", "cat"]
    r = m.evaluate(events, cutoffs=(20,))
    assert 0 < r["recall@20"] <= 1


def test_alternating_freezes_the_other_subnets():
    events, feats = _small()
    snaps = []
    m = FeatureSessionGRU(strategy="alternating", **dict(SMALL, n_epochs=3))
    m.fit(events, item_features=feats,
          callback=lambda e, t, l: snaps.append({n: {k: (None if v is None else
                                                         [np.copy(a) for a in v] if isinstance(v, list)
                                                         else np.copy(v))
                                                     for k, v in m.subnet_params(n).items()
                                                     if k in ("Wh", "table")}
                                                 for n in m.subnet_names_}))
    # epoch 2 trains "vec" only (epoch 3 "cat"): id and cat unchanged by epoch 2
    for name, changed in (("id", False), ("vec", True), ("cat", False)):
        same = np.array_equal(snaps[0][name]["Wh"][0], snaps[1][name]["Wh"][0])
        assert same != changed, name
    assert not np.array_equal(snaps[1]["cat"]["table"], snaps[2]["cat"]["table"])
    assert np.array_equal(snaps[1]["vec"]["table"], snaps[2]["vec"]["table"])


def test_residual_freezes_earlier_output_blocks():
    events, feats = _small()
    feats = {"vec": feats["vec"]}
    wy = []
    m = FeatureSessionGRU(strategy="residual", **dict(SMALL, n_epochs=2))
    m.fit(events, item_features=feats, callback=lambda e, t, l: wy.append(m.params_["Wy"].copy()))
    c0, c1 = m.subnet_params("id")["columns"]
    v0, v1 = m.subnet_params("vec")["columns"]
    np.testing.assert_array_equal(wy[0][:, c0:c1], wy[1][:, c0:c1])
    assert not np.array_equal(wy[0][:, v0:v1], wy[1][:, v0:v1])
    # after epoch 1 (id only) the vec block was never updated: still its initial values
    with pytest.raises(ValueError, match="n_epochs"):
        FeatureSessionGRU(strategy="residual", **dict(SMALL, n_epochs=1)).fit(events, item_features=feats)


def test_architecture_id_is_session_gru():
    events, feats = _small()
    a = FeatureSessionGRU(architecture="id", **SMALL).fit(events, item_features=feats)
    b = SessionGRU(**SMALL).fit(events)
    i = a.item_index_.ids
    np.testing.assert_array_equal(a.predict_next([[i[1], i[2]], [i[3]]]),
                                  b.predict_next([[i[1], i[2]], [i[3]]]))


def test_deterministic():
    events, feats = _small()
    a = FeatureSessionGRU(**SMALL).fit(events, item_features=feats)
    b = FeatureSessionGRU(**SMALL).fit(events, item_features=feats)
    for k in ("theta", "T", "Wy", "By"):
        np.testing.assert_array_equal(a.params_[k], b.params_[k])


# ---- scoring ----------------------------------------------------------------------------------
def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def reference_scores(model, feats_x, session):
    """NumPy forward of every subnet over one session's clicks (dense item indices); returns
    the scores after the last click. ``feats_x[name]`` is the (n_items, d) input of a feature
    subnet, computed independently of the model's bag code."""
    Hc = model.params_["Wy"].shape[1]
    combined = np.zeros(Hc)
    for name in model.subnet_names_:
        sp = model.subnet_params(name)
        hs = [np.zeros(w.shape[0]) for w in sp["Wh"]]
        for item in session:
            if name == "id":
                c0, c1 = sp["columns"]
                x = model.params_["Wy"][item, c0:c1]
            else:
                x = feats_x[name](item, sp["table"])
            for l in range(len(hs)):
                H = hs[l].shape[0]
                gx = x @ sp["Wx"][l] + sp["bx"][l]
                gh = hs[l] @ sp["Wh"][l]
                r = _sigmoid(gx[:H] + gh[:H])
                z = _sigmoid(gx[H:2 * H] + gh[H:2 * H])
                n = np.tanh(gx[2 * H:] + r * (gh[2 * H:] + sp["bhn"][l]))
                hs[l] = (1 - z) * n + z * hs[l]
                x = hs[l]
        c0, c1 = sp["columns"]
        w = 1.0 if sp["weight"] is None else sp["weight"]
        combined[c0:c1] += w * hs[-1]
    return model.params_["Wy"] @ combined + model.params_["By"]


@pytest.mark.parametrize("combine", ["concat", "sum"])
def test_scores_match_numpy_reference(combine):
    events, feats = _small()
    m = FeatureSessionGRU(combine=combine, **dict(SMALL, n_epochs=1)).fit(events, item_features=feats)
    idx = m.item_index_
    vec_rows = idx.lookup(np.arange(300))
    signal = feats["vec"].matrix
    cat = np.arange(300) % 7
    feats_x = {
        "vec": lambda it, T: signal[np.flatnonzero(vec_rows == it)[0]] @ T,
        "cat": lambda it, T: T[cat[np.flatnonzero(vec_rows == it)[0]]],  # codes 0..6 = rows 0..6
    }
    session = [idx.ids[5], idx.ids[17], idx.ids[3]]
    got = m.predict_next([session])[0]
    want = reference_scores(m, feats_x, idx.to_index(session))
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4)
    # a new session in a used slot starts from zero state in every subnet
    sc = m.scorer()
    sc.begin(1)
    items = idx.to_index(session)
    sc.score(np.array([0]), items[:1], np.array([True]))
    again = sc.score(np.array([0]), items[2:3], np.array([True])).copy()
    fresh = m.predict_next([[session[2]]])[0]
    np.testing.assert_allclose(again[0], fresh, rtol=1e-6)


def _same_features_as(feats, orig_id, new_id):
    """Specs listing only ``new_id``, with the features of item ``orig_id``."""
    row = int(np.flatnonzero(np.asarray(feats["vec"].ids) == orig_id)[0])
    return {"vec": DenseFeatures([new_id], feats["vec"].matrix[row:row + 1]),
            "cat": CategoricalFeatures([new_id], np.asarray(feats["cat"].codes)[row:row + 1])}


def test_new_item_with_features_feature_architecture():
    """Feature-only subnets see only features: a new item with item Y's features is Y."""
    events, feats = _small()
    m = FeatureSessionGRU(architecture="feature", **SMALL).fit(events, item_features=feats)
    i = m.item_index_.ids
    new = _same_features_as(feats, i[5], 10_000)
    got = m.predict_next([[i[1], 10_000], [10_000]], item_features=new)
    want = m.predict_next([[i[1], i[5]], [i[5]]])
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    ids, _ = m.recommend([i[1], 10_000], k=len(i), item_features=new)
    assert 10_000 not in ids and len(ids) == len(i)  # never recommended: no output vector
    # listed in one source only: the other gets its default, like a training item without entry
    only_vec = {"vec": new["vec"]}
    assert m.recommend([10_000], k=3, item_features=only_vec)[0].shape == (3,)


def test_new_item_with_features_parallel_reads_zero_id_input():
    """With an ID subnet, a new item is its features plus a zero ID input vector: the same as
    item Y with Y's (constrained) ID input row zeroed, on every output column but Y's."""
    import copy
    events, feats = _small()
    m = FeatureSessionGRU(**SMALL).fit(events, item_features=feats)
    i = m.item_index_.ids
    new = _same_features_as(feats, i[5], 10_000)
    got = m.predict_next([[i[1], 10_000, i[2]]], item_features=new)[0]
    zeroed = copy.deepcopy(m)
    c0, c1 = zeroed.subnet_params("id")["columns"]
    zeroed.params_["Wy"][5, c0:c1] = 0.0
    want = zeroed.predict_next([[i[1], i[5], i[2]]])[0]
    keep = np.arange(len(i)) != 5
    np.testing.assert_allclose(got[keep], want[keep], rtol=1e-5, atol=1e-6)
    assert not np.allclose(got, m.predict_next([[i[1], i[5], i[2]]])[0])


def test_new_items_string_codes_and_tokens_survive_save_load(tmp_path):
    """Vocabularies are saved: after load, a new item with item Y's string codes and tokens
    scores as Y, and one with codes/tokens never seen scores as an item without features."""
    events, _, _ = make_cluster_data(n_items=60, n_clusters=6, n_sessions=80, seed=4)
    ids = np.arange(59)  # item 59 has no features: unknown rows
    feats = {"cat": CategoricalFeatures(ids, np.array([f"c{k % 5}" for k in ids]), dim=3),
             "tok": TokenFeatures(ids, [f"w{k % 4} w{k % 3}" for k in ids], dim=3)}
    m = FeatureSessionGRU(architecture="feature", **SMALL).fit(events, item_features=feats)
    path = tmp_path / "m.npz"
    m.save(path)
    m2 = FeatureSessionGRU.load(path)
    new = {"cat": CategoricalFeatures([500, 501], np.array(["c2", "never"])),
           "tok": TokenFeatures([500, 501], ["w3 w1", "unseen words"])}
    for model in (m, m2):
        got = model.predict_next([[500], [501]], item_features=new)
        want = model.predict_next([[7], [59]])  # 7: c2, "w3 w1"; 59: no features
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_new_item_errors():
    events, feats = _small()
    m = FeatureSessionGRU(**SMALL).fit(events, item_features=feats)
    i = m.item_index_.ids
    new = _same_features_as(feats, i[5], 10_000)
    with pytest.raises(KeyError, match="unknown"):
        m.recommend([10_000])  # no features given
    with pytest.raises(KeyError, match="absent from item_features"):
        m.recommend([10_000, 20_000], item_features=new)
    with pytest.raises(ValueError, match="not sources of this model"):
        m.recommend([10_000], item_features={"other": new["vec"]})
    with pytest.raises(ValueError, match="trained with DenseFeatures"):
        m.recommend([10_000], item_features={"vec": new["cat"]})
    with pytest.raises(ValueError, match="size 8"):
        m.recommend([10_000], item_features={"vec": DenseFeatures([10_000], np.ones((1, 3)))})
    with pytest.raises(ValueError, match="strings"):
        m.recommend([10_000], item_features={"cat": CategoricalFeatures([10_000], ["a"])})
    id_only = FeatureSessionGRU(architecture="id", **SMALL).fit(events)
    with pytest.raises(ValueError, match="reads no item features"):
        id_only.recommend([10_000], item_features=new)


@pytest.mark.parametrize("arch", ["parallel", "feature", "id"])
def test_save_load_roundtrip(tmp_path, arch):
    events, feats = _small()
    m = FeatureSessionGRU(architecture=arch, **SMALL).fit(events, item_features=feats)
    path = tmp_path / "m.npz"
    m.save(path)
    with np.load(path, allow_pickle=False) as f:  # no object arrays inside
        assert "header" in f.files
    m2 = FeatureSessionGRU.load(path)
    assert m2.get_params() == m.get_params()
    i = m.item_index_.ids
    sessions = [[i[1], i[2]], [i[3]]]
    np.testing.assert_array_equal(m2.predict_next(sessions), m.predict_next(sessions))
    assert m2.recommend(i[4:6], k=3)[0].tolist() == m.recommend(i[4:6], k=3)[0].tolist()
    if arch != "id":
        assert m2.feature_info_ == m.feature_info_ and m2.subnet_names_ == m.subnet_names_
        for v2, v in zip(m2.feature_vocab_, m.feature_vocab_):
            assert len(v2) == len(v) and all(np.array_equal(a, b) for a, b in zip(v2, v))
    with pytest.raises(ValueError, match="holds a 'FeatureSessionGRU'"):
        SessionGRU.load(path)


# ---- errors -----------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,msg", [
    ({"architecture": "tree"}, "architecture"),
    ({"combine": "product"}, "combine"),
    ({"strategy": "boost"}, "strategy"),
    ({"feature_layers": [0]}, "feature_layers"),
    ({"combine": "sum", "feature_layers": [4]}, "same size|one size"),
    ({"strategy": "residual", "combine": "sum"}, "residual"),
])
def test_parameter_errors(kwargs, msg):
    events, feats = _small()
    with pytest.raises(ValueError, match=msg):
        FeatureSessionGRU(**dict(SMALL, **kwargs)).fit(events, item_features=feats)


def test_missing_features_error():
    events, _ = _small()
    with pytest.raises(ValueError, match="needs item_features"):
        FeatureSessionGRU(**SMALL).fit(events)
    with pytest.raises(ValueError, match="duplicate"):
        FeatureSessionGRU(**SMALL).fit(events, item_features={"v": DenseFeatures([1, 1], np.ones((2, 2)))})
    assert "architecture" in FeatureSessionGRU().get_params()


def test_package_exposes_feature_model():
    import gru_engine
    assert gru_engine.FeatureSessionGRU is FeatureSessionGRU
    assert "FeatureSessionGRU" in gru_engine.__all__


@pytest.mark.parametrize("use_panels", [True, False])
@pytest.mark.parametrize("n_threads", [1, 2, 3])
def test_threaded_rank_equals_score_then_rank(n_threads, use_panels, monkeypatch):
    """FeatureScorer.rank (rows split over threads, a workspace each) gives the ranks of
    score() + rank_targets(), over two steps of carried state (fused panel kernels and BLAS)."""
    from gru_engine.backends.cpu_scoring import OutputLayer
    from gru_engine.ranking import panel_path, rank_targets
    monkeypatch.setattr(OutputLayer, "USE_PANELS", use_panels)
    events, feats = _small()
    m = FeatureSessionGRU(**dict(SMALL, n_epochs=1, n_threads=n_threads)).fit(
        events, item_features=feats)
    a = m.scorer()
    b = m.set_params(n_threads=1).scorer()
    assert a.n_threads == n_threads and b.n_threads == 1
    rng = np.random.default_rng(n_threads)
    R, n = 200, m.n_items_
    rows = np.arange(R, dtype=np.int64)
    targets = rng.integers(0, n, R)
    a.begin(R), b.begin(R)
    for step in range(2):
        items = rng.integers(0, n, R).astype(np.int32)
        fresh = np.full(R, step == 0)
        ranks = a.rank(rows, items, fresh, targets, "median")
        np.testing.assert_array_equal(ranks, rank_targets(b.score(rows, items, fresh), targets,
                                                          "median"))
    assert set(a.output.path_counts) == {panel_path() if use_panels and panel_path() else "blas"}
    assert ranks.min() >= 1

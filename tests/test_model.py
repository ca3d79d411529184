"""SessionGRU: training steps against the NumPy reference, hidden-state resets, determinism,
save/load, parameter handling and errors, and a small end-to-end fit on the bundled sample."""
import json
import logging

import numpy as np
import pytest

import naive as ref
from gru_engine import ModelFitError, NotFittedError
from gru_engine.backends import cpu_scoring
from gru_engine.backends.cpu import Trainer
from gru_engine.model import SessionGRU
from gru_engine.params import parse_param_string
from gru_engine.sampling import seed_numba
from test_gradients import hyper, id_network


def _events(n_sessions=60, n_items=15, seed=0, max_len=8):
    """Synthetic event table where the next item depends on the current one (learnable)."""
    rng = np.random.default_rng(seed)
    sess, items, times = [], [], []
    t = 0.0
    for s in range(n_sessions):
        it = int(rng.integers(n_items))
        for _ in range(int(rng.integers(2, max_len + 1))):
            sess.append(s)
            items.append(it * 10 + 7)  # original ids are not dense
            times.append(t)
            t += 1.0
            it = (it + 1) % n_items if rng.random() < 0.8 else int(rng.integers(n_items))
    return {"SessionId": np.array(sess), "ItemId": np.array(items), "Time": np.array(times)}


SMALL = dict(layers=[8], batch_size=4, n_sample=5, sample_store_size=50, n_epochs=2,
             learning_rate=0.05, random_state=3)


# ---------------------------------------------------------------------------------------------
# training steps against the reference
# ---------------------------------------------------------------------------------------------
def _dropout(rs, shape, p):
    if p <= 0:
        return np.ones(shape)
    return np.where(rs.random_sample(shape) < p, 0.0, 1.0 / (1.0 - p))


def _reference_steps(P, mode, items, offsets, order, support, n_steps, seed, bs, n_sample,
                     alpha, store_size, loss, act, logq, bpreg, elu, lr, mom, p_e, p_h):
    rs = np.random.RandomState(seed)  # Numba's generator is the same Mersenne Twister
    cdf = np.cumsum(support.astype(float) ** alpha)
    cap = max(1, store_size // n_sample) * n_sample
    draw = lambda: np.minimum(np.searchsorted(cdf, rs.random_sample(cap) * cdf[-1],
                                              side="right"), len(cdf) - 1)
    store, pos = draw(), 0
    schedule = ref.reference_schedule(items, offsets, order, bs, 1)
    acc = {n: np.zeros_like(a) for n, a in ref.param_blocks(P)}
    vel = {n: np.zeros_like(a) for n, a in ref.param_blocks(P)}
    layers = [w.shape[0] for w in P["Wh"]]
    hprev = [np.zeros((bs, h)) for h in layers]
    d0 = 1 if mode == "onehot" else P["Wx"][0].shape[0]
    for t in range(n_steps):
        inp, tgt, rst = schedule[t]
        B = len(inp)
        for h in hprev:
            h[:B][rst] = 0.0
        if pos + n_sample > cap:  # store used up: redrawn before this step's masks
            store, pos = draw(), 0
        samples = store[pos:pos + n_sample]
        pos += n_sample
        cols = np.concatenate([tgt, samples])
        lq = np.concatenate([np.log(support[tgt]), alpha * np.log(support[samples])])
        mask0 = _dropout(rs, (B, d0), p_e)
        masks = [_dropout(rs, (B, h), p_h) for h in layers]
        hp_ = [h[:B] for h in hprev]
        f = lambda Q: ref.step_loss(Q, mode, inp, hp_, cols, mask0, masks, loss, act, logq, lq,
                                    bpreg, elu, bs)
        grads = ref.fd_gradients(f, P)
        ys = ref.forward(P, mode, inp, hp_, mask0, masks)
        for name, a in ref.param_blocks(P):
            rows = None
            if name == "Wy":
                rows = np.concatenate([cols, inp]) if mode == "constrained" else cols
            elif name == "By":
                rows = cols
            elif name == "E" or (name == "Wx[0]" and mode == "onehot"):
                rows = inp
            if rows is None:
                new = ref.adagrad(a, grads[name], acc[name], vel[name], lr, mom)
            else:
                rows = np.unique(rows)
                new = ref.adagrad_sparse(a, grads[name][rows], rows, acc[name], vel[name], lr,
                                         mom)
            for dst, src in zip((a, acc[name], vel[name]), new):
                dst[...] = src
        for h, y in zip(hprev, ys):
            h[:B] = y
    return P


@pytest.mark.parametrize("loss,mode,layers", [
    ("cross-entropy", "constrained", [4]), ("bpr-max", "constrained", [4]),
    ("top1-max", "constrained", [3, 4]), ("bpr", "constrained", [4]),
    ("top1", "constrained", [4]), ("cross-entropy", "onehot", [3, 4]),
    ("bpr-max", "embedding", [4])])
def test_training_steps_match_reference(loss, mode, layers):
    ev = _events(n_sessions=12, n_items=7, seed=1)
    from gru_engine.data import build_sessions
    sessions, index, _ = build_sessions(ev)
    n = len(index)
    support = sessions.item_support(n)
    order = sessions.order_by_start_time()
    flat, P = id_network(mode, layers, np.random.default_rng(0), n_items=n)
    P_ref = {k: ([a.copy() for a in v] if isinstance(v, list) else v.copy()) for k, v in P.items()}
    conf = dict(bs=3, n_sample=4, alpha=0.5, store_size=10, loss=loss, act="linear",
                logq=1.0, bpreg=0.5 if loss == "bpr-max" else 0.0,
                elu=0.5 if loss == "bpr-max" else 0.0, lr=0.1, mom=0.3, p_e=0.25, p_h=0.3)
    tr = Trainer(flat, hyper(loss, conf["act"], conf["logq"], conf["bpreg"], conf["elu"],
                             conf["n_sample"], conf["bs"], conf["lr"], conf["mom"], conf["p_e"],
                             conf["p_h"], conf["alpha"], conf["store_size"]), support)
    seed_numba(11)
    tr.fill_store()
    tr.start_epoch(sessions.items, order, sessions.offsets)
    tr.run(3)  # the store holds 2 blocks: step 3 redraws it
    P_ref = _reference_steps(P_ref, mode, sessions.items, sessions.offsets, order, support, 3,
                             11, conf["bs"], conf["n_sample"], conf["alpha"], conf["store_size"],
                             loss, conf["act"], conf["logq"], conf["bpreg"], conf["elu"],
                             conf["lr"], conf["mom"], conf["p_e"], conf["p_h"])
    for (name, a), (_, b) in zip(ref.param_blocks(P), ref.param_blocks(P_ref)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9, err_msg=name)


# ---------------------------------------------------------------------------------------------
# behaviour of the fitted model
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fitted():
    return SessionGRU(**SMALL).fit(_events())


def test_hidden_state_reset_at_session_start(fitted):
    ids = fitted.item_index_.ids
    sc = fitted.scorer()
    sc.begin(2)
    rows = np.array([0], np.int64)
    for it in [3, 5, 1]:  # a previous session in slot 0
        sc.score(rows, np.array([it], np.int32), np.array([False]))
    after_reset = sc.score(rows, np.array([4], np.int32), np.array([True])).copy()
    fresh = sc.score(np.array([1], np.int64), np.array([4], np.int32), np.array([True])).copy()
    np.testing.assert_array_equal(after_reset, fresh)
    continued = sc.score(rows, np.array([4], np.int32), np.array([False]))
    assert not np.allclose(continued, after_reset)
    # predict_next: a session's scores depend only on its own clicks
    a = fitted.predict_next([[ids[4]], [ids[3], ids[5], ids[4]]])
    b = fitted.predict_next([[ids[4]]])
    np.testing.assert_allclose(a[0], b[0], rtol=1e-5, atol=1e-6)  # BLAS rounding per shape
    assert not np.allclose(a[0], a[1])


def test_save_load_round_trip(fitted, tmp_path):
    path = tmp_path / "m.npz"
    fitted.save(path)
    loaded = SessionGRU.load(path)
    assert loaded.get_params() == {**fitted.get_params(), "layers": list(fitted.layers)}
    ids = fitted.item_index_.ids
    sess = [[ids[1], ids[2]], [ids[5]], [ids[0], ids[3], ids[7]]]
    np.testing.assert_array_equal(fitted.predict_next(sess), loaded.predict_next(sess))
    np.testing.assert_array_equal(loaded.item_index_.ids, ids)
    with np.load(path, allow_pickle=False) as f:  # readable without pickle
        header = json.loads(bytes(f["header"]).decode())
        arrays = {k: f[k] for k in f.files}
    assert header["format"] == "gru_engine" and header["format_version"] == 3
    assert header["class"] == "SessionGRU"
    header["format_version"] = 99
    arrays["header"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    bad = tmp_path / "newer.npz"
    np.savez(bad, **arrays)
    with pytest.raises(ValueError, match="version 99"):
        SessionGRU.load(bad)


def test_string_item_ids_round_trip(tmp_path):
    ev = _events(n_sessions=20, seed=2)
    ev["ItemId"] = np.array([f"i{v}" for v in ev["ItemId"]])
    m = SessionGRU(**{**SMALL, "n_epochs": 1}).fit(ev)
    m.save(tmp_path / "s.npz")
    m2 = SessionGRU.load(tmp_path / "s.npz")
    assert m2.item_index_.ids.dtype.kind == "U"
    np.testing.assert_array_equal(m.predict_next([["i7", "i17"]]), m2.predict_next([["i7", "i17"]]))


def test_determinism_with_random_state():
    kw = {**SMALL, "dropout_p_hidden": 0.3, "dropout_p_embed": 0.2, "momentum": 0.2,
          "shuffle_sessions": True}
    a = SessionGRU(**kw).fit(_events())
    b = SessionGRU(**kw).fit(_events())
    for name in a.params_:
        np.testing.assert_array_equal(a.params_[name], b.params_[name], err_msg=name)
    assert a.loss_history_ == b.loss_history_
    c = SessionGRU(**{**kw, "random_state": 4}).fit(_events())
    assert not np.array_equal(a.params_["Wy"], c.params_["Wy"])


@pytest.mark.parametrize("kw", [
    dict(loss="cross-entropy"), dict(loss="bpr-max", bpreg=1.0, elu_param=0.5),
    dict(loss="top1-max", final_act="tanh"), dict(loss="bpr", n_sample=0),
    dict(loss="top1", final_act="leaky-0.01"), dict(embedding=5, constrained_embedding=False),
    dict(constrained_embedding=False, layers=[6, 5]), dict(final_act="elu-1")])
def test_every_configuration_learns(kw):
    m = SessionGRU(**{**SMALL, "n_epochs": 4, "learning_rate": 0.1, **kw}).fit(_events())
    assert len(m.loss_history_) == 4 and np.all(np.isfinite(m.loss_history_))
    assert m.loss_history_[-1] < m.loss_history_[0]


@pytest.mark.parametrize("kw,match", [
    (dict(loss="hinge"), "unknown loss"), (dict(layers=[0]), "layers"),
    (dict(layers=[]), "layers"), (dict(batch_size=0), "batch_size"),
    (dict(n_sample=-1), "n_sample"), (dict(dropout_p_hidden=1.0), "dropout_p_hidden"),
    (dict(dropout_p_embed=-0.1), "dropout_p_embed"), (dict(final_act="softmax"), "final_act"),
    (dict(final_act="leaky-x"), "final_act"), (dict(learning_rate=0), "learning_rate"),
    (dict(momentum=1.0), "momentum"), (dict(embedding=-2), "embedding"),
    (dict(sample_alpha=float("nan")), "sample_alpha"), (dict(device="tpu"), "device"),
    (dict(device="cuda"), "CuPy and an NVIDIA GPU"), (dict(random_state=-1), "random_state"),
    (dict(n_threads=0), "n_threads")])
def test_bad_hyperparameters_raise_in_fit(kw, match):
    m = SessionGRU(**kw)  # __init__ only stores
    with pytest.raises(ValueError, match=match):
        m.fit(_events())


def test_nan_loss_raises_model_fit_error():
    m = SessionGRU(**{**SMALL, "learning_rate": 1e30, "n_epochs": 3, "loss": "bpr-max"})
    with pytest.raises(ModelFitError, match="epoch"):
        m.fit(_events())
    with pytest.raises(NotFittedError):
        m.predict_next([[7]])


def test_get_set_params_round_trip_and_param_strings():
    m = SessionGRU(layers=[50, 20], loss="bpr-max")
    p = m.get_params()
    m2 = SessionGRU().set_params(**p)
    assert m2.get_params() == p
    with pytest.raises(ValueError, match="unknown parameter"):
        m.set_params(hidden=3)
    parsed = parse_param_string("loss=bpr-max,layers=224/224,batch_size=80,dropout_p_embed=0.5,"
                                "constrained_embedding=True,elu_param=0.5,n_sample=2048")
    assert parsed == {"loss": "bpr-max", "layers": [224, 224], "batch_size": 80,
                      "dropout_p_embed": 0.5, "constrained_embedding": True, "elu_param": 0.5,
                      "n_sample": 2048}
    assert SessionGRU.from_param_string("layers=100,loss=top1").layers == [100]
    for bad in ("loss", "foo=1", "batch_size=abc", "constrained_embedding=maybe"):
        with pytest.raises(ValueError):
            parse_param_string(bad)


def test_callback_and_device_auto(caplog):
    seen = []
    with caplog.at_level(logging.INFO, logger="gru_engine"):
        SessionGRU(**{**SMALL, "device": "auto"}).fit(
            _events(), callback=lambda e, t, l: seen.append((e, t, l)))
    assert [e for e, _, _ in seen] == [1, 2]
    assert all(t > 0 and np.isfinite(l) for _, t, l in seen)
    assert "events/s" in caplog.text


def test_sample_fit_beats_popularity():
    from gru_engine.sample_data import load_sample
    train, test = load_sample()
    m = SessionGRU(layers=[64], n_epochs=1, batch_size=32, n_sample=512, learning_rate=0.2,
                   momentum=0.2, dropout_p_hidden=0.2, random_state=0).fit(train)
    res = m.evaluate(test, cutoffs=(20,))
    # popularity: the 20 most clicked training items for every prediction
    top = np.argsort(-m.item_support_, kind="stable")[:20]
    from gru_engine.data import build_sessions
    s, _, _ = build_sessions(test, m.item_index_)
    targets = np.concatenate([s.items[s.offsets[i] + 1:s.offsets[i + 1]]
                              for i in range(s.n_sessions)])
    pop_recall = np.isin(targets, top).mean()
    assert res["recall@20"] > 0.45 and res["recall@20"] > 2 * pop_recall


@pytest.mark.parametrize("kw", [dict(), dict(embedding=4, constrained_embedding=False),
                                dict(constrained_embedding=False, layers=[5, 6])])
def test_scorer_input_table_equals_direct_forward(kw, monkeypatch):
    """The scorer's precomputed layer-0 table gives the scores of the direct computation."""
    m = SessionGRU(**{**SMALL, **kw}).fit(_events())
    sess = [[m.item_index_.ids[i] for i in (1, 2, 3)], [m.item_index_.ids[4]]]
    fast = m.predict_next(sess)
    monkeypatch.setattr(cpu_scoring.Scorer, "MAX_TABLE", 0)
    np.testing.assert_allclose(m.predict_next(sess), fast, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("use_panels", [True, False])
def test_output_layer_panels_and_blas_agree(use_panels, monkeypatch):
    """OutputLayer scores and ranks on integer-valued data (exact in any summation order) are
    those of NumPy, through the panel kernels (where the CPU has them) and through BLAS."""
    from gru_engine.ranking import rank_targets
    monkeypatch.setattr(cpu_scoring.OutputLayer, "USE_PANELS", use_panels)
    rng = np.random.default_rng(3)
    Wy = rng.integers(-3, 4, (301, 12)).astype(np.float32)
    By = rng.integers(-3, 4, 301).astype(np.float32)
    aug = np.hstack([rng.integers(-3, 4, (40, 12)), np.ones((40, 1))]).astype(np.float32)
    want = aug[:, :12] @ Wy.T + By
    layer = cpu_scoring.OutputLayer(Wy, By)
    if not use_panels:
        assert layer.panels is None and not layer.fused_rank
    got = layer.scores(aug, np.empty((40, 301), np.float32))
    np.testing.assert_array_equal(got, want)
    targets = rng.integers(0, 301, 40)
    np.testing.assert_array_equal(layer.rank(aug, targets, "conservative",
                                             np.empty((40, 301), np.float32)),
                                  rank_targets(want, targets))
    tanh = cpu_scoring.OutputLayer(Wy, By, act=2)  # a final activation ranks its own scores
    assert not tanh.fused_rank
    np.testing.assert_allclose(tanh.scores(aug, np.empty((40, 301), np.float32)),
                               np.tanh(want), rtol=1e-6)


@pytest.mark.parametrize("use_panels", [True, False])
@pytest.mark.parametrize("n_threads", [1, 2, 3])
def test_threaded_rank_equals_score_then_rank(fitted, n_threads, use_panels, monkeypatch):
    """Scorer.rank (rows split over threads) gives the ranks of score() + rank_targets()."""
    from gru_engine.ranking import panel_path, rank_targets
    monkeypatch.setattr(cpu_scoring.OutputLayer, "USE_PANELS", use_panels)
    model = fitted
    rng = np.random.default_rng(n_threads)
    R, n = 300, model.n_items_
    rows = np.arange(R, dtype=np.int64)
    items = rng.integers(0, n, R).astype(np.int32)
    fresh = np.ones(R, bool)
    targets = rng.integers(0, n, R)
    old = model.n_threads
    try:
        a = model.set_params(n_threads=n_threads).scorer()
        b = model.set_params(n_threads=1).scorer()
    finally:
        model.set_params(n_threads=old)
    assert a.n_threads == n_threads
    a.begin(R), b.begin(R)
    for step in range(2):
        ranks = a.rank(rows, items, fresh if step == 0 else ~fresh, targets, "median")
        expected = rank_targets(b.score(rows, items, fresh if step == 0 else ~fresh), targets,
                                "median")
        np.testing.assert_array_equal(ranks, expected)
    assert set(a.output.path_counts) == {panel_path() if use_panels and panel_path() else "blas"}
    assert ranks.min() >= 1


@pytest.mark.parametrize("busy, n_threads, warned", [(9, 2, True), (1, 2, True), (9, 1, False),
                                                      (0, 2, False)])
def test_busy_cpus_warning(monkeypatch, caplog, busy, n_threads, warned):
    import gru_engine.threads as threads_mod
    monkeypatch.setattr(threads_mod, "other_runnable_tasks", lambda: busy)
    monkeypatch.setattr(threads_mod, "resolve_threads", lambda n: 2 if n is None else int(n))
    with caplog.at_level(logging.WARNING, logger="gru_engine"):
        SessionGRU(**dict(SMALL, n_epochs=1, n_threads=n_threads)).fit(_events())
    assert any("CPUs are busy" in r.getMessage() for r in caplog.records) == warned

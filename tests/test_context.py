"""The context-aware GRU (gru_engine.context): gradients of the context layers against finite
differences (float64), forward equivalences, what context learns that the plain GRU cannot,
evaluation = serving, model files, and the errors for data or settings it cannot use."""
import numpy as np
import pytest

from gru_engine import SessionGRU
from gru_engine.backends.cpu import Trainer
from gru_engine.backends.cpu.context_step import make_ctx
from gru_engine.context import GAP_BUCKETS, ContextEncoder, config, table_widths
from gru_engine.feature_model import FeatureSessionGRU
from gru_engine.network import L_HOFF, PARAM_KEYS, build_layout
from gru_engine.params import DEFAULTS, hyper, validate

N_ITEMS, B, N_SAMPLE = 9, 4, 3
T0 = 1.45e9  # a Unix time (2015-12-13)


def _hyper(loss, n_sample=N_SAMPLE):
    return hyper(validate(dict(DEFAULTS, loss=loss, n_sample=n_sample, batch_size=B, logq=0.0,
                               sample_store_size=100)))


def _trainer(mode, layers, cin, cout, loss, seed, sizes_in=(3, 2), sizes_out=(3,), ctr="none"):
    """A float64 trainer of the ID network with random (non-zero) context tables, previous
    hidden states and context rows (rows 0 and 1 share their context rows); ``ctr``:
    ``context_transition``."""
    rng = np.random.default_rng(seed)
    lay = build_layout(N_ITEMS, "id", "concat", mode, list(layers), 3, list(layers), [], rng,
                       np.float64)
    params = {k: lay[k] for k in PARAM_KEYS}
    params["By"][:] = rng.normal(0, 0.3, N_ITEMS)
    params["Wy"] *= 3.0
    p = dict(context_input=cin, context_output=cout, context_transition=ctr)
    w_in, w_out, w_h = table_widths(p, lay)
    Cin = rng.normal(0, 0.5, (sum(sizes_in), w_in))
    Cout = rng.normal(0, 0.5, (sum(sizes_out), w_out))
    Ch = rng.normal(0, 0.5, (sum(sizes_in) if ctr != "none" else 0, w_h))
    tr = Trainer(params, _hyper(loss), np.ones(N_ITEMS, np.int64),
                 context=make_ctx(config(p), Cin, Cout, B, np.zeros((0, len(sizes_in)), np.int32),
                                  np.zeros((0, len(sizes_out)), np.int32), Ch=Ch))
    off_in = np.concatenate([[0], np.cumsum(sizes_in)[:-1]])
    tr.cx.rin[:] = rng.integers(0, min(sizes_in), (B, len(sizes_in))) + off_in
    tr.cx.rin[1] = tr.cx.rin[0]  # a shared row: its gradient is summed
    tr.cx.rout[:] = rng.integers(0, min(sizes_out), (B, len(sizes_out)))
    tr.cx.rout[1] = tr.cx.rout[0]
    for g, H in enumerate(layers):
        hp = tr.work.HP[B * lay["LI"][g, L_HOFF]:B * (lay["LI"][g, L_HOFF] + H)].reshape(B, H)
        hp[:] = rng.normal(0, 0.5, (B, H))
        hp[0] = 0.0
    items = rng.integers(0, N_ITEMS, B).astype(np.int32)
    cols = rng.integers(0, N_ITEMS, B + N_SAMPLE).astype(np.int32)
    return tr, items, cols


@pytest.mark.parametrize("mode,layers", [("onehot", [4]), ("embedding", [4, 3]),
                                         ("constrained", [4])])
@pytest.mark.parametrize("cin,cout,ctr", [
    ("concat", "none", "none"), ("multiply", "none", "none"), ("none", "multiply", "none"),
    ("multiply", "multiply", "none"), ("concat", "multiply", "none"),
    ("none", "none", "multiply"), ("concat", "multiply", "multiply")])
@pytest.mark.parametrize("loss", ["cross-entropy", "bpr-max"])
def test_gradients_match_finite_differences(mode, layers, cin, cout, ctr, loss):
    tr, items, cols = _trainer(mode, layers, cin, cout, loss, seed=len(mode) + len(cin),
                               ctr=ctr)
    C = len(cols)
    _, grads = tr.forward_backward(items, B, cols, C)
    arrays = {"theta": tr.params["theta"], "T": tr.params["T"], "Wy": tr.params["Wy"],
              "By": tr.params["By"], "context_in": tr.cx.Cin, "context_out": tr.cx.Cout,
              "context_h": tr.cx.Ch}
    eps = 1e-6
    for name, a in arrays.items():
        flat, g = a.reshape(-1), grads[name].reshape(-1)
        num = np.zeros_like(flat)
        for j in range(flat.size):
            keep = flat[j]
            flat[j] = keep + eps
            up = tr.forward_backward(items, B, cols, C)[0]
            flat[j] = keep - eps
            down = tr.forward_backward(items, B, cols, C)[0]
            flat[j] = keep
            num[j] = (up - down) / (2 * eps)
        np.testing.assert_allclose(g, num, rtol=1e-5, atol=1e-8, err_msg=name)
    for side, key in ((cin, "context_in"), (cout, "context_out"), (ctr, "context_h")):
        assert side == "none" or np.abs(grads[key]).sum() > 0  # the check saw real gradients


def test_output_context_scales_the_combined_state():
    """hc' = hc * (1 + sum Cout[rows]) against the same network without context."""
    tr, items, cols = _trainer("constrained", [4], "none", "multiply", "cross-entropy", 3)
    plain = Trainer(tr.params, tr.hyper, np.ones(N_ITEMS, np.int64))
    plain.work.HP[:] = tr.work.HP
    plain.forward_backward(items, B, cols, len(cols))
    hc0 = plain.work.hc[:B].copy()
    tr.forward_backward(items, B, cols, len(cols))
    mod = 1.0 + tr.cx.Cout[tr.cx.rout].sum(axis=1)
    np.testing.assert_allclose(tr.work.hc[:B], hc0 * mod, rtol=1e-12)


@pytest.mark.parametrize("cin,mode", [("concat", "onehot"), ("multiply", "embedding")])
def test_input_context_equals_a_changed_input_row(cin, mode):
    """With every row in one context, concat adds sum Cin to the one-hot input's table row
    (the layer-0 gate pre-activation) and multiply scales the embedding row by 1 + sum Cin."""
    tr, items, cols = _trainer(mode, [4], cin, "none", "cross-entropy", 5)
    tr.cx.rin[:] = tr.cx.rin[0]
    items[:] = items[0]
    tr.forward_backward(items, B, cols, len(cols))
    hc_ctx = tr.work.hc[:B].copy()
    params = {k: v.copy() for k, v in tr.params.items()}
    row = tr.cx.Cin[tr.cx.rin[0]].sum(axis=0)
    w = row.shape[0]
    T = params["T"][:N_ITEMS * w].reshape(N_ITEMS, w)
    T[items[0]] = T[items[0]] + row if cin == "concat" else T[items[0]] * (1 + row)
    plain = Trainer(params, tr.hyper, np.ones(N_ITEMS, np.int64))
    plain.work.HP[:] = tr.work.HP
    plain.forward_backward(items, B, cols, len(cols))
    np.testing.assert_allclose(hc_ctx, plain.work.hc[:B], rtol=1e-12)


# ---------------------------------------------------------------------------------------------
# encoding
# ---------------------------------------------------------------------------------------------
def test_encoder_ids():
    enc = ContextEncoder(["gap", "hour", "weekday"], ["Type"], [np.array(["cart", "view"])])
    # 2015-12-14 00:00 UTC is a Monday
    mon = 1450051200.0
    times = np.array([mon, mon + 1, mon + 3600 * 5 + 4, mon + 86400 * 2 + 10 ** 7])
    ev_in, ev_out = enc.event_rows(times, np.array([0, 3, 4]),
                                   {"Type": np.array(["view", "cart", "buy", "view"])})
    sizes = enc.sizes_in
    assert sizes == [GAP_BUCKETS + 1, 24, 7, 3]
    local = ev_in - np.concatenate([[0], np.cumsum(sizes)[:-1]])
    # gaps: first click, 1 s -> 1 + floor(log2 2) = 2, 18003 s -> 1 + 14 = 15, first click
    np.testing.assert_array_equal(local[:, 0], [0, 2, 15, 0])
    np.testing.assert_array_equal(local[:, 1], [0, 0, 5, (2 * 24 + 10 ** 7 // 3600) % 24])
    np.testing.assert_array_equal(local[:, 2], [0, 0, 0, (2 + 10 ** 7 // 86400) % 7])
    np.testing.assert_array_equal(local[:, 3], [2, 1, 0, 2])  # 'buy' unseen: 0
    np.testing.assert_array_equal(ev_out, ev_in[:, :3])


# ---------------------------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------------------------
def _gap_data(n_sessions=400, seed=0):
    """Sessions of 2 clicks: item 0, then item 1 when the second click comes within 5 s, else
    item 2. Only the next event's time tells them apart. A categorical 'Type' (view/cart) of
    the first click decides the second item's parity in a second table."""
    rng = np.random.default_rng(seed)
    fast = rng.random(n_sessions) < 0.5
    start = T0 + rng.integers(0, 86400 * 30, n_sessions)
    gap = np.where(fast, rng.integers(1, 5, n_sessions), rng.integers(600, 3000, n_sessions))
    sid = np.repeat(np.arange(n_sessions), 2)
    times = np.stack([start, start + gap], 1).ravel().astype(float)
    items = np.stack([np.zeros(n_sessions, int), np.where(fast, 1, 2)], 1).ravel()
    return {"SessionId": sid, "ItemId": items, "Time": times}


def _type_data(n_sessions=400, seed=1):
    rng = np.random.default_rng(seed)
    cart = rng.random(n_sessions) < 0.5
    sid = np.repeat(np.arange(n_sessions), 2)
    start = T0 + rng.integers(0, 86400 * 30, n_sessions)
    times = np.stack([start, start + 60], 1).ravel().astype(float)
    items = np.stack([np.zeros(n_sessions, int), np.where(cart, 3, 4)], 1).ravel()
    types = np.stack([np.where(cart, "cart", "view"), np.full(n_sessions, "view")], 1).ravel()
    return {"SessionId": sid, "ItemId": items, "Time": times, "Type": types}


def _model(**kw):
    return SessionGRU(**dict(dict(layers=[8], n_epochs=8, batch_size=16, n_sample=0,
                                  learning_rate=0.1, n_threads=1, random_state=0), **kw))


def test_output_context_learns_what_only_the_next_time_tells():
    data = _gap_data()
    plain = _model().fit(data).evaluate(data, cutoffs=(1,))["recall@1"]
    ctx = _model(context_output="multiply", context_time=["gap"]).fit(data)
    assert ctx.evaluate(data, cutoffs=(1,))["recall@1"] > 0.95 > 0.6 > plain


@pytest.mark.parametrize("cin", ["concat", "multiply"])
def test_input_context_column_learns_the_event_type(cin):
    data = _type_data()
    plain = _model().fit(data).evaluate(data, cutoffs=(1,))["recall@1"]
    ctx = _model(context_input=cin, context_time=[], context_columns=["Type"]).fit(data)
    assert ctx.evaluate(data, cutoffs=(1,))["recall@1"] > 0.95 > 0.6 > plain
    ids, _ = ctx.recommend([0], k=1, columns={"Type": ["cart"]})
    assert ids[0] == 3


def _mixed_data(seed=2, n_sessions=150):
    """Sessions of 2-6 clicks on 30 items with times and a 'Type'; a smaller ``n_sessions``
    gives the first sessions of the larger set."""
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(n_sessions):
        t = T0 + rng.integers(0, 86400 * 7)
        for _ in range(rng.integers(2, 7)):
            t += float(rng.integers(1, 4000))
            rows.append((s, int(rng.integers(0, 30)), t, str(rng.choice(["view", "cart"]))))
    return {"SessionId": np.array([r[0] for r in rows]), "ItemId": np.array([r[1] for r in rows]),
            "Time": np.array([r[2] for r in rows]), "Type": np.array([r[3] for r in rows])}


FULL = dict(context_input="concat", context_output="multiply", context_columns=["Type"])


def _transition_data(n_sessions=400, seed=3):
    """Sessions 0, 5, then 3 when the second click was a 'cart' (else 4): the second click's
    type decides what its history means, which only a context-dependent transition (or the
    input side) can read; it is the first click's state that W_h(c) transforms."""
    rng = np.random.default_rng(seed)
    cart = rng.random(n_sessions) < 0.5
    start = T0 + rng.integers(0, 86400 * 30, n_sessions)
    times = np.stack([start, start + 60, start + 120], 1).ravel().astype(float)
    items = np.stack([np.zeros(n_sessions, int), np.full(n_sessions, 5),
                      np.where(cart, 3, 4)], 1).ravel()
    types = np.stack([np.full(n_sessions, "view"), np.where(cart, "cart", "view"),
                      np.full(n_sessions, "view")], 1).ravel()
    return {"SessionId": np.repeat(np.arange(n_sessions), 3), "ItemId": items, "Time": times,
            "Type": types}


def test_context_transition_learns_what_the_click_makes_of_the_history():
    data = _transition_data()
    plain = _model(n_sample=8).fit(data).evaluate(data, cutoffs=(1,))["recall@1"]
    ctx = _model(n_sample=8, context_transition="multiply", context_time=[],
                 context_columns=["Type"]).fit(data)
    assert ctx.evaluate(data, cutoffs=(1,))["recall@1"] > 0.95 > 0.85 > plain
    assert np.abs(ctx.params_["context_h"]).max() > 0 and ctx.params_["context_in"].size == 0


def test_evaluation_equals_serving_and_does_not_depend_on_batch_size():
    data = _mixed_data()
    m = _model(n_epochs=2, n_sample=8, **FULL).fit(data)
    res = [m.evaluate(data, cutoffs=(20,), batch_size=bs, by_position=False) for bs in (1, 7)]
    assert res[0]["mrr@20"] == res[1]["mrr@20"] and res[0]["recall@20"] == res[1]["recall@20"]
    # every prediction again through recommend(times=..., now=the next click's time)
    rr = []
    sid, items, times, types = (data[k] for k in ("SessionId", "ItemId", "Time", "Type"))
    for s in np.unique(sid):
        i = np.flatnonzero(sid == s)
        for n in range(1, len(i)):
            ids, _ = m.recommend(items[i[:n]], k=20, times=times[i[:n]], now=times[i[n]],
                                 columns={"Type": types[i[:n]]})
            hit = np.flatnonzero(ids == items[i[n]])
            rr.append(1.0 / (hit[0] + 1) if len(hit) else 0.0)
    assert len(rr) == res[0]["n_events"]
    np.testing.assert_allclose(np.mean(rr), res[0]["mrr@20"], rtol=1e-6)


def test_model_file_round_trip(tmp_path):
    data = _mixed_data()
    for kw in (FULL, dict(context_input="multiply", context_time=["hour", "weekday"]),
               dict(context_transition="multiply", context_time=["gap"])):
        m = _model(n_epochs=1, n_sample=8, **kw).fit(data)
        m.save(tmp_path / "m.npz")
        back = SessionGRU.load(tmp_path / "m.npz")
        lists = lambda d: {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}
        assert lists(back.get_params()) == lists(m.get_params())
        req = dict(times=[T0, T0 + 30], now=T0 + 99, columns={"Type": ["view", "cart"]})
        a, b = m.recommend([1, 2], 5, **req), back.recommend([1, 2], 5, **req)
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
        assert back.evaluate(data)["mrr@20"] == m.evaluate(data)["mrr@20"]


def test_files_without_the_transition_table_still_load(tmp_path):
    """A context model file written before ``context_transition`` existed (no ``context_h``,
    no option in the header) loads and scores as before."""
    import json
    from model_files import read, write
    data = _mixed_data()
    m = _model(n_epochs=1, n_sample=8, **FULL).fit(data)
    m.save(tmp_path / "m.npz")
    arrays = read(tmp_path / "m.npz")
    assert arrays["context_h"].shape[0] == 0
    del arrays["context_h"]
    header = json.loads(bytes(arrays["header"]).decode("utf-8"))
    del header["params"]["context_transition"]
    arrays["header"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    write(tmp_path / "old.npz", arrays)
    back = SessionGRU.load(tmp_path / "old.npz")
    assert back.context_transition == "none"
    req = dict(times=[T0, T0 + 30], now=T0 + 99, columns={"Type": ["view", "cart"]})
    np.testing.assert_array_equal(back.recommend([1, 2], 5, **req)[1],
                                  m.recommend([1, 2], 5, **req)[1])


def test_feature_model_takes_context():
    from gru_engine.features import CategoricalFeatures
    data = _gap_data()
    feats = {"cat": CategoricalFeatures(np.arange(3), np.array([0, 1, 1]), dim=2)}
    m = FeatureSessionGRU(layers=[8], n_epochs=8, batch_size=16, n_sample=0, n_threads=1,
                          random_state=0, context_output="multiply", context_time=["gap"])
    m.fit(data, item_features=feats)
    assert m.evaluate(data, cutoffs=(1,))["recall@1"] > 0.95
    # recommend / predict_next take the request's time as SessionGRU's do
    for gap, want in ((2.0, 1), (2000.0, 2)):
        assert m.recommend([0], k=1, times=[T0], now=T0 + gap)[0][0] == want
        scores = m.predict_next([[0]], times=[[T0]], now=[T0 + gap])
        assert m.item_index_.ids[np.argmax(scores[0])] == want
    with pytest.raises(ValueError, match="times="):
        m.recommend([0])
    new = {"cat": CategoricalFeatures(np.array([7]), np.array([1]), dim=2)}
    with pytest.raises(ValueError, match="new items"):
        m.recommend([0, 7], times=[T0, T0 + 1], now=T0 + 2, item_features=new)
    with pytest.raises(ValueError, match="architecture='feature'"):
        FeatureSessionGRU(architecture="feature", context_input="concat", n_epochs=1,
                          n_threads=1).fit(data, item_features=feats)


# ---------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------
def test_ordinal_times_are_refused():
    data = _gap_data()
    data["Time"] = np.arange(len(data["Time"]), dtype=float)
    with pytest.raises(ValueError, match="real timestamps.*'Time'"):
        _model(context_input="concat").fit(data)
    # categorical columns alone need no timestamps
    d = _type_data()
    d["Time"] = np.arange(len(d["Time"]), dtype=float)
    _model(n_epochs=1, context_input="concat", context_time=[], context_columns=["Type"]).fit(d)


@pytest.mark.parametrize("kw,match", [
    (dict(context_input="sum"), "context_input"),
    (dict(context_output="concat"), "context_output"),
    (dict(context_input="concat", context_time=["minute"]), "minute"),
    (dict(context_input="concat", context_time=[]), "at least one feature"),
    (dict(context_output="multiply", context_time=[], context_columns=["Type"],
          context_input="concat"), "time features"),
    (dict(context_columns=["Type"]), "input side only"),
    (dict(context_transition="add"), "context_transition"),
    (dict(context_transition="multiply", context_time=[]), "at least one feature"),
])
def test_bad_settings(kw, match):
    with pytest.raises(ValueError, match=match):
        _model(**kw).fit(_type_data())


def test_missing_column_and_unsupported_calls(tmp_path):
    with pytest.raises(ValueError, match="'Kind'"):
        _model(context_input="concat", context_columns=["Kind"]).fit(_type_data())
    m = _model(n_epochs=1, context_input="concat").fit(_gap_data())
    with pytest.raises(ValueError, match="times="):
        m.recommend([0])
    with pytest.raises(ValueError, match="order"):
        m.recommend([0, 1], times=[T0 + 9, T0], now=T0 + 10)
    with pytest.raises(ValueError, match="predict_next needs times="):
        m.predict_next([[0]])


def check_store_answers_as_recommend(store, reference, data) -> tuple:
    """Sessions 0 and 1 of ``data`` (4 clicks each) through ``store``: every answer equals
    ``reference.recommend`` with the request at the click's time, and ``recommend_for`` of a
    later request equals it at that time. Returns ``(store answer, clicks of session 0)``
    of the later request."""
    sid, items, times, types = (data[k] for k in ("SessionId", "ItemId", "Time", "Type"))
    clicks = {s: np.flatnonzero(sid == s)[:4] for s in (0, 1)}
    for n in range(4):
        batch = [s for s in (0, 1) if n < len(clicks[s])]
        ev = [clicks[s][n] for s in batch]
        res = store.step(batch, items[ev], times=times[ev], columns={"Type": types[ev]})
        for j, s in enumerate(batch):
            i = clicks[s][:n + 1]
            want = reference.recommend(items[i], 5, times=times[i], now=times[i[-1]],
                                       columns={"Type": types[i]})
            np.testing.assert_array_equal(res.items[j], want[0])
            np.testing.assert_allclose(res.scores[j], want[1], rtol=1e-5, atol=1e-6)
    i = clicks[0]
    later = times[i[-1]] + 5000.0
    res = store.recommend_for([0], now=later)
    want = reference.recommend(items[i], 5, times=times[i], now=later,
                               columns={"Type": types[i]})
    np.testing.assert_array_equal(res.items[0], want[0])
    np.testing.assert_allclose(res.scores[0], want[1], rtol=1e-5, atol=1e-6)
    return res, i


def test_session_store_answers_as_recommend(tmp_path):
    from gru_engine.serving import SessionStore
    data = _mixed_data()
    m = _model(n_epochs=2, n_sample=8, **FULL).fit(data)
    store = SessionStore(m, capacity=2, k=5, n_threads=2)
    res, i = check_store_answers_as_recommend(store, m, data)
    items, times = data["ItemId"], data["Time"]
    assert not np.array_equal(store.recommend_for([0], now=times[i[-1]]).scores[0],
                              res.scores[0])  # the request's time changes the answer
    with pytest.raises(ValueError, match="times="):
        store.step([0], items[:1])
    with pytest.raises(ValueError, match="columns="):
        store.step([0], items[:1], times=times[:1])
    with pytest.raises(ValueError, match="now="):
        store.recommend_for([0])


def _snapshot_header(path) -> dict:
    import json
    with np.load(path) as f:
        return json.loads(bytes(f["header"]).decode())


def _snapshot_store(m, data):
    """A store over ``m`` with sessions 0..3 of ``data`` live after 3 clicks each (capacity 8,
    k 5), and the events' arrays."""
    from gru_engine.serving import SessionStore
    store = SessionStore(m, capacity=8, k=5, n_threads=1)
    sid, items, times, types = (data[k] for k in ("SessionId", "ItemId", "Time", "Type"))
    clicks = {s: np.flatnonzero(sid == s) for s in range(4)}
    for n in range(3):
        batch = [s for s in clicks if n < len(clicks[s])]
        ev = [clicks[s][n] for s in batch]
        store.step(batch, items[ev], times=times[ev], columns={"Type": types[ev]})
    return store, clicks, (items, times, types)


def test_session_store_snapshot_keeps_each_sessions_context(tmp_path):
    """A snapshot of a store over a context-aware model keeps each session's last click time,
    the time before it and its column ids: after a restore, recommend_for at a later time and
    the next clicks (whose gap bucket needs the last click's time) answer bit for bit as the
    store that was never saved."""
    from gru_engine.serving import SessionStore
    data = _mixed_data()
    m = _model(n_epochs=2, n_sample=8, **FULL).fit(data)
    store, clicks, (items, times, types) = _snapshot_store(m, data)
    path = tmp_path / "s.npz"
    store.save(path)
    assert _snapshot_header(path)["format_version"] == 2 and _snapshot_header(path)["context"]
    back = SessionStore.load(path, m, n_threads=1)
    assert back.session_ids() == store.session_ids()
    sids = sorted(clicks)
    later = max(times[clicks[s][2]] for s in sids) + 700.0
    a, b = store.recommend_for(sids, now=later), back.recommend_for(sids, now=later)
    np.testing.assert_array_equal(a.items, b.items)
    np.testing.assert_array_equal(a.scores, b.scores)
    # and against recommend with the session's whole history
    want = m.recommend(items[clicks[0][:3]], 5, times=times[clicks[0][:3]], now=later,
                       columns={"Type": types[clicks[0][:3]]})
    np.testing.assert_array_equal(b.items[0], want[0])
    batch = [s for s in sids if len(clicks[s]) > 3]
    ev = [clicks[s][3] for s in batch]
    req = dict(times=times[ev], columns={"Type": types[ev]})
    a, b = store.step(batch, items[ev], **req), back.step(batch, items[ev], **req)
    np.testing.assert_array_equal(a.items, b.items)
    np.testing.assert_array_equal(a.scores, b.scores)
    # a restore that forgot the times would answer differently: the context matters here
    blind = SessionStore.load(path, m, n_threads=1)
    blind._context.last_time[:] = 0.0
    assert not np.array_equal(blind.step(batch, items[ev], **req).scores, a.scores)


def test_session_store_snapshot_refuses_a_context_that_does_not_fit(tmp_path):
    from gru_engine.serving import SessionStore
    data = _mixed_data()
    m = _model(n_epochs=1, n_sample=8, **FULL).fit(data)
    store, _, _ = _snapshot_store(m, data)
    path = tmp_path / "s.npz"
    store.save(path)
    plain = _model(n_epochs=1, n_sample=8).fit(data)
    with pytest.raises(ValueError, match="session context does not fit"):
        SessionStore.load(path, plain)
    plain_path = tmp_path / "plain.npz"
    SessionStore(plain).save(plain_path)
    # a snapshot without context stays version 1 (readable by versions without context)
    assert _snapshot_header(plain_path)["format_version"] == 1
    assert "context" not in _snapshot_header(plain_path)
    with pytest.raises(ValueError, match="session context does not fit"):
        SessionStore.load(plain_path, m)
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    n = len(arrays["session_ids"])
    cases = {"context_last_cols": np.full((n, 1), 3, np.int32),  # vocabulary: 2 values + 0
             "context_last_time": np.full(n, np.nan),
             "context_prev_time": np.zeros(n, np.float32)}
    for name, value in cases.items():
        bad = tmp_path / f"bad_{name}.npz"
        np.savez(bad, **dict(arrays, **{name: value}))
        with pytest.raises(ValueError, match=name):
            SessionStore.load(bad, m)


def _session_lists(data, sids):
    sid, items, times, types = (data[k] for k in ("SessionId", "ItemId", "Time", "Type"))
    idx = [np.flatnonzero(sid == s) for s in sids]
    return ([items[i] for i in idx], [times[i] for i in idx], {"Type": [types[i] for i in idx]})


def test_predict_next_with_times_equals_recommend():
    data = _mixed_data()
    m = _model(n_epochs=2, n_sample=8, **FULL).fit(data)
    seqs, times, cols = _session_lists(data, range(12))
    scores = m.predict_next(seqs, times=times, columns=cols)
    later = [t[-1] + 900.0 * (j % 3) for j, t in enumerate(times)]
    at_later = m.predict_next(seqs, times=times, now=later, columns=cols)
    assert scores.shape == (12, m.n_items_)
    for j in range(12):
        for got, now in ((scores[j], times[j][-1]), (at_later[j], later[j])):
            ids, vals = m.recommend(seqs[j], k=m.n_items_, times=times[j], now=now,
                                    columns={"Type": cols["Type"][j]})
            np.testing.assert_allclose(got[m.item_index_.lookup(ids)], vals, rtol=1e-5,
                                       atol=1e-6)
    assert not np.allclose(scores[1], at_later[1])  # the request's time matters
    with pytest.raises(ValueError, match="times="):
        m.predict_next(seqs, columns=cols)
    with pytest.raises(ValueError, match=r"columns= with \['Type'\]"):
        m.predict_next(seqs, times=times)
    with pytest.raises(ValueError, match="2 entries for"):
        m.predict_next(seqs[:1], times=[times[0][:2]], columns={"Type": cols["Type"][:1]})
    with pytest.raises(ValueError, match="order"):
        m.predict_next(seqs[:1], times=times[:1], now=[times[0][-1] - 1.0],
                       columns={"Type": cols["Type"][:1]})
    assert m.predict_next([]).shape == (0, m.n_items_)


def test_score_file_reads_each_clicks_context(tmp_path):
    from gru_engine import scoring
    from gru_engine.data import write_events
    data = _mixed_data()
    m = _model(n_epochs=2, n_sample=8, **FULL).fit(data)
    m.save(tmp_path / "m.npz")
    keep = data["SessionId"] < 40
    ev = {k: v[keep] for k, v in data.items()}
    ev["ItemId"] = ev["ItemId"].copy()
    ev["ItemId"][3] = 999  # an unknown click: dropped with its context
    order = np.lexsort((np.random.default_rng(0).random(keep.sum()), ev["SessionId"]))
    shuffled = {k: v[order] for k, v in ev.items()}  # rows shuffled within sessions
    write_events(tmp_path / "s.tsv", shuffled)
    stats = scoring.score_file(tmp_path / "m.npz", tmp_path / "s.tsv", tmp_path / "top.tsv",
                               k=5, chunk_sessions=7, n_threads=1)
    assert stats.n_sessions == 40 and stats.n_unknown_item_events == 1
    rows = [line.split("\t") for line in (tmp_path / "top.tsv").read_text().splitlines()[1:]]
    seqs, times, cols = _session_lists(ev, range(40))
    for j in range(40):
        known = m.item_index_.lookup(seqs[j]) >= 0
        ids, vals = m.recommend(seqs[j][known], k=5, times=times[j][known],
                                now=times[j][known][-1],
                                columns={"Type": cols["Type"][j][known]})
        got = [r for r in rows if int(r[0]) == j]
        assert [int(r[2]) for r in got] == ids.tolist()
        np.testing.assert_allclose([float(r[3]) for r in got], vals, rtol=1e-5)
    no_type = {k: v for k, v in shuffled.items() if k != "Type"}
    write_events(tmp_path / "bad.tsv", no_type)
    with pytest.raises(ValueError, match="'Type'"):
        scoring.score_file(tmp_path / "m.npz", tmp_path / "bad.tsv", tmp_path / "x.tsv")


def test_param_string():
    from gru_engine.params import parse_param_string
    p = parse_param_string("context_input=concat,context_time=gap/hour,context_columns=Type")
    assert p == {"context_input": "concat", "context_time": ["gap", "hour"],
                 "context_columns": ["Type"]}
    assert parse_param_string("context_time=")["context_time"] == []
    m = SessionGRU.from_param_string("context_output=multiply,context_time=weekday")
    assert validate(dict(DEFAULTS, **{k: getattr(m, k) for k in DEFAULTS}))["context_time"] == \
        ["weekday"]

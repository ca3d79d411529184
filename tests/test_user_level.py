"""The user-level GRU (gru_engine.user_level, backends/cpu/user_trainer.py): gradients of one
whole training step against central finite differences (float64), the user-parallel schedule,
the fallback to the plain model, files, scoring and errors."""
import numpy as np
import pytest

from gru_engine import params as hp
from gru_engine.backends.cpu.user_trainer import UserTrainer
from gru_engine.evaluation import evaluate_session_aware
from gru_engine.model import SessionGRU
from gru_engine.network import L_H, L_HOFF, PARAM_KEYS, build_layout
from gru_engine.session_aware import build_user_sessions
from gru_engine.synthetic import session_aware_events, session_aware_split
from gru_engine.user_batching import UserSchedule
from gru_engine.user_level import U_HU, U_ITEMS, U_SIN, user_layout

N_ITEMS, BATCH, N_SAMPLE, HU = 9, 4, 3, 3


def _hyper(n_sample=N_SAMPLE):
    return hp.hyper(hp.validate(dict(hp.DEFAULTS, n_sample=n_sample, batch_size=BATCH,
                                     logq=0.0, sample_store_size=100)))


def _problem(mode, user_input, layers, input_mode, seed):
    rng = np.random.default_rng(seed)
    lay = build_layout(N_ITEMS, "id", "concat", input_mode, list(layers), 3, list(layers), [],
                       rng, np.float64)
    flat = {k: lay[k] for k in PARAM_KEYS}
    flat.update(user_layout(HU, mode, user_input, lay["Hc"], lay["LI"], N_ITEMS, rng,
                            np.float64))
    for key in ("theta", "U", "By"):  # non-zero biases, so that their gradients are exercised
        flat[key] += rng.normal(0, 0.1, flat[key].shape)
    flat["Wy"] *= 3.0
    # session bags for 'items' (sessions 0..2 of an epoch CSR), combined states for 'hidden'
    items = rng.integers(0, N_ITEMS, 10).astype(np.int32)
    offsets = np.array([0, 3, 7, 10], np.int64)
    UI = flat["UI"]
    S = (np.array([0, 2, 1, 2], np.int64) if UI[U_ITEMS]
         else rng.normal(0, 0.5, (BATCH, int(UI[U_SIN]))))
    state = {"S": S, "Ub": rng.normal(0, 0.5, (BATCH, int(UI[U_HU]))),
             "has": np.array([True, True, False, True]),
             "reset": np.array([True, False, True, False])}
    hprev = [rng.normal(0, 0.5, (BATCH, h)) for h in layers]
    hprev[0][2] = 0.0
    in_items = rng.integers(0, N_ITEMS, BATCH).astype(np.int32)
    cols = np.concatenate([rng.integers(0, N_ITEMS, BATCH),
                           rng.integers(0, N_ITEMS, N_SAMPLE)]).astype(np.int32)
    return flat, (items, offsets), state, hprev, in_items, cols


def _trainer(flat, epoch, layers):
    tr = UserTrainer(flat, _hyper(), np.ones(N_ITEMS, np.int64), walks=[], start_times=None,
                     shuffle=False, rng=None)
    from gru_engine.user_level import SessionBags
    tr.bags = SessionBags(*epoch)
    return tr


def _set_hidden(tr, flat, hprev):
    LI = flat["LI"]
    for g, h in enumerate(hprev):
        H, off = int(LI[g, L_H]), int(LI[g, L_HOFF])
        tr.work.HP[BATCH * off:BATCH * (off + H)].reshape(BATCH, H)[:] = h


@pytest.mark.parametrize("mode,user_input,layers,input_mode", [
    ("all", "items", (4,), "constrained"),
    ("init", "items", (4,), "onehot"),
    ("both", "hidden", (4, 3), "embedding"),
    ("init", "hidden", (3, 2), "constrained"),
    ("all", "hidden", (4,), "onehot"),
])
def test_step_gradients_match_finite_differences(mode, user_input, layers, input_mode):
    flat, epoch, state, hprev, in_items, cols = _problem(mode, user_input, layers, input_mode, 0)
    tr = _trainer(flat, epoch, layers)
    C = len(cols)

    def loss():
        _set_hidden(tr, flat, hprev)
        return tr.forward_backward(in_items, BATCH, cols, C, **state)

    _, grads = loss()
    grads = {k: v.copy() for k, v in grads.items()}
    assert np.abs(grads["U"]).max() > 0
    worst = {}
    for key in ("theta", "T", "Wy", "By", "U"):
        arr = flat[key]
        fd = np.zeros_like(arr).reshape(-1)
        view = arr.reshape(-1)
        for j in range(view.size):
            old = view[j]
            view[j] = old + 1e-6
            lp = loss()[0]
            view[j] = old - 1e-6
            lm = loss()[0]
            view[j] = old
            fd[j] = (lp - lm) / 2e-6
        g = grads[key].reshape(-1)
        scale = max(np.linalg.norm(fd), 1e-8)
        worst[key] = np.linalg.norm(g - fd) / scale
    assert max(worst.values()) < 1e-6, worst


def _walk_steps(offsets, walks, order, bs, min_rows=2):
    """Every step of a UserSchedule: list of (cur, reset, new_user, last, session) tuples."""
    sch = UserSchedule(offsets, walks, order, bs, min_rows)
    steps = []
    while sch.n_rows > 0:
        steps.append(tuple(np.array(a) for a in sch.rows()) + (sch.src[:sch.n_rows].copy(),))
        sch.advance()
    return steps


def test_user_schedule_walks_each_users_sessions_in_order():
    # sessions (CSR): lengths 3, 2, 1 (too short: skipped), 4, 2; users: [0, 3], [1], [4, 2]
    offsets = np.cumsum([0, 3, 2, 1, 4, 2]).astype(np.int64)
    walks = [np.array([0, 3]), np.array([1]), np.array([4, 2])]
    steps = _walk_steps(offsets, walks, np.array([0, 1, 2]), bs=2, min_rows=1)
    # row 0: user 0 = session 0 inputs 0, 1 then session 3 inputs 6, 7, 8;
    # row 1: user 1 = session 1 input 3, then user 2 = session 4 input 10 (session 2 skipped)
    rows = [[int(c) for c in s[0]] for s in steps]
    assert rows == [[0, 3], [1, 10], [6], [7], [8]]
    assert [list(s[1]) for s in steps] == [[True, True], [False, True], [True], [False], [False]]
    assert [list(s[2]) for s in steps] == [[True, True], [False, True], [False], [False], [False]]
    assert [list(s[3]) for s in steps] == [[False, True], [True, True], [False], [False], [True]]
    assert [list(s[4]) for s in steps] == [[0, 1], [0, 4], [3], [3], [3]]
    # the second row drops out after step 2; the first keeps its place
    assert [list(s[5]) for s in steps][2:] == [[0], [0], [0]]


def test_user_schedule_covers_every_input_once_in_time_order_per_user():
    rng = np.random.default_rng(3)
    lengths = rng.integers(1, 7, 40)
    offsets = np.r_[0, np.cumsum(lengths)].astype(np.int64)
    perm = rng.permutation(40)
    walks = [np.sort(perm[a:a + 5]) for a in range(0, 40, 5)]
    steps = _walk_steps(offsets, walks, rng.permutation(len(walks)), bs=3, min_rows=1)
    seen = np.concatenate([s[0] for s in steps])
    expected = np.concatenate([np.arange(offsets[s], offsets[s + 1] - 1) for s in range(40)])
    assert np.array_equal(np.sort(seen), np.sort(expected))
    # a row keeps one user: its inputs follow that user's sessions in walk order
    owner = {int(s): k for k, w in enumerate(walks) for s in w}
    pos = {int(s): j for w in walks for j, s in enumerate(w)}
    for k in range(len(steps) - 1):
        cur, _, _, _, sess, _ = steps[k]
        nxt_sess, new_user, src = steps[k + 1][4], steps[k + 1][2], steps[k + 1][5]
        for r in range(len(nxt_sess)):
            if not new_user[r]:
                a, b = int(sess[src[r]]), int(nxt_sess[r])
                assert owner[a] == owner[b] and pos[a] <= pos[b]


def _data(n_users=40, persistent=True, seed=0):
    ev, _ = session_aware_events(n_users=n_users, sessions_per_user=4, n_items=60, n_tastes=6,
                                 persistent=persistent, seed=seed)
    return session_aware_split(ev)


def _small(**kw):
    base = dict(layers=[8], batch_size=8, n_sample=0, n_epochs=2, random_state=1, n_threads=1,
                user_layers=5)
    base.update(kw)
    return SessionGRU(**base)


def test_fit_without_user_column_names_it():
    train, _ = _data()
    no_user = {k: v for k, v in train.items() if k != "UserId"}
    with pytest.raises(ValueError, match=r"user_layers=5 needs a user column 'UserId'"):
        _small().fit(no_user)
    with pytest.raises(ValueError, match=r"needs a user column 'Customer'"):
        _small().fit(train, user_key="Customer")
    SessionGRU(layers=[8], n_epochs=1, n_sample=0, n_threads=1).fit(no_user)  # plain: fine


@pytest.mark.parametrize("bad,match", [
    (dict(user_layers=-1), "user_layers must be an integer >= 0"),
    (dict(user_mode="sideways"), "user_mode must be one of"),
    (dict(user_input="clicks"), "user_input must be one of"),
    (dict(user_dropout=1.0), r"user_dropout must be in \[0, 1\)"),
])
def test_bad_user_options_raise(bad, match):
    train, _ = _data()
    with pytest.raises(ValueError, match=match):
        _small(**bad).fit(train)


@pytest.mark.parametrize("mode,user_input", [("all", "items"), ("init", "hidden"),
                                             ("both", "items")])
def test_save_load_keeps_scores(tmp_path, mode, user_input):
    train, test = _data()
    m = _small(user_mode=mode, user_input=user_input).fit(train)
    m.save(tmp_path / "m.npz")
    m2 = SessionGRU.load(tmp_path / "m.npz")
    for k in ("UI", "U"):
        assert np.array_equal(m.params_[k], m2.params_[k])
    te, _, _ = build_user_sessions(test, m.item_index_)
    hi, _, _ = build_user_sessions(train, m.item_index_)
    r1 = evaluate_session_aware(m.scorer(), te, hi, cutoffs=(5,))
    r2 = evaluate_session_aware(m2.scorer(), te, hi, cutoffs=(5,))
    assert r1["user_aware"] and r1["recall@5"] == r2["recall@5"] and r1["mrr@5"] == r2["mrr@5"]


def test_file_with_wrong_user_layout_is_refused(tmp_path):
    from gru_engine.io import ModelFileError, read_arrays, write_npz
    train, _ = _data()
    _small().fit(train).save(tmp_path / "m.npz")
    arrays = read_arrays(str(tmp_path / "m.npz"))
    arrays.pop("U")
    write_npz(str(tmp_path / "bad.npz"), arrays)
    with pytest.raises(ModelFileError):
        SessionGRU.load(tmp_path / "bad.npz")


def test_sessions_without_user_history_score_as_the_plain_network():
    """The fallback: a user model's scorer on a session without a user state gives exactly the
    scores of the plain scorer over the same session network."""
    from gru_engine.backends.cpu_scoring import Scorer
    train, test = _data()
    for mode in ("all", "init"):
        m = _small(user_mode=mode).fit(train)
        plain = Scorer({k: m.params_[k] for k in PARAM_KEYS}, False)
        seqs = [m.item_index_.to_index(np.asarray(s)) for s in ([1, 5, 7], [2, 2, 9, 4])]
        got = m._predict_next(m.scorer(), seqs)
        want = m._predict_next(plain, seqs)
        assert np.array_equal(got, want)


def test_user_state_changes_scores_and_replay_matches_a_naive_one():
    """begin_users/start_sessions: the user's first test click is scored from the state a
    naive replay of the user's history gives (float64 NumPy of the same formulas)."""
    from gru_engine.user_level import gru_step, user_views
    train, test = _data()
    m = _small(user_mode="both", user_input="hidden").fit(train)
    hi, _, _ = build_user_sessions(train, m.item_index_)
    sc = m.scorer()
    sc.begin(1)
    sc.begin_users(hi)
    user = hi.user_ids[3]
    sc.start_sessions(np.array([0]), np.array([user]), np.array([True]))
    item = np.array([m.item_index_.to_index(np.asarray([test["ItemId"][0]]))[0]], np.int32)
    with_user = sc.score(np.array([0]), item, np.array([True])).copy()
    sc.begin(1)
    without = sc.score(np.array([0]), item, np.array([True])).copy()
    assert np.abs(with_user - without).max() > 1e-4
    # naive replay of user 3's history with the plain scorer's combined states
    from gru_engine.backends.cpu_scoring import Scorer
    plain = Scorer({k: m.params_[k] for k in PARAM_KEYS}, False)
    v = user_views(m.params_["UI"], m.params_["U"].astype(np.float64))
    Hu = m.params_["UI"][U_HU]
    u, has = np.zeros((1, Hu)), False
    for s in hi.sessions_by_user()[3]:
        clicks = hi.sessions.items[hi.sessions.offsets[s]:hi.sessions.offsets[s + 1]]
        plain.begin(1)
        h0 = None
        if has:  # the session starts from the user state: h0 and the extra gates
            h0 = np.tanh(u @ v["Wi"] + v["bi"])
        hc = _naive_session(m, plain, clicks[:-1], h0, u if has else None, v)
        u = gru_step(hc @ v["Wx"] + v["bx"], u, v["Wh"], v["bhn"])[0]
        has = True
    h0 = np.tanh(u @ v["Wi"] + v["bi"])
    hc = _naive_session(m, plain, item, h0, u, v)
    Wy, By = m.params_["Wy"].astype(np.float64), m.params_["By"].astype(np.float64)
    np.testing.assert_allclose(with_user[0], (hc @ Wy.T + By)[0], rtol=2e-4, atol=2e-4)


def _naive_session(m, plain, clicks, h0, u, v):
    """Combined state (1, Hc) after ``clicks`` of a one-layer ID network (float64 NumPy),
    starting from ``h0`` (or zeros) with extra gates ``u Wu`` (or none)."""
    from gru_engine.network import subnet_views
    from gru_engine.user_level import gru_step
    sv = subnet_views(m.params_, 0)
    Wx = sv["Wx"][0].astype(np.float64)
    E = m.params_["Wy"].astype(np.float64)  # constrained input: the ID block of Wy
    h = np.zeros((1, Wx.shape[1] // 3)) if h0 is None else h0
    for it in clicks:
        gx = E[it:it + 1] @ Wx + sv["bx"][0]
        if u is not None:
            gx = gx + u @ v["Wu"]
        h = gru_step(gx, h, sv["Wh"][0].astype(np.float64), sv["bhn"][0].astype(np.float64))[0]
    return h


def test_recommend_with_user_sessions_uses_the_user_state():
    train, _ = _data()
    m = _small(user_mode="both").fit(train)
    ids = m.item_index_.ids
    history = [list(ids[[1, 2, 3]]), list(ids[[4, 5]]), [ids[6]]]
    plain = m.recommend([ids[7], ids[8]], k=5)
    user = m.recommend([ids[7], ids[8]], k=5, user_sessions=history)
    assert not np.array_equal(plain[1], user[1])
    # the same as the session-aware scorer fed that history
    from gru_engine.session_aware import one_user_history
    sc = m.scorer()
    sc.begin(1)
    sc.begin_users(one_user_history([m.item_index_.to_index(np.asarray(s)) for s in history]))
    sc.start_sessions(np.array([0]), np.array([0]), np.array([True]))
    sc.score(np.array([0]), m.item_index_.to_index(np.asarray([ids[7]])), np.array([True]))
    s = sc.score(np.array([0]), m.item_index_.to_index(np.asarray([ids[8]])), np.array([False]))
    best = np.argsort(-s[0], kind="stable")[:5]
    assert np.array_equal(ids[best], user[0])
    # no usable history: the plain answer; a plain model refuses user_sessions
    assert np.array_equal(m.recommend([ids[7], ids[8]], k=5, user_sessions=[[ids[1]]])[0],
                          plain[0])
    with pytest.raises(ValueError, match="user_sessions needs a user-level model"):
        _small(user_layers=0).fit(train).recommend([ids[7]], user_sessions=history)


def test_user_level_with_context_is_refused():
    train, _ = _data()
    with pytest.raises(ValueError, match="cannot be combined"):
        _small(context_input="concat").fit(train)


def test_fit_is_reproducible_and_plain_evaluate_works():
    train, test = _data()
    a = _small(shuffle_sessions=True, user_dropout=0.2).fit(train)
    b = _small(shuffle_sessions=True, user_dropout=0.2).fit(train)
    for k in ("theta", "T", "Wy", "By", "U"):
        assert np.array_equal(a.params_[k], b.params_[k])
    assert "UI" not in _small(user_layers=0).fit(train).params_
    res = a.evaluate(test, cutoffs=(5,))  # no users: every session scored as a plain session
    assert 0.0 <= res["recall@5"] <= 1.0


@pytest.mark.parametrize("mode,user_input", [("all", "items"), ("init", "hidden"),
                                             ("both", "items")])
def test_session_store_keeps_user_states(mode, user_input, tmp_path):
    train, _ = _data()
    check_store_keeps_user_states(_small(user_mode=mode, user_input=user_input).fit(train),
                                  train, tmp_path)


def check_store_keeps_user_states(m, train, tmp_path):
    """A user's ended sessions give the state of its next session: the store answers as
    recommend(..., user_sessions=...) does; anonymous sessions as the plain recommend (also
    run over a CUDA-trained model by tests/test_user_cuda.py)."""
    from gru_engine.serving import SessionStore
    ids = m.item_index_.ids
    store = SessionStore(m, capacity=4, k=5)
    for it in ids[[1, 2, 3]]:
        store.step(["a"], [it], user_ids=[7])
    store.step(["short"], [ids[9]], user_ids=[7])  # one click: no user update at its end
    assert store.end("a") and store.end("short")
    for it in ids[[4, 5]]:
        store.step(["b"], [it], user_ids=[7])
    store.end("b")
    got = store.step(["c", "anon"], [ids[7], ids[7]], user_ids=[7, None])
    want = m.recommend([ids[7]], k=5, user_sessions=[list(ids[[1, 2, 3]]), list(ids[[4, 5]])])
    assert np.array_equal(got.items[0], want[0])
    np.testing.assert_allclose(got.scores[0], want[1], rtol=1e-5, atol=1e-5)
    plain = m.recommend([ids[7]], k=5)
    assert np.array_equal(got.items[1], plain[0])
    assert not np.allclose(want[1], plain[1])  # the user state matters
    # no click: the replay of the first click keeps the user state
    again = store.recommend_for(["c", "anon"])
    assert np.array_equal(again.items, got.items)
    nxt = store.step(["c"], [ids[8]], user_ids=[7])
    want2 = m.recommend([ids[7], ids[8]], k=5,
                        user_sessions=[list(ids[[1, 2, 3]]), list(ids[[4, 5]])])
    assert np.array_equal(nxt.items[0], want2[0])
    with pytest.raises(ValueError, match="user_ids must be 1-D"):
        store.step(["c"], [ids[8]], user_ids=[7, 8])
    # a snapshot keeps the users' states and the live sessions' users
    store.save(tmp_path / "s.npz")
    back = SessionStore.load(tmp_path / "s.npz", m)
    assert np.array_equal(back.step(["c"], [ids[9]]).items, store.step(["c"], [ids[9]]).items)
    back.end("c")
    store.end("c")
    a, b = back.step(["d"], [ids[2]], user_ids=[7]), store.step(["d"], [ids[2]], user_ids=[7])
    assert np.array_equal(a.items, b.items) and np.allclose(a.scores, b.scores)
    with pytest.raises(ValueError, match="user states do not fit the model"):
        SessionStore.load(tmp_path / "s.npz", _small(user_layers=0).fit(train))
    plain_store = SessionStore(_small(user_layers=0).fit(train))
    with pytest.raises(ValueError, match="user_ids needs a model with a user-level GRU"):
        plain_store.step(["x"], [ids[1]], user_ids=[1])


def test_session_store_eviction_updates_the_user_like_end():
    from gru_engine.serving import SessionStore
    train, _ = _data()
    m = _small().fit(train)
    ids = m.item_index_.ids
    store = SessionStore(m, capacity=2, k=5)
    store.step(["a", "a"], ids[[1, 2]], user_ids=[7, 7])
    store.step(["z", "y"], ids[[3, 4]])  # "a" is the least recently used: evicted by "y"
    assert "a" not in store
    got = store.step(["c"], [ids[7]], user_ids=[7])
    want = m.recommend([ids[7]], k=5, user_sessions=[list(ids[[1, 2]])])
    assert np.array_equal(got.items[0], want[0])


def test_plain_fit_does_not_load_the_user_kernels():
    """The user trainer's Numba kernels (backends/cpu/user_step.py) compile only for
    user_layers > 0: a plain fit in a fresh process never imports them."""
    import subprocess
    import sys
    code = ("import sys\n"
            "from gru_engine.model import SessionGRU\n"
            "from gru_engine.synthetic import session_aware_events, session_aware_split\n"
            "ev, _ = session_aware_events(n_users=10, sessions_per_user=3, n_items=12, "
            "n_tastes=3, persistent=True, seed=0)\n"
            "train, _ = session_aware_split(ev)\n"
            "SessionGRU(layers=[4], batch_size=4, n_sample=0, n_epochs=1, n_threads=1)"
            ".fit(train)\n"
            "print('gru_engine.backends.cpu.user_step' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip().splitlines()[-1] == "False"

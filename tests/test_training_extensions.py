"""Training in production for the extensions on the CPU (issue 14): checkpoints and resume of
context-aware, user-level and output-feature models give the parameters of an uninterrupted
run (on the emulated CUDA backend too), and the refusals that remain."""
import numpy as np
import pytest

from gru_engine import FeatureSessionGRU, SessionGRU
from gru_engine.checkpoint import load_checkpoint
from test_context import FULL, _mixed_data
from test_output_features import _data as _feature_data
from test_training import _same, _stop_after
from test_user_level import _data as _user_data

RUN = dict(n_epochs=4, momentum=0.2, dropout_p_hidden=0.2, shuffle_sessions=True, n_threads=1)


def _context_case():
    return (SessionGRU(layers=[8], batch_size=16, n_sample=8, random_state=0,
                       dropout_p_embed=0.1, **FULL, **RUN), _mixed_data(), {})


def _user_case(mode="all", user_input="items"):
    train, _ = _user_data()
    return (SessionGRU(layers=[8], batch_size=8, n_sample=4, random_state=1, user_layers=5,
                       user_mode=mode, user_input=user_input, user_dropout=0.2, **RUN),
            train, {})


def _output_case():
    events, feats = _feature_data()
    return (FeatureSessionGRU(output_features=True, layers=[8], batch_size=16, n_sample=16,
                              random_state=0, **RUN), events, {"item_features": feats})


def _augmented_context_case():
    model, data, fit_args = _context_case()
    return model.set_params(augment_crop_p=0.4, augment_drop_p=0.2), data, fit_args


def _transition_context_case():
    """A context transition (``context_h``) beside the input and output tables."""
    model, data, fit_args = _context_case()
    return model.set_params(context_transition="multiply"), data, fit_args


CASES = {"context": _context_case, "context_augmented": _augmented_context_case,
         "context_transition": _transition_context_case, "user_items": _user_case,
         "user_hidden_both": lambda: _user_case("both", "hidden"), "output": _output_case}


@pytest.mark.parametrize("case", list(CASES))
def test_checkpoint_resume_equals_uninterrupted_run(case, tmp_path):
    model, data, fit_args = CASES[case]()
    whole = model.__class__(**model.get_params()).fit(data, **fit_args)
    stopped = model.__class__(**model.get_params())
    with pytest.raises(KeyboardInterrupt):
        stopped.fit(data, checkpoint=tmp_path, callback=_stop_after(2), **fit_args)
    resumed = model.__class__(**model.get_params()).fit(data, checkpoint=tmp_path, resume=True,
                                                         **fit_args)
    assert set(resumed.params_) == set(whole.params_) and _same(whole, resumed)
    assert resumed.loss_history_ == whole.loss_history_
    # the extension's own optimiser state is in the checkpoint (a resume without it would
    # differ: the Adagrad accumulators of these parameters would restart at zero)
    ck = load_checkpoint(tmp_path, model.__class__)
    extra = set(ck.optimizer_state_["acc"]) - {"theta", "T", "Wy", "By"}
    assert extra == {"output": {"Fy", "Fb"},
                     "context_transition": {"context_in", "context_out", "context_h"}}.get(
        case, {"U"} if case.startswith("user") else {"context_in", "context_out"})
    for key in extra:
        assert np.any(ck.optimizer_state_["acc"][key] != 0)


def _first_sessions(events, n):
    """The events of the first ``n`` sessions (by id) of an events dict."""
    sid = np.asarray(events["SessionId"])
    keep = np.isin(sid, np.unique(sid)[:n])
    return {k: np.asarray(v)[keep] for k, v in events.items()}


@pytest.mark.cuda_emulated
@pytest.mark.parametrize("case", ["context_augmented", "context_transition", "user_items",
                                  "output"])
def test_cuda_checkpoint_resume_equals_uninterrupted_run(cuda_model, case, tmp_path):
    """On the (emulated) CUDA backend: the extension's tables, their optimiser state and the
    dropout step counter go through the checkpoint as on the CPU. Stopped after one epoch of
    two (the resumed epoch starts from a trained state), on the first 60 sessions of the
    context and 100 of the output-feature data: emulated fits cost in proportion to the
    events."""
    model, data, fit_args = CASES[case]()
    if case != "user_items":
        data = _first_sessions(data, 60 if case.startswith("context") else 100)
    kw = dict(model.get_params(), n_epochs=2, device="cuda")
    cls = model.__class__
    whole = cls(**kw).fit(data, **fit_args)
    with pytest.raises(KeyboardInterrupt):
        cls(**kw).fit(data, checkpoint=tmp_path, callback=_stop_after(1), **fit_args)
    resumed = cls(**kw).fit(data, checkpoint=tmp_path, resume=True, **fit_args)
    assert resumed.device_ == "cuda" and set(resumed.params_) == set(whole.params_)
    assert _same(whole, resumed) and resumed.loss_history_ == whole.loss_history_
    ck = load_checkpoint(tmp_path, cls)
    assert set(ck.optimizer_state_["acc"]) == set(whole.optimizer_state_["acc"])


def test_resume_without_the_extension_state_differs(tmp_path, monkeypatch):
    """The check above can fail: dropping the context tables' optimiser state from the restore
    changes the resumed parameters."""
    from gru_engine import checkpoint
    model, data, _ = _context_case()
    whole = SessionGRU(**model.get_params()).fit(data)
    with pytest.raises(KeyboardInterrupt):
        SessionGRU(**model.get_params()).fit(data, checkpoint=tmp_path,
                                             callback=_stop_after(2))
    real = checkpoint._optimizer_state
    monkeypatch.setattr(checkpoint, "_optimizer_state",
                        lambda arrays, m, path, keys=None: real(arrays, m, path,
                                                                ["theta", "T", "Wy", "By"]))
    resumed = SessionGRU(**model.get_params()).fit(data, checkpoint=tmp_path, resume=True)
    assert not _same(whole, resumed)


def test_resume_refuses_other_context_or_users(tmp_path):
    model, data, _ = _context_case()
    SessionGRU(**dict(model.get_params(), n_epochs=1)).fit(data, checkpoint=tmp_path / "c")
    later = dict(data, Time=data["Time"] + 3600.0 * 5)  # same sessions, other hours
    with pytest.raises(ValueError, match="other training data"):
        SessionGRU(**model.get_params()).fit(later, checkpoint=tmp_path / "c", resume=True)
    model, train, _ = _user_case()
    SessionGRU(**dict(model.get_params(), n_epochs=1)).fit(train, checkpoint=tmp_path / "u")
    users = np.asarray(train["UserId"])
    swapped = dict(train, UserId=np.where(users == users[0], users[-1],
                                          np.where(users == users[-1], users[0], users)))
    with pytest.raises(ValueError, match="other training data"):
        SessionGRU(**model.get_params()).fit(swapped, checkpoint=tmp_path / "u", resume=True)


def test_resume_refuses_another_context_transition(tmp_path):
    """``context_transition`` at its default is left out of the fingerprint (older checkpoints
    resume: tests/test_training.py), any other value is in it."""
    model, data, _ = _context_case()
    SessionGRU(**dict(model.get_params(), n_epochs=1)).fit(data, checkpoint=tmp_path)
    with pytest.raises(ValueError, match="other hyperparameters"):
        SessionGRU(**dict(model.get_params(), context_transition="multiply")).fit(
            data, checkpoint=tmp_path, resume=True)


# ---------------------------------------------------------------------------------------------
# partial_fit
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", ["context", "context_transition", "user_items",
                                  "user_hidden_both"])
def test_partial_fit_from_a_checkpoint_equals_continuing_in_process(case, tmp_path):
    """The warm start reads the extension's optimiser state: a model read from a checkpoint
    continues exactly as the model that stayed in memory."""
    model, data, _ = CASES[case]()
    kw = dict(model.get_params(), n_epochs=1)
    m = SessionGRU(**kw).fit(data, checkpoint=tmp_path)
    from_ck = load_checkpoint(tmp_path, SessionGRU)
    m.partial_fit(data, n_epochs=2)
    from_ck.partial_fit(data, n_epochs=2)
    assert _same(m, from_ck) and len(m.loss_history_) == 3
    assert m.loss_history_[2] < m.loss_history_[0]


def _typed_sessions(kinds, n_sessions=300, seed=0):
    """Two-click sessions starting at item 0 whose first click's 'Type' (one of ``kinds``)
    decides the second item (10 + its position in ``kinds``)."""
    from test_context import T0
    rng = np.random.default_rng(seed)
    k = rng.integers(0, len(kinds), n_sessions)
    start = T0 + rng.integers(0, 86400 * 30, n_sessions)
    return {"SessionId": np.repeat(np.arange(n_sessions), 2),
            "ItemId": np.stack([np.zeros(n_sessions, int), 10 + k], 1).ravel(),
            "Time": np.stack([start, start + 60], 1).ravel().astype(float),
            "Type": np.stack([np.asarray(kinds)[k], np.full(n_sessions, kinds[0])], 1).ravel()}


def test_context_partial_fit_adds_new_column_values_and_learns_them(tmp_path):
    from gru_engine import context
    kw = dict(layers=[8], n_epochs=6, batch_size=16, n_sample=0, n_threads=1, random_state=0,
              context_input="concat", context_time=["hour"], context_columns=["Type"])
    m = SessionGRU(**kw).fit(_typed_sessions(["cart", "view"]))
    assert [list(v) for v in m.context_vocab_] == [["cart", "view"]]
    new = _typed_sessions(["cart", "view", "basket"], seed=1)  # a value and an item (12) new
    # the table before training: old rows moved to their place in the grown vocabulary
    params, state = {}, {k: {} for k in ("acc", "vel")}
    probe = SessionGRU(**kw).fit(_typed_sessions(["cart", "view"]))
    from gru_engine.data import ItemIndex, build_sessions
    sessions, _, _ = build_sessions(new, ItemIndex(np.unique(new["ItemId"])), "SessionId",
                                    "ItemId", "Time")
    context.warm_context(probe, probe._validated(), params, state, sessions, new)
    old = m.params_["context_in"]  # rows: 24 hours, then Type: unknown, cart, view
    got = params["context_in"]  # 24 hours, unknown, basket, cart, view
    assert [list(v) for v in probe.context_vocab_] == [["basket", "cart", "view"]]
    np.testing.assert_array_equal(got[:25], old[:25])
    np.testing.assert_array_equal(got[26:], old[25:])
    assert not np.any(got[25]) and np.any(old[25:])
    for kind in ("acc", "vel"):
        assert state[kind]["context_in"].shape == got.shape and not np.any(
            state[kind]["context_in"][25])
    # training: the new value is learnt (the new item follows it)
    m.partial_fit(new, n_epochs=8)
    assert [list(v) for v in m.context_vocab_] == [["basket", "cart", "view"]]
    assert m.item_index_.ids[-1] == 12
    m.save(tmp_path / "m.npz")
    back = SessionGRU.load(tmp_path / "m.npz")  # the grown vocabulary and table are saved
    for kind, item in (("basket", 12), ("cart", 10), ("view", 11)):
        for model in (m, back):
            ids, _ = model.recommend([0], k=1, times=new["Time"][:1], now=new["Time"][1],
                                     columns={"Type": [kind]})
            assert ids[0] == item


def test_context_transition_partial_fit_moves_the_transition_rows_of_a_new_value():
    """``context_h`` has a row per input feature value like ``context_in``: a new column
    value moves the old rows (and their optimiser state) to their place in the grown
    vocabulary, and the warm start continues from them."""
    from gru_engine import context
    kw = dict(layers=[8], n_epochs=2, batch_size=16, n_sample=0, n_threads=1, random_state=0,
              context_transition="multiply", context_time=[], context_columns=["Type"])
    from test_context import _transition_data
    m = SessionGRU(**kw).fit(_transition_data())
    old, old_acc = m.params_["context_h"], m.optimizer_state_["acc"]["context_h"]
    assert old.shape[0] == 3 and np.any(old_acc)  # unknown, cart, view
    new = _transition_data(seed=4)
    new["Type"] = np.where((new["Type"] == "cart") & (np.arange(len(new["Type"])) % 2 == 1),
                           "basket", new["Type"])
    from gru_engine.data import ItemIndex, build_sessions
    sessions, _, _ = build_sessions(new, ItemIndex(np.unique(new["ItemId"])), "SessionId",
                                    "ItemId", "Time")
    probe = SessionGRU(**kw).fit(_transition_data())
    params, state = {}, {"acc": {}, "vel": {}}
    cx = context.warm_context(probe, probe._validated(), params, state, sessions, new)
    got = params["context_h"]  # unknown, basket, cart, view
    assert got.shape == (4, old.shape[1]) and cx.Ch is got
    np.testing.assert_array_equal(got[[0, 2, 3]], old)
    assert not np.any(got[1])
    np.testing.assert_array_equal(state["acc"]["context_h"][[0, 2, 3]], old_acc)
    m.partial_fit(new, n_epochs=1)
    assert m.params_["context_h"].shape == got.shape and np.any(m.params_["context_h"][1])
    assert np.all(m.optimizer_state_["acc"]["context_h"][[0, 2, 3]] >= old_acc)


def test_context_partial_fit_failure_leaves_the_model_as_it_was(monkeypatch):
    from gru_engine import config
    from gru_engine import ModelFitError
    kw = dict(layers=[8], n_epochs=1, batch_size=16, n_sample=0, n_threads=1, random_state=0,
              context_input="concat", context_columns=["Type"])
    m = SessionGRU(**kw).fit(_typed_sessions(["cart", "view"]))
    before = {k: v.copy() for k, v in m.params_.items()}
    vocab = [v.copy() for v in m.context_vocab_]
    monkeypatch.setattr(config, "DIVERGENCE_MAX_WEIGHT", 1e-9)
    with pytest.raises(ModelFitError):
        m.partial_fit(_typed_sessions(["cart", "view", "basket"], seed=1), n_epochs=1)
    assert [list(v) for v in m.context_vocab_] == [list(v) for v in vocab]
    assert set(m.params_) == set(before)
    assert all(np.array_equal(m.params_[k], v) for k, v in before.items())
    d = _typed_sessions(["cart"])
    d["Time"] = np.arange(len(d["Time"]), dtype=float)
    with pytest.raises(ValueError, match="real timestamps"):
        m.partial_fit(d)
    with pytest.raises(ValueError, match="'Type'"):
        m.partial_fit({k: v for k, v in _typed_sessions(["cart"]).items() if k != "Type"})


def test_user_partial_fit_with_new_users_and_new_items(tmp_path):
    from gru_engine.evaluation import evaluate_session_aware
    from gru_engine.session_aware import build_user_sessions
    from gru_engine.user_level import U_NROWS, user_views
    train, test = _user_data(n_users=40)
    model, _, _ = _user_case()
    users = np.asarray(train["UserId"])
    items = np.asarray(train["ItemId"])
    first = np.isin(users, np.unique(users)[:25]) & (items < np.unique(items)[-8])
    old_part = {k: np.asarray(v)[first] for k, v in train.items()}
    m = SessionGRU(**dict(model.get_params(), n_epochs=2)).fit(old_part)
    n0 = m.n_items_
    U0, UI0 = m.params_["U"].copy(), m.params_["UI"].copy()
    # before training: the old table rows and the dense part stay, 8 rows drawn for new items
    from gru_engine.data import build_sessions, ItemIndex
    from gru_engine.user_level import fit_users, warm_users
    sess, _, _ = build_sessions(train, ItemIndex(np.unique(items)), "SessionId", "ItemId", "Time")
    params, state = {}, {k: {} for k in ("acc", "vel")}
    warm_users(m, m._validated(), params, state, 8, sess,
               fit_users(train, "SessionId", "UserId", 5), np.random.default_rng(0),
               np.random.default_rng(1))
    g, v0 = user_views(params["UI"], params["U"]), user_views(UI0, U0)
    for key in v0:
        if v0[key] is not None:
            np.testing.assert_array_equal(g[key][:len(v0[key])], v0[key])
    assert g["Wx"].shape[0] == n0 + 8 and np.all(np.abs(g["Wx"][n0:]) > 0)
    acc = user_views(params["UI"], state["acc"]["U"])["Wx"]
    np.testing.assert_array_equal(acc[:n0], user_views(UI0, m.optimizer_state_["acc"]["U"])["Wx"])
    assert not np.any(acc[n0:]) and np.any(acc[:n0])
    m.partial_fit(train, n_epochs=2)  # 15 users and 8 items new to the model
    n1 = m.n_items_
    assert n1 == n0 + 8 and int(m.params_["UI"][U_NROWS]) == n1
    v0, v1 = user_views(UI0, U0), user_views(m.params_["UI"], m.params_["U"])
    assert v1["Wx"].shape == (n1, v0["Wx"].shape[1]) and np.any(v1["Wx"][n0:])
    assert not np.array_equal(v1["Wh"], v0["Wh"])  # trained
    te, _, _ = build_user_sessions(test, m.item_index_)
    hi, _, _ = build_user_sessions(train, m.item_index_)
    res = evaluate_session_aware(m.scorer(), te, hi, cutoffs=(5,))
    assert res["user_aware"] and np.isfinite(res["recall@5"])
    m.save(tmp_path / "m.npz")
    back = SessionGRU.load(tmp_path / "m.npz")
    res2 = evaluate_session_aware(back.scorer(), te, hi, cutoffs=(5,))
    assert res2["recall@5"] == res["recall@5"]
    no_user = {k: v for k, v in train.items() if k != "UserId"}
    with pytest.raises(ValueError, match="user column 'UserId'"):
        m.partial_fit(no_user)
    with pytest.raises(ValueError, match="user column 'Customer'"):
        m.partial_fit(train, user_key="Customer")


# ---------------------------------------------------------------------------------------------
# augmentation with context
# ---------------------------------------------------------------------------------------------
def test_augmented_sessions_keep_each_kept_events_context(monkeypatch):
    """Every epoch's crops and drops carry the kept events' context rows: the epoch trains on
    events of the data (increasing within each session, inside it), and the context rows the
    trainer reads for each are that event's rows."""
    from gru_engine.backends.cpu import Trainer
    seen = []
    real_select, real_start = Trainer.select_events, Trainer.start_epoch

    def select(self, rows):
        seen.append([np.array(rows)])
        return real_select(self, rows)

    def start(self, items, order, offsets):
        seen[-1] += [items.copy(), offsets.copy(), self.cx.ev_in.copy(), self.cx.ev_out.copy(),
                     [a.copy() for a in self.event_context]]
        return real_start(self, items, order, offsets)
    monkeypatch.setattr(Trainer, "select_events", select)
    monkeypatch.setattr(Trainer, "start_epoch", start)
    data = _mixed_data()
    m = SessionGRU(layers=[8], n_epochs=3, batch_size=16, n_sample=8, n_threads=1,
                   random_state=0, augment_crop_p=0.5, augment_drop_p=0.3, **FULL).fit(data)
    from gru_engine.data import build_sessions
    sessions, _, _ = build_sessions(data, m.item_index_, "SessionId", "ItemId", "Time")
    assert len(seen) == 3
    for rows, items, offsets, ev_in, ev_out, (base_in, base_out) in seen:
        assert len(items) < len(sessions.items)  # clicks were cropped or dropped
        for s in range(len(offsets) - 1):
            r = rows[offsets[s]:offsets[s + 1]]
            assert np.all(np.diff(r) > 0) and len(r) >= 2
            assert sessions.offsets[s] <= r[0] and r[-1] < sessions.offsets[s + 1]
        np.testing.assert_array_equal(items, sessions.items[rows])
        np.testing.assert_array_equal(ev_in, base_in[rows])
        np.testing.assert_array_equal(ev_out, base_out[rows])
        assert base_in.shape == (len(sessions.items), 4)
    assert not np.array_equal(seen[0][0], seen[1][0])  # redrawn every epoch


def test_context_still_learns_under_augmentation():
    """The event type of the click before the target decides the target; with drops and crops
    that keep its context, the model still learns it."""
    from test_context import T0
    rng = np.random.default_rng(4)
    sid, items, times, types = [], [], [], []
    for s in range(400):
        cart = rng.random() < 0.5
        seq = list(rng.integers(20, 40, 2)) + [0, 3 if cart else 4]
        kinds = ["view", "view", "cart" if cart else "view", "view"]
        t = T0 + rng.integers(0, 86400 * 30)
        for k, (it, kind) in enumerate(zip(seq, kinds)):
            sid.append(s)
            items.append(int(it))
            times.append(float(t + 60 * k))
            types.append(kind)
    data = {"SessionId": np.array(sid), "ItemId": np.array(items), "Time": np.array(times),
            "Type": np.array(types)}
    m = SessionGRU(layers=[16], n_epochs=10, batch_size=16, n_sample=0, n_threads=1,
                   random_state=0, context_input="concat", context_time=[],
                   context_columns=["Type"], augment_crop_p=0.5, augment_drop_p=0.2).fit(data)
    for kind, want in (("cart", 3), ("view", 4)):
        ids, _ = m.recommend([25, 0], k=1, columns={"Type": ["view", kind]})
        assert ids[0] == want


def test_output_feature_partial_fit_continues_the_feature_rows_optimiser_state(tmp_path):
    """Adagrad accumulators only grow: after a warm start (with new items joining through
    their features) every feature row's accumulator is at least what it was, so the state was
    carried, not restarted; a model read from a checkpoint continues as the one in memory."""
    events, feats = _feature_data()
    held = np.arange(250, 300)
    keep = ~np.isin(events["ItemId"], held)
    old = {k: v[keep] for k, v in events.items()}
    kw = dict(layers=[8], n_epochs=1, batch_size=16, n_sample=16, random_state=0, n_threads=1,
              output_features=True)
    m = FeatureSessionGRU(**kw).fit(old, item_features=feats, checkpoint=tmp_path)
    before = {k: m.optimizer_state_["acc"][k].copy() for k in ("Fy", "Fb")}
    from_ck = load_checkpoint(tmp_path, FeatureSessionGRU)
    for model in (m, from_ck):
        model.partial_fit(events, item_features=feats, n_epochs=1)
    assert m.n_items_ > len(np.unique(old["ItemId"]))
    for k, a in before.items():
        assert np.any(a > 0) and np.all(m.optimizer_state_["acc"][k] >= a)
    assert _same(m, from_ck)

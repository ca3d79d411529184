"""Training in production: checkpoints and resume, interrupted fits, the divergence guard and
warm-start retraining (``partial_fit``), for SessionGRU and FeatureSessionGRU on the CPU."""
import logging

import numpy as np
import pytest

from gru_engine import FeatureSessionGRU, ModelFitError, NotFittedError, SessionGRU
from gru_engine import config
from gru_engine.checkpoint import load_checkpoint
from gru_engine.features import CategoricalFeatures
from test_model import SMALL, _events

KW = dict(SMALL, n_epochs=4, dropout_p_hidden=0.3, dropout_p_embed=0.1, momentum=0.2,
          shuffle_sessions=True)


def _features(item_ids):
    ids = np.asarray(item_ids)
    return {"cat": CategoricalFeatures(ids, [[int(i) % 3, 5 + int(i) % 4] for i in ids], dim=3)}


def _stop_after(epoch):
    def callback(e, seconds, loss):
        if e == epoch:
            raise KeyboardInterrupt
    return callback


def _same(a, b):
    return all(np.array_equal(a.params_[k], b.params_[k]) for k in a.params_)


@pytest.mark.parametrize("cls,kw", [(SessionGRU, {}),
                                    (FeatureSessionGRU, dict(strategy="interleaved")),
                                    (FeatureSessionGRU, dict(strategy="alternating"))])
def test_checkpoint_resume_equals_uninterrupted_run(cls, kw, tmp_path):
    ev = _events()
    fit_args = {"item_features": _features(np.unique(ev["ItemId"]))} if cls is not SessionGRU \
        else {}
    whole = cls(**KW, **kw).fit(ev, **fit_args)
    stopped = cls(**KW, **kw)
    with pytest.raises(KeyboardInterrupt):
        stopped.fit(ev, checkpoint=tmp_path, callback=_stop_after(2), **fit_args)
    resumed = cls(**KW, **kw).fit(ev, checkpoint=tmp_path, resume=True, **fit_args)
    assert _same(whole, resumed)
    assert resumed.loss_history_ == whole.loss_history_
    # the folder's model file is the last complete epoch, loadable as any model file
    assert len(cls.load(tmp_path / "model.npz").loss_history_) == 4


def test_resume_refuses_other_data_or_hyperparameters(tmp_path):
    SessionGRU(**dict(KW, n_epochs=1)).fit(_events(), checkpoint=tmp_path)
    with pytest.raises(ValueError, match="other hyperparameters or other training data"):
        SessionGRU(**dict(KW, n_epochs=2)).fit(_events(seed=1), checkpoint=tmp_path,
                                               resume=True)
    with pytest.raises(ValueError, match="other hyperparameters"):
        SessionGRU(**dict(KW, n_epochs=2, learning_rate=0.2)).fit(
            _events(), checkpoint=tmp_path, resume=True)
    with pytest.raises(ValueError, match="no checkpoint"):
        SessionGRU(**KW).fit(_events(), checkpoint=tmp_path / "empty", resume=True)
    with pytest.raises(ValueError, match="resume=True needs checkpoint"):
        SessionGRU(**KW).fit(_events(), resume=True)


def test_keyboard_interrupt_keeps_the_last_complete_epoch():
    ev = _events()
    two = SessionGRU(**dict(KW, n_epochs=2)).fit(ev)
    m = SessionGRU(**KW)
    with pytest.raises(KeyboardInterrupt):
        m.fit(ev, callback=_stop_after(2))
    assert _same(m, two) and len(m.loss_history_) == 2
    assert m.recommend([ev["ItemId"][0]], k=3)[0].shape == (3,)  # usable


def test_keyboard_interrupt_in_the_first_epoch_leaves_the_model_unfitted(monkeypatch):
    from gru_engine.backends.cpu import Trainer

    def interrupted(self, max_steps=-1):
        raise KeyboardInterrupt
    monkeypatch.setattr(Trainer, "run", interrupted)
    m = SessionGRU(**KW)
    with pytest.raises(KeyboardInterrupt):
        m.fit(_events())
    with pytest.raises(NotFittedError):
        m.recommend([7])


@pytest.mark.parametrize("loss,why", [("cross-entropy", "what constant scores give"),
                                      ("bpr-max", "weights")])
def test_divergence_from_the_first_epoch(loss, why):
    m = SessionGRU(**dict(SMALL, learning_rate=1e6, loss=loss))
    with pytest.raises(ModelFitError, match=f"diverged in epoch 1: .*{why}") as err:
        m.fit(_events())
    assert err.value.epoch == 1 and err.value.model is None
    with pytest.raises(NotFittedError):
        m.predict_next([[7]])


def test_divergence_later_keeps_the_last_good_epoch(monkeypatch):
    """An epoch loss above DIVERGENCE_LOSS_FACTOR x the best earlier one stops training; the
    error carries a fitted copy with the previous epoch's parameters (here: the factor is set
    so low that epoch 2 trips it)."""
    monkeypatch.setattr(config, "DIVERGENCE_LOSS_FACTOR", 0.5)
    ev = _events()
    one = SessionGRU(**dict(KW, n_epochs=1)).fit(ev)
    m = SessionGRU(**KW)
    with pytest.raises(ModelFitError, match="diverged in epoch 2: the loss") as err:
        m.fit(ev)
    assert err.value.epoch == 2 and _same(err.value.model, one)
    assert not hasattr(m, "params_")


def test_cross_entropy_loss_far_above_constant_scores_is_divergence(monkeypatch):
    monkeypatch.setattr(config, "DIVERGENCE_CONSTANT_FACTOR", 1e-3)
    with pytest.raises(ModelFitError, match="what constant scores give"):
        SessionGRU(**SMALL).fit(_events())


def _new_item_events(n_sessions=80, seed=3):
    """Sessions of the old items (ids 7, 17, ..., 147) where item 7 is always followed by a new
    item 1007 and 1007 by 17."""
    rng = np.random.default_rng(seed)
    sess, items, times = [], [], []
    for s in range(n_sessions):
        seq = [7, 1007, 17] if s % 2 == 0 else list(rng.choice(np.arange(15) * 10 + 7, 3))
        for k, it in enumerate(seq):
            sess.append(s)
            items.append(int(it))
            times.append(float(s * 10 + k))
    return {"SessionId": np.array(sess), "ItemId": np.array(items), "Time": np.array(times)}


def test_partial_fit_appends_and_learns_new_items_and_keeps_old_ones():
    ev = _events()
    m = SessionGRU(**dict(SMALL, n_epochs=3, learning_rate=0.1)).fit(ev)
    old_ids = m.item_index_.ids.copy()
    old_wy = m.params_["Wy"].copy()
    old_support = m.item_support_.copy()
    before = m.predict_next([[old_ids[1], old_ids[2]]])
    m.partial_fit(_new_item_events(), n_epochs=6)
    assert m.n_items_ == len(old_ids) + 1 and m.item_index_.ids[-1] == 1007
    np.testing.assert_array_equal(m.item_index_.ids[:len(old_ids)], old_ids)
    assert len(m.loss_history_) == 9
    assert m.item_support_[-1] == 40 and np.all(m.item_support_[:len(old_ids)] >= old_support)
    # the new item is learnt: it is the top recommendation after item 7
    assert m.recommend([7], k=1)[0][0] == 1007
    # old items' scores move, but stay close (same ranking tendency)
    after = m.predict_next([[old_ids[1], old_ids[2]]])[:, :len(old_ids)]
    assert np.corrcoef(before.ravel(), after.ravel())[0, 1] > 0.5
    assert m.params_["Wy"].shape[0] == len(old_ids) + 1 and not np.array_equal(
        m.params_["Wy"][:len(old_ids)], old_wy)


def test_partial_fit_with_new_items_saves_a_loadable_file(tmp_path):
    """The constrained ID input reads every row of Wy: its table row count grows with the new
    items (a file written after partial_fit with new items loads and scores the same)."""
    m = SessionGRU(**dict(SMALL, n_epochs=1)).fit(_events())
    m.partial_fit(_new_item_events(), n_epochs=1)
    m.save(tmp_path / "m.npz")
    loaded = SessionGRU.load(tmp_path / "m.npz")
    np.testing.assert_array_equal(loaded.predict_next([[7, 1007]]), m.predict_next([[7, 1007]]))


def test_partial_fit_on_the_same_data_continues_the_fit():
    """Warm-starting on the training data is continued training: the loss keeps falling and
    nothing is appended."""
    ev = _events()
    m = SessionGRU(**dict(SMALL, n_epochs=2)).fit(ev)
    n = m.n_items_
    m.partial_fit(ev, n_epochs=2)
    assert m.n_items_ == n and len(m.loss_history_) == 4
    assert m.loss_history_[3] < m.loss_history_[1]


def test_partial_fit_without_optimizer_state_after_load(tmp_path, caplog):
    ev = _events()
    m = SessionGRU(**dict(SMALL, n_epochs=1)).fit(ev)
    m.save(tmp_path / "m.npz")
    loaded = SessionGRU.load(tmp_path / "m.npz")
    with caplog.at_level(logging.INFO, logger="gru_engine"):
        loaded.partial_fit(ev, n_epochs=1)
    assert "no optimiser state" in caplog.text
    # a checkpoint keeps the optimiser state: the warm start equals continuing in process
    m2 = SessionGRU(**dict(SMALL, n_epochs=1)).fit(ev, checkpoint=tmp_path / "ck")
    from_ck = load_checkpoint(tmp_path / "ck", SessionGRU)
    m2.partial_fit(ev, n_epochs=1)
    from_ck.partial_fit(ev, n_epochs=1)
    assert _same(m2, from_ck)


def test_partial_fit_failure_leaves_the_model_as_it_was(monkeypatch):
    ev = _events()
    m = SessionGRU(**SMALL).fit(ev)
    snapshot = {k: v.copy() for k, v in m.params_.items()}
    n, history = m.n_items_, list(m.loss_history_)
    monkeypatch.setattr(config, "DIVERGENCE_MAX_WEIGHT", 1e-9)
    with pytest.raises(ModelFitError):
        m.partial_fit(_new_item_events(), n_epochs=1)
    assert m.n_items_ == n and m.loss_history_ == history
    assert all(np.array_equal(m.params_[k], v) for k, v in snapshot.items())
    with pytest.raises(ValueError, match="n_epochs"):
        m.partial_fit(ev, n_epochs=0)


def test_feature_model_partial_fit_needs_features_of_new_items():
    ev = _events()
    m = FeatureSessionGRU(**dict(SMALL, n_epochs=1)).fit(
        ev, item_features=_features(np.unique(ev["ItemId"])))
    with pytest.raises(KeyError, match="without features"):
        m.partial_fit(_new_item_events(), n_epochs=1)
    m.partial_fit(_new_item_events(), n_epochs=1, item_features=_features([1007]))
    assert m.item_index_.ids[-1] == 1007
    assert np.isfinite(m.predict_next([[1007]])).all()


@pytest.mark.cuda_emulated
def test_checkpoint_resume_on_emulated_cuda(cuda_model, tmp_path):
    ev = _events(n_sessions=30)
    kw = dict(KW, device="cuda")
    whole = SessionGRU(**kw).fit(ev)
    with pytest.raises(KeyboardInterrupt):
        SessionGRU(**kw).fit(ev, checkpoint=tmp_path, callback=_stop_after(2))
    resumed = SessionGRU(**kw).fit(ev, checkpoint=tmp_path, resume=True)
    assert resumed.device_ == "cuda" and _same(whole, resumed)
    warm = load_checkpoint(tmp_path, SessionGRU)
    warm.set_params(device="cuda").partial_fit(_new_item_events(), n_epochs=1)
    assert warm.item_index_.ids[-1] == 1007 and np.isfinite(warm.params_["Wy"]).all()


def test_a_checkpoint_written_by_08a3000_resumes_to_that_releases_parameters(tmp_path):
    """Checkpoints of plain models keep their format and fingerprint: one written by the
    release before the extensions' checkpoints (tests/fixtures/checkpoints/make_fixtures.py)
    resumes, with this release, to the parameters of that release's uninterrupted fit."""
    import importlib.util
    import os
    import shutil
    here = os.path.join(os.path.dirname(__file__), "fixtures", "checkpoints")
    spec = importlib.util.spec_from_file_location("ck_fixtures",
                                                  os.path.join(here, "make_fixtures.py"))
    fx = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fx)
    folder = tmp_path / "ck"
    shutil.copytree(os.path.join(here, "gru_epoch2"), folder)
    resumed = SessionGRU(**fx.PARAMS).fit(fx.events(), checkpoint=folder, resume=True)
    with np.load(os.path.join(here, "gru_whole.npz")) as f:
        want = {k: f[k] for k in f.files}
    assert set(want) == set(resumed.params_)
    for k, v in want.items():
        np.testing.assert_array_equal(resumed.params_[k], v)

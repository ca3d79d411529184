"""Session augmentation (``augment_crop_p``, ``augment_drop_p``; Tan et al. 2016): the epoch's
augmented sessions are what the options say (drop rate, >= 2 clicks kept, crops contiguous and
uniform over the sub-sessions), drawn reproducibly and anew every epoch; the fit trains on them
on the CPU and through the emulated CUDA backend alike; files, checkpoints, ``partial_fit`` and
FeatureSessionGRU keep the options; bad values raise ``ValueError`` naming the parameter."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from gru_engine import FeatureSessionGRU, SessionGRU
from gru_engine import params as hp
from gru_engine.batching import augment_sessions
from gru_engine.features import CategoricalFeatures
from test_model import SMALL, _events


def _csr(lengths):
    """Sessions of the given lengths whose items are their event numbers (so an augmented
    session shows exactly which clicks it kept)."""
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return np.arange(offsets[-1], dtype=np.int32), offsets


def _sessions(items, offsets):
    return [items[offsets[s]:offsets[s + 1]] for s in range(len(offsets) - 1)]


# ---- the augmented sessions -------------------------------------------------------------------
def test_drop_removes_clicks_at_the_rate_keeps_order_and_at_least_two():
    lengths = np.random.default_rng(0).integers(1, 12, 20_000)
    items, offsets = _csr(lengths)
    out, out_off = augment_sessions(items, offsets, 0.0, 0.3, np.random.default_rng(1))
    assert out.dtype == items.dtype and out_off.dtype == np.int64
    assert len(out_off) == len(offsets) and out_off[-1] == len(out)
    long_removed = long_total = 0
    for s, (new, old) in enumerate(zip(_sessions(out, out_off), _sessions(items, offsets))):
        assert np.all(np.isin(new, old)) and np.all(np.diff(new) > 0)  # a subsequence, in order
        if len(old) < 2:
            assert np.array_equal(new, old)
        else:
            assert len(new) >= 2
        if len(old) >= 8:  # the keep-whole fallback is rare here (P(kept < 2) < 1.3e-3)
            long_removed += len(old) - len(new)
            long_total += len(old)
    assert long_total > 50_000
    assert abs(long_removed / long_total - 0.3) < 0.01
    # a 2-click session cannot lose a click: it is always kept whole
    two = lengths == 2
    assert np.array_equal(np.diff(out_off)[two], lengths[two])


def test_drop_keeps_a_session_whole_when_fewer_than_two_clicks_would_remain():
    items, offsets = _csr(np.full(5000, 3))
    out, out_off = augment_sessions(items, offsets, 0.0, 0.9, np.random.default_rng(2))
    new_len = np.diff(out_off)
    assert set(np.unique(new_len)) == {2, 3}
    # kept whole unless exactly 2 of 3 survive: P(len 2) = 3 * 0.9 * 0.1^2 = 0.027
    assert abs(np.mean(new_len == 2) - 0.027) < 0.01


def test_crops_are_contiguous_and_uniform_over_the_sub_sessions():
    n = 12_000
    items, offsets = _csr(np.full(n, 4))
    out, out_off = augment_sessions(items, offsets, 1.0, 0.0, np.random.default_rng(3))
    counts = {}
    for new, old in zip(_sessions(out, out_off), _sessions(items, offsets)):
        assert len(new) >= 2 and np.all(np.diff(new) == 1) and new[0] >= old[0] \
            and new[-1] <= old[-1]
        key = (int(new[0] - old[0]), len(new))
        counts[key] = counts.get(key, 0) + 1
    # a 4-click session has 6 sub-sessions of >= 2 clicks (the whole one included)
    assert sorted(counts) == [(0, 2), (0, 3), (0, 4), (1, 2), (1, 3), (2, 2)]
    expected = n / 6
    assert all(abs(c - expected) < 5 * np.sqrt(expected) for c in counts.values()), counts


def test_crop_probability_and_crop_then_drop():
    n = 20_000
    items, offsets = _csr(np.full(n, 4))
    out, out_off = augment_sessions(items, offsets, 0.4, 0.0, np.random.default_rng(4))
    changed = np.mean(np.diff(out_off) < 4)  # a crop that picks the whole session is no change
    assert abs(changed - 0.4 * 5 / 6) < 0.015
    # two-click sessions have no other sub-session; crop + drop keeps >= 2 clicks
    items, offsets = _csr(np.random.default_rng(5).integers(2, 9, 5000))
    out, out_off = augment_sessions(items, offsets, 0.7, 0.5, np.random.default_rng(6))
    new_len, old_len = np.diff(out_off), np.diff(offsets)
    assert np.all(new_len >= 2) and np.all(new_len <= old_len)
    assert np.array_equal(new_len[old_len == 2], old_len[old_len == 2])
    for new, old in zip(_sessions(out, out_off), _sessions(items, offsets)):
        assert np.all(np.isin(new, old)) and np.all(np.diff(new) > 0)


def test_reproducible_under_a_seed_different_per_draw_and_zero_is_the_input():
    items, offsets = _csr(np.random.default_rng(7).integers(1, 10, 500))
    a = augment_sessions(items, offsets, 0.5, 0.2, np.random.default_rng(8))
    b = augment_sessions(items, offsets, 0.5, 0.2, np.random.default_rng(8))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    rng = np.random.default_rng(8)
    first = augment_sessions(items, offsets, 0.5, 0.2, rng)
    second = augment_sessions(items, offsets, 0.5, 0.2, rng)
    assert not np.array_equal(first[1], second[1])
    rng = np.random.default_rng(9)
    state = rng.bit_generator.state
    same = augment_sessions(items, offsets, 0.0, 0.0, rng)
    assert same[0] is items and same[1] is offsets
    assert rng.bit_generator.state == state  # nothing drawn: the epoch order stream is untouched


# ---- the fit trains on the epoch's augmented sessions -----------------------------------------
def _record_epochs(monkeypatch, trainer_cls):
    """Every ``start_epoch``'s (items, offsets), in order."""
    seen = []
    start = trainer_cls.start_epoch

    def recording(self, items, order, offsets):
        seen.append((np.array(items), np.array(offsets)))
        return start(self, items, order, offsets)
    monkeypatch.setattr(trainer_cls, "start_epoch", recording)
    return seen


def test_fit_trains_each_epoch_on_a_new_reproducible_augmentation(monkeypatch):
    from gru_engine.backends.cpu import Trainer
    seen = _record_epochs(monkeypatch, Trainer)
    ev = _events(n_sessions=80)
    kw = dict(SMALL, n_epochs=3, augment_crop_p=0.5, augment_drop_p=0.2, shuffle_sessions=True)
    a = SessionGRU(**kw).fit(ev)
    b = SessionGRU(**kw).fit(ev)
    n_events = len(ev["ItemId"])
    first, second = seen[:3], seen[3:]
    assert all(np.array_equal(x[0], y[0]) and np.array_equal(x[1], y[1])
               for x, y in zip(first, second))
    assert all(len(items) < n_events for items, _ in first)
    assert not np.array_equal(first[0][1], first[1][1])
    assert all(np.array_equal(a.params_[k], b.params_[k]) for k in a.params_)
    # the augmentation changes training (so the comparison above means something)
    plain = SessionGRU(**dict(kw, augment_crop_p=0.0, augment_drop_p=0.0)).fit(ev)
    assert not np.array_equal(plain.params_["Wy"], a.params_["Wy"])
    assert a.events_per_s_ and all(r > 0 for r in a.events_per_s_)


@pytest.mark.parametrize("shuffle", [False, True])
def test_zero_probabilities_train_exactly_as_without_the_options(shuffle):
    ev = _events()
    kw = dict(SMALL, dropout_p_hidden=0.2, shuffle_sessions=shuffle)
    plain = SessionGRU(**kw).fit(ev)
    zero = SessionGRU(**kw, augment_crop_p=0.0, augment_drop_p=0).fit(ev)
    assert all(np.array_equal(plain.params_[k], zero.params_[k]) for k in plain.params_)
    assert plain.loss_history_ == zero.loss_history_


@pytest.mark.cuda_emulated
@pytest.mark.skipif(shutil.which("g++") is None, reason="g++ not found: the CUDA emulator "
                    "compiles kernels/*.cu with g++")
def test_cpu_and_emulated_cuda_train_the_same_augmented_fit(cuda_model, monkeypatch):
    from gru_engine.backends.cpu import Trainer as CPUTrainer
    from gru_engine.backends.cuda import Trainer as CUDATrainer
    seen_cpu = _record_epochs(monkeypatch, CPUTrainer)
    seen_gpu = _record_epochs(monkeypatch, CUDATrainer)
    kw = dict(layers=[6], batch_size=5, n_sample=4, sample_store_size=40, n_epochs=2,
              learning_rate=0.05, momentum=0.1, random_state=4, augment_crop_p=0.5,
              augment_drop_p=0.25, shuffle_sessions=True)
    ev = _events(n_sessions=30)
    cpu = SessionGRU(**kw, device="cpu").fit(ev)
    gpu = SessionGRU(**kw, device="cuda").fit(ev)
    assert (cpu.device_, gpu.device_) == ("cpu", "cuda")
    assert len(seen_cpu) == len(seen_gpu) == 2
    for (ic, oc), (ig, og) in zip(seen_cpu, seen_gpu):
        assert np.array_equal(ic, ig) and np.array_equal(oc, og) and len(ic) < len(ev["ItemId"])
    for k, b in cpu.params_.items():
        a = gpu.params_[k]
        if b.dtype.kind != "f" or not b.size or not np.abs(b).max():
            assert np.array_equal(a, b), k
            continue
        err = np.abs(a - b).max() / np.abs(b).max()
        assert err < 1e-4, f"{k}: relative error {err:.2e}"
    np.testing.assert_allclose(gpu.loss_history_, cpu.loss_history_, rtol=1e-5)


# ---- files, checkpoints, warm start, the feature model ----------------------------------------
def test_save_load_keeps_the_options(tmp_path):
    m = SessionGRU(**SMALL, augment_crop_p=0.3, augment_drop_p=0.15).fit(_events())
    m.save(tmp_path / "m.npz")
    loaded = SessionGRU.load(tmp_path / "m.npz")
    assert (loaded.augment_crop_p, loaded.augment_drop_p) == (0.3, 0.15)
    assert loaded.get_params() == m.get_params()


def test_checkpoint_resume_equals_uninterrupted_augmented_run(tmp_path):
    kw = dict(SMALL, n_epochs=3, augment_crop_p=0.5, augment_drop_p=0.2)
    ev = _events()
    whole = SessionGRU(**kw).fit(ev)

    def stop_after_2(epoch, seconds, loss):
        if epoch == 2:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        SessionGRU(**kw).fit(ev, checkpoint=tmp_path, callback=stop_after_2)
    resumed = SessionGRU(**kw).fit(ev, checkpoint=tmp_path, resume=True)
    assert all(np.array_equal(whole.params_[k], resumed.params_[k]) for k in whole.params_)
    with pytest.raises(ValueError, match="other hyperparameters"):
        SessionGRU(**dict(kw, augment_drop_p=0.3)).fit(ev, checkpoint=tmp_path, resume=True)


def test_partial_fit_augments_its_epochs(monkeypatch):
    from gru_engine.backends.cpu import Trainer
    kw = dict(SMALL, augment_drop_p=0.3)
    m = SessionGRU(**kw).fit(_events(seed=0))
    seen = _record_epochs(monkeypatch, Trainer)
    new = _events(n_sessions=40, seed=1, n_items=18)  # new items too
    m.partial_fit(new, n_epochs=2)
    assert len(seen) == 2 and all(len(items) < len(new["ItemId"]) for items, _ in seen)
    assert len(m.loss_history_) == 4 and np.all(np.isfinite(m.loss_history_))
    again = SessionGRU(**kw).fit(_events(seed=0)).partial_fit(new, n_epochs=2)
    assert all(np.array_equal(m.params_[k], again.params_[k]) for k in m.params_)


def test_feature_model_takes_the_options():
    ev = _events()
    ids = np.unique(ev["ItemId"])
    feats = {"cat": CategoricalFeatures(ids, [int(i) % 3 for i in ids], dim=3)}
    kw = dict(SMALL, augment_crop_p=0.5, augment_drop_p=0.2)
    a = FeatureSessionGRU(**kw).fit(ev, item_features=feats)
    plain = FeatureSessionGRU(**SMALL).fit(ev, item_features=feats)
    assert (a.augment_crop_p, a.augment_drop_p) == (0.5, 0.2)
    assert not np.array_equal(a.params_["Wy"], plain.params_["Wy"])


# ---- parameters -------------------------------------------------------------------------------
@pytest.mark.parametrize("name,value", [("augment_drop_p", -0.1), ("augment_drop_p", 1.0),
                                        ("augment_drop_p", float("nan")),
                                        ("augment_drop_p", "0.2"), ("augment_drop_p", True),
                                        ("augment_crop_p", 1.5), ("augment_crop_p", -1),
                                        ("augment_crop_p", None)])
def test_bad_values_raise_value_error_naming_the_parameter(name, value):
    with pytest.raises(ValueError, match=name):
        SessionGRU(**SMALL, **{name: value}).fit(_events())
    with pytest.raises(ValueError, match=name):
        FeatureSessionGRU(**SMALL, **{name: value}).fit(_events())


def test_parameter_strings_and_defaults():
    kw = hp.parse_param_string("augment_crop_p=1,augment_drop_p=0.25")
    assert kw == {"augment_crop_p": 1.0, "augment_drop_p": 0.25}
    m = SessionGRU.from_param_string("augment_drop_p=0.25,layers=8")
    assert m.augment_drop_p == 0.25 and m.augment_crop_p == 0.0
    assert hp.DEFAULTS["augment_crop_p"] == hp.DEFAULTS["augment_drop_p"] == 0.0
    assert SessionGRU().get_params()["augment_drop_p"] == 0.0
    with pytest.raises(ValueError, match="augment_drop_p"):
        hp.parse_param_string("augment_drop_p=lots")

"""The behaviour contract of every recommender, run over every model x device.

One class of contract tests (:class:`TestContract`), in the manner of implicit's
``recommender_base_test``: ``fit`` returns self and sets attributes ending in ``_`` (only
those); an unfitted model raises ``NotFittedError``; ``get_params``/``set_params`` round-trip;
``evaluate`` gives its keys with consistent values; ``recommend`` gives k known ids best first
and honours ``exclude``; ``predict_next`` has one row per session and agrees with
``recommend``; ``save``/``load`` gives identical scores; a fixed ``random_state`` reproduces a
fit; bad input raises a specific error. The cases: SessionGRU in each input mode,
FeatureSessionGRU in each architecture and strategy (and ``combine='sum'``), each on the CPU,
through the CUDA emulator and on a real GPU (skipped without one); the baselines (POP, S-POP,
Item-KNN, BPR-MF, SKNN, V-SKNN, STAN, VSTAN, SLIST) on the CPU. Tiny generated data, one or two
epochs: the whole file is about behaviour, not accuracy.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field

import numpy as np
import pytest

from gru_engine import FeatureSessionGRU, NotFittedError, SessionGRU
from gru_engine import baselines
from gru_engine.features import CategoricalFeatures, DenseFeatures

N_ITEMS = 15


def item_id(k):
    return 1000 + 7 * int(k)  # original ids are not dense


def events(n_sessions, seed, unknown=False):
    """Sessions of 3-5 clicks where the next item is mostly the current one + 1 (learnable);
    with ``unknown`` two clicks on an item the training data never had."""
    rng = np.random.default_rng(seed)
    sid, iid = [], []
    for s in range(n_sessions):
        it = int(rng.integers(N_ITEMS))
        for _ in range(int(rng.integers(3, 6))):
            sid.append(s)
            iid.append(item_id(it))
            it = (it + 1) % N_ITEMS if rng.random() < 0.8 else int(rng.integers(N_ITEMS))
    if unknown:
        sid[1], iid[1] = sid[1], 99_999
        sid[-1], iid[-1] = sid[-1], 99_999
    return {"SessionId": np.array(sid), "ItemId": np.array(iid),
            "Time": np.arange(len(sid), dtype=float)}


TRAIN = events(14, seed=0)
for _k in range(N_ITEMS):  # every item in training
    TRAIN["ItemId"][_k] = item_id(_k)
TEST = events(5, seed=1, unknown=True)


def feature_specs():
    ids = [item_id(k) for k in range(N_ITEMS - 2)]  # two items without features: defaults
    rng = np.random.default_rng(2)
    return {"cat": CategoricalFeatures(ids, np.arange(len(ids)) % 4, dim=3),
            "vec": DenseFeatures(ids, rng.normal(size=(len(ids), 3)))}


GRU = dict(layers=[4], batch_size=8, n_sample=4, sample_store_size=200, n_epochs=1,
           dropout_p_hidden=0.2, learning_rate=0.1, momentum=0.1, random_state=3)


@dataclass
class Spec:
    """One model configuration: ``make(**overrides)`` builds it; ``fit_args`` go to ``fit``;
    ``bad``: one invalid hyperparameter (name, value); ``random``: results depend on
    ``random_state``; ``gru``: a SessionGRU (device, files, predict_next)."""
    name: str
    cls: type
    kwargs: dict
    bad: tuple
    fit_args: dict = field(default_factory=dict)
    random: bool = False
    gru: bool = False

    def make(self, device="cpu", **overrides):
        kw = dict(self.kwargs, **overrides)
        if self.gru:
            kw["device"] = "cpu" if device == "cpu" else "cuda"
        return self.cls(**kw)


def _gru(name, cls, fit_args=None, **kw):
    return Spec(name, cls, dict(GRU, **kw), ("learning_rate", 0.0), fit_args or {},
                random=True, gru=True)


_F = {"item_features": "features"}  # resolved per fit (fresh specs)
GRU_SPECS = [
    _gru("SessionGRU-onehot", SessionGRU, constrained_embedding=False),
    _gru("SessionGRU-embedding", SessionGRU, constrained_embedding=False, embedding=3),
    _gru("SessionGRU-constrained", SessionGRU),
    *[_gru(f"FeatureSessionGRU-parallel-{st}", FeatureSessionGRU, _F, strategy=st,
           n_epochs={"alternating": 2, "residual": 3}.get(st, 1))  # residual: 1 per subnet
      for st in ("simultaneous", "alternating", "residual", "interleaved")],
    _gru("FeatureSessionGRU-parallel-sum", FeatureSessionGRU, _F, combine="sum",
         strategy="interleaved"),
    _gru("FeatureSessionGRU-feature", FeatureSessionGRU, _F, architecture="feature"),
    _gru("FeatureSessionGRU-id", FeatureSessionGRU, _F, architecture="id"),
]
BASELINE_SPECS = [
    Spec("Pop", baselines.Pop, {}, None),
    Spec("SessionPop", baselines.SessionPop, {}, None),
    Spec("ItemKNN", baselines.ItemKNN, {"lambda_": 1.0}, ("alpha", 1.5)),
    Spec("BPRMF", baselines.BPRMF, {"n_factors": 4, "n_epochs": 2, "random_state": 0},
         ("n_factors", 0), random=True),
]
for _name, _kw, _bad in (("SKNN", {"k": 5}, ("k", 0)), ("VSKNN", {"k": 5}, ("weighting", "?")),
                         ("STAN", {"k": 5}, ("k", 0)), ("VSTAN", {"k": 5}, ("k", 0)),
                         ("SLIST", {}, ("alpha", 2.0))):
    try:
        BASELINE_SPECS.append(Spec(_name, getattr(baselines, _name), _kw, _bad))
    except (AttributeError, ImportError):  # a model module that is not there yet
        pass

DEVICES = ("cpu", "cuda-emulated", "cuda")
CASES = [pytest.param((s, d), id=f"{s.name}-{d}") for s in GRU_SPECS for d in DEVICES]
CASES += [pytest.param((s, "cpu"), id=f"{s.name}-cpu") for s in BASELINE_SPECS]


def _emulated_cuda_missing() -> str | None:
    """Why the emulated CUDA backend cannot run here (None: it can)."""
    try:
        cuda = importlib.import_module("gru_engine.backends.cuda")
        getattr(cuda, "Trainer"), getattr(cuda, "Scorer")
        importlib.import_module("gru_engine.backends.device").EmulatedDevice
    except (ImportError, AttributeError) as exc:
        return f"the emulated CUDA backend is not importable yet: {exc!r}"
    return None


class Case:
    """A model configuration on a device, fitted once (lazily) and shared by its tests."""

    def __init__(self, spec: Spec, device: str):
        self.spec, self.device = spec, device
        self._fitted = None

    def fit_args(self):
        return {k: feature_specs() for k in self.spec.fit_args}

    def new(self, **overrides):
        return self.spec.make(self.device, **overrides)

    def fit(self, model):
        return model.fit(TRAIN, **self.fit_args())

    @property
    def fitted(self):
        if self._fitted is None:
            model = self.new()
            before = set(vars(model))
            returned = self.fit(model)
            self._fitted = (model, returned, before)
        return self._fitted[0]


@pytest.fixture(scope="module", params=CASES)
def case_(request):
    return Case(*request.param)


@pytest.fixture
def case(case_, request):
    """The case, with ``device='cuda'`` resolved to the emulator (conftest ``cuda_model``) for
    the emulated cases; real-GPU cases skip without CuPy and a GPU."""
    if case_.device == "cuda-emulated":
        why = _emulated_cuda_missing()
        if why:
            pytest.skip(why)
        request.getfixturevalue("cuda_model")
    elif case_.device == "cuda":
        from gru_engine.backends.device import cuda_available
        if not cuda_available():
            pytest.skip("real CUDA: needs CuPy and an NVIDIA GPU (the emulated case runs the "
                        "same kernels on the CPU)")
    return case_


def _scores(model, sessions):
    """(n_sessions, n_items) scores after each session: ``predict_next`` where the model has
    it, else the scorer fed click by click."""
    if hasattr(model, "predict_next"):
        return model.predict_next(sessions)
    out = []
    for s in sessions:
        sc = model.scorer()
        sc.begin(1)
        idx = model.item_index_.to_index(np.asarray(s))
        for t, it in enumerate(idx):
            row = sc.score(np.array([0]), np.array([it], np.int32), np.array([t == 0]))
        out.append(np.array(row[0], copy=True))
    return np.array(out)


SESSIONS = [[item_id(1), item_id(2)], [item_id(5)], [item_id(7), item_id(3), item_id(8)]]


def _expected_predictions(test):
    """Predictions of the GRU4Rec protocol: unknown items removed first, then every click but
    the last of each session (of >= 2 known events) is followed by one prediction."""
    known = {item_id(k) for k in range(N_ITEMS)}
    n, n_unknown = 0, 0
    for s in np.unique(test["SessionId"]):
        items = test["ItemId"][test["SessionId"] == s]
        k = int(np.isin(items, list(known)).sum())
        n_unknown += len(items) - k
        n += max(k - 1, 0)
    return n, n_unknown


def _keyword_name(name: str) -> bool:
    """``lambda_``: a keyword with PEP 8's trailing underscore, not a fitted attribute."""
    import keyword
    return name.endswith("_") and keyword.iskeyword(name[:-1])


class TestContract:
    def test_fit_returns_self_and_sets_only_underscore_attributes(self, case):
        model = case.fitted
        _, returned, before = case._fitted
        assert returned is model
        new = [a for a in set(vars(model)) - before if not a.startswith("_")]
        assert new and all(a.endswith("_") for a in new), new
        assert len(model.item_index_) == N_ITEMS == model.n_items_
        if case.spec.gru:
            assert model.device_ == ("cpu" if case.device == "cpu" else "cuda")

    def test_unfitted_use_raises_not_fitted(self, case):
        model = case.new()
        calls = [lambda: model.recommend([item_id(1)]), lambda: model.evaluate(TEST),
                 lambda: model.scorer()]
        if case.spec.gru:
            calls += [lambda: model.predict_next([[item_id(1)]]),
                      lambda: model.save("never.npz")]
        for call in calls:
            with pytest.raises(NotFittedError):
                call()

    def test_no_hyperparameter_ends_in_underscore(self, case):
        params = case.new().get_params()
        assert not [a for a in params if a.endswith("_") and not _keyword_name(a)]
        assert not [a for a in vars(case.new()) if a.endswith("_") and not a.startswith("_")
                    and not _keyword_name(a)]

    def test_get_set_params_round_trip(self, case):
        model = case.new()
        params = model.get_params()
        assert type(model)(**params).get_params() == params
        other = case.new()
        assert other.set_params(**params) is other and other.get_params() == params
        with pytest.raises(ValueError, match="unknown parameter"):
            other.set_params(no_such_parameter=1)
        fitted = case.fitted.get_params()
        assert {k: (list(v) if isinstance(v, tuple) else v) for k, v in fitted.items()} == \
            {k: (list(v) if isinstance(v, tuple) else v) for k, v in params.items()}

    def test_evaluate_keys_and_ranges(self, case):
        cutoffs = (1, 3, 10)
        res = case.fitted.evaluate(TEST, cutoffs=cutoffs)
        n, n_unknown = _expected_predictions(TEST)
        assert res["n_events"] == n and res["n_unknown_item_events"] == n_unknown
        rec = [res[f"recall@{k}"] for k in cutoffs]
        mrr = [res[f"mrr@{k}"] for k in cutoffs]
        assert all(0.0 <= m <= r <= 1.0 for m, r in zip(mrr, rec)), res
        assert rec == sorted(rec) and mrr == sorted(mrr)
        assert mrr[0] == pytest.approx(rec[0])  # at cut-off 1 a hit has reciprocal rank 1
        assert "by_position" in res
        again = case.fitted.evaluate(TEST, cutoffs=cutoffs)
        same = [k for k in res if k.startswith(("recall@", "mrr@", "n_"))]
        assert {k: again[k] for k in same} == {k: res[k] for k in same}

    def test_recommend_k_known_ids_best_first_and_exclude(self, case):
        model = case.fitted
        ids, scores = model.recommend(SESSIONS[2], k=5)
        known = set(model.item_index_.ids.tolist())
        assert len(ids) == 5 and len(set(ids.tolist())) == 5 and set(ids.tolist()) <= known
        assert np.all(np.isfinite(scores)) and np.all(np.diff(scores) <= 0)
        full, _ = model.recommend(SESSIONS[2], k=N_ITEMS + 10)  # k beyond n_items: all items
        assert sorted(full.tolist()) == sorted(known)
        np.testing.assert_array_equal(full[:5], ids)
        excl = [full[0], full[3], SESSIONS[2][0]]
        kept, _ = model.recommend(SESSIONS[2], k=5, exclude=excl)
        assert not set(kept.tolist()) & set(excl)
        np.testing.assert_array_equal(kept, [i for i in full if i not in excl][:5])
        # the scores are the model's scores of those items
        row = _scores(model, [SESSIONS[2]])[0]
        np.testing.assert_allclose(scores, row[model.item_index_.to_index(ids)], rtol=1e-6,
                                   atol=1e-7)

    def test_predict_next_shape_and_agreement_with_recommend(self, case):
        model = case.fitted
        if not hasattr(model, "predict_next"):
            pytest.skip(f"{case.spec.name} has no predict_next")
        out = model.predict_next(SESSIONS)
        assert out.shape == (len(SESSIONS), N_ITEMS) and out.dtype == np.float32
        assert np.all(np.isfinite(out))
        assert model.predict_next([]).shape == (0, N_ITEMS)
        for s, row in zip(SESSIONS, out):
            ids, _ = model.recommend(s, k=4)
            np.testing.assert_array_equal(ids, model.item_index_.ids[
                np.argsort(-row, kind="stable")[:4]])
        # a session's scores do not depend on the sessions beside it
        np.testing.assert_allclose(model.predict_next(SESSIONS[1:2])[0], out[1], rtol=1e-5,
                                   atol=1e-6)

    def test_save_load_gives_identical_scores(self, case, tmp_path):
        model = case.fitted
        if not case.spec.gru:
            pytest.skip(f"{case.spec.name} has no model files")
        path = tmp_path / "model.npz"
        model.save(path)
        loaded = type(model).load(path)
        assert loaded.get_params() == {k: (list(v) if isinstance(v, tuple) else v)
                                       for k, v in model.get_params().items()}
        np.testing.assert_array_equal(loaded.item_index_.ids, model.item_index_.ids)
        for k in model.params_:
            np.testing.assert_array_equal(loaded.params_[k], model.params_[k], err_msg=k)
        want = model.predict_next(SESSIONS)
        if model.device_ == "cpu":
            np.testing.assert_array_equal(loaded.predict_next(SESSIONS), want)
        else:  # a loaded model scores on the CPU: same parameters, float32 rounding
            np.testing.assert_allclose(loaded.predict_next(SESSIONS), want, rtol=1e-5,
                                       atol=1e-6)

    def test_random_state_reproduces_the_fit(self, case):
        a = _scores(case.fitted, SESSIONS)
        b = _scores(case.fit(case.new()), SESSIONS)
        np.testing.assert_array_equal(a, b)
        if case.spec.random and case.device == "cpu":
            c = _scores(case.fit(case.new(random_state=11)), SESSIONS)
            assert not np.array_equal(a, c)

    def test_bad_input_raises_specific_errors(self, case):
        model = case.fitted
        with pytest.raises(KeyError, match="unknown"):
            model.recommend([item_id(1), 99_999])
        with pytest.raises(ValueError):
            model.recommend([item_id(1)], k=0)
        with pytest.raises(ValueError):
            model.recommend([])
        if case.spec.gru:
            with pytest.raises(KeyError, match="unknown"):
                model.predict_next([[99_999]])
        bad = {k: v for k, v in TRAIN.items() if k != "ItemId"}
        unfitted = case.new()
        with pytest.raises(ValueError, match="ItemId"):
            unfitted.fit(bad, **case.fit_args())

    def test_failed_fit_leaves_an_unfitted_model_with_its_parameters(self, case):
        if case.spec.bad is None:
            pytest.skip(f"{case.spec.name} has no hyperparameters")
        name, value = case.spec.bad
        broken = case.new(**{name: value})
        params = broken.get_params()
        with pytest.raises(ValueError, match=name):
            case.fit(broken)
        with pytest.raises(NotFittedError):
            broken.recommend([item_id(1)])
        assert broken.get_params() == params
        assert broken.set_params(**{name: case.new().get_params()[name]}) is broken
        if case.device == "cpu":  # (a CUDA fit is slow in the emulator: once is enough)
            ids, _ = case.fit(broken).recommend([item_id(1)], k=3)  # fits once repaired
            assert len(ids) == 3

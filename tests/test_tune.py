"""gru_engine.tune: spaces, validation split, the Optuna search (serial), resume, pruning, CLI."""
import json

import numpy as np
import pytest

from gru_engine import cli
from gru_engine import tune as T
from gru_engine.exceptions import ModelFitError
from gru_engine.params import parse_param_string

optuna = pytest.importorskip("optuna", reason="Optuna is not installed (pip install '.[tune]')")

# Tiny, fast trials: small layers and sample store, 2 epochs.
FAST = {"n_epochs": 2, "layers": [16], "batch_size": 32, "n_sample": 64,
        "sample_store_size": 20_000}


def _events(n_sessions=240, n_items=40, seed=0):
    """Generated sessions with a learnable pattern (item i is often followed by i + 1)."""
    rng = np.random.default_rng(seed)
    sid, iid, t = [], [], []
    clock = 0.0
    for s in range(n_sessions):
        item = int(rng.integers(n_items))
        for _ in range(int(rng.integers(2, 7))):
            sid.append(s)
            iid.append(item)
            t.append(clock)
            clock += 1.0
            item = (item + 1) % n_items if rng.random() < 0.8 else int(rng.integers(n_items))
    return {"SessionId": np.array(sid), "ItemId": np.array(iid), "Time": np.array(t)}


@pytest.fixture(scope="module")
def data():
    return T.split_validation(_events(), 0.25)


def _settings(**kw):
    return T.TrialSettings(metric="recall@5", seed=1, n_threads=1, overrides=dict(FAST), **kw)


# ---- spaces ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", T.BUILTIN_SPACES)
def test_builtin_spaces_load_and_name_real_parameters(name):
    space = T.load_space(name)
    assert space.fixed["loss"] == name
    assert {"layers", "batch_size", "learning_rate", "momentum"} <= set(space.search)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    params = space.model_params(space.suggest(study.ask()))
    from gru_engine import SessionGRU
    SessionGRU(**params)._validated()  # every drawn value is a valid hyperparameter
    assert isinstance(params["layers"], list) and 64 <= params["layers"][0] <= 512


def test_bpr_max_space_has_the_bpr_max_parameters():
    space = T.load_space("bpr-max")
    assert space.search["elu_param"]["choices"] == [0.5, 1.0, 0.0]
    assert space.search["bpreg"]["high"] == 2.0
    assert "bpreg" not in T.load_space("cross-entropy").search


@pytest.mark.parametrize("obj, message", [
    ({"search": {"lr": {"type": "float", "low": 0, "high": 1}}}, "not a SessionGRU"),
    ({"search": {"momentum": {"type": "float", "low": 1, "high": 0}}}, "low 1 > high 0"),
    ({"search": {"momentum": {"type": "uniform", "low": 0, "high": 1}}}, "'type'"),
    ({"search": {"momentum": {"type": "float", "low": 0.01, "high": 1, "log": True, "step": 0.1}}},
     "both 'step' and 'log'"),
    ({"search": {"elu_param": {"type": "categorical", "choices": []}}}, "non-empty"),
    ({"fixed": {"momentum": 0.1}, "search": {"momentum": {"type": "float", "low": 0, "high": 1}}},
     "both fixed and searched"),
    ({"search": {}}, "non-empty"),
    ({"fixed": {"n_threads": 2}, "search": {"momentum": {"type": "float", "low": 0, "high": 1}}},
     "not a SessionGRU"),
])
def test_bad_spaces_raise_value_error(obj, message):
    with pytest.raises(ValueError, match=message):
        T.parse_space(obj)


def test_space_file_and_missing_file(tmp_path):
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"fixed": {"loss": "bpr-max"},
                                "search": {"learning_rate": {"type": "float", "low": 0.01,
                                                             "high": 0.2, "log": True}}}))
    assert T.load_space(path).fixed == {"loss": "bpr-max"}
    with pytest.raises(FileNotFoundError, match="no such space file"):
        T.load_space(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        T.load_space(tmp_path / "bad.json")


def test_param_string_round_trips():
    params = {"loss": "bpr-max", "layers": [96, 64], "learning_rate": 0.07500000000000001,
              "constrained_embedding": True, "batch_size": 48, "elu_param": 0.5}
    assert parse_param_string(T.param_string(params)) == params  # exact (repr)
    # stepped Optuna floats are rounded before a model sees them
    assert T.Space({}, {}).model_params({"learning_rate": 0.07500000000000001,
                                         "layers": 96})["learning_rate"] == 0.075


def test_parse_metric():
    assert T.parse_metric("MRR@20") == ("mrr@20", 20)
    assert T.parse_metric("recall@5") == ("recall@5", 5)
    for bad in ("ndcg@10", "mrr", "mrr@0"):
        with pytest.raises(ValueError, match="recall@K or mrr@K"):
            T.parse_metric(bad)


# ---- validation split -----------------------------------------------------------------------
def test_split_validation_takes_the_sessions_that_end_last():
    ev = {"SessionId": np.array([1, 1, 2, 2, 3, 3, 4, 4]),
          "ItemId": np.arange(8), "Time": np.array([0, 9, 1, 2, 3, 4, 5, 6.0])}
    train, valid = T.split_validation(ev, 0.5)
    assert sorted(set(valid["SessionId"])) == [1, 4]   # ends at 9 and 6
    assert sorted(set(train["SessionId"])) == [2, 3]
    assert len(train["ItemId"]) + len(valid["ItemId"]) == 8
    for bad in (0.0, 1.0, 1):
        with pytest.raises(ValueError, match="valid_split"):
            T.split_validation(ev, bad)
    with pytest.raises(ValueError, match="no training or no validation"):
        T.split_validation(ev, 0.01)


# ---- the search -----------------------------------------------------------------------------
def _space():
    return T.load_space("cross-entropy")


def test_search_is_reproducible_and_best_is_the_max(data):
    train, valid = data
    r1 = T.search(train, valid, _space(), n_trials=3, settings=_settings(), sampler="random",
                  pruner="none")
    r2 = T.search(train, valid, _space(), n_trials=3, settings=_settings(), sampler="random",
                  pruner="none")
    assert [t.params for t in r1.trials] == [t.params for t in r2.trials]
    assert [t.value for t in r1.trials] == [t.value for t in r2.trials]
    assert all(t.state == "complete" for t in r1.trials)
    values = [t.value for t in r1.trials]
    assert r1.best_value == max(values) and r1.best_number == int(np.argmax(values))
    # the best parameters are the fixed ones, the sampled ones and the overrides, and they
    # reproduce the best value when trained again
    best = r1.best_params
    assert best["loss"] == "cross-entropy" and best["layers"] == [16] and best["n_epochs"] == 2
    assert best["momentum"] == r1.trials[r1.best_number].params["momentum"]
    again = T.run_trial(best, train, valid, _settings(per_epoch=False))
    assert again == r1.best_value


def test_per_epoch_reports_and_final_value_match_a_plain_fit(data):
    train, valid = data
    params = _space().model_params({"momentum": 0.1}, FAST)
    seen = []
    v_epochs = T.run_trial(params, train, valid, _settings(), lambda e, v: seen.append((e, v)))
    v_plain = T.run_trial(params, train, valid, _settings(per_epoch=False))
    assert [e for e, _ in seen] == [1, 2]
    assert seen[-1][1] == v_epochs == v_plain  # evaluating in the callback changes nothing


class _PruneTrialOne(optuna.pruners.BasePruner):
    def prune(self, study, trial):
        return trial.number == 1


def test_pruned_trial_is_stopped_after_its_first_epoch(data):
    train, valid = data
    r = T.search(train, valid, _space(), n_trials=3, settings=_settings(), sampler="random",
                 pruner=_PruneTrialOne())
    states = [t.state for t in r.trials]
    assert states == ["complete", "pruned", "complete"]
    assert r.trials[1].epochs == 1 and r.trials[0].epochs == 2
    assert r.best_number != 1


def test_resumed_study_runs_only_the_missing_trials(data, tmp_path):
    train, valid = data
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    kw = dict(settings=_settings(), sampler="random", pruner="none", storage=storage,
              study_name="s")
    first = T.search(train, valid, _space(), n_trials=2, **kw)
    # a trial left RUNNING by a killed process
    study = optuna.load_study(study_name="s", storage=storage)
    left = study.ask()
    _space().suggest(left)
    lost_params = _space().model_params(left.params)
    resumed = T.search(train, valid, _space(), n_trials=3, **kw)
    assert len(resumed.trials) == 4  # 2 done, the lost one (failed, not counted), its re-run
    assert [t.params for t in resumed.trials[:2]] == [t.params for t in first.trials]
    assert resumed.trials[2].state == "failed"
    assert _space().model_params(resumed.trials[3].params) == lost_params and resumed.trials[3].state == "complete"
    assert T.search(train, valid, _space(), n_trials=3, **kw).trials == resumed.trials
    more = T.search(train, valid, _space(), n_trials=4, **kw)  # a new draw, not trial 0's again
    assert len(more.trials) == 5
    assert more.trials[4].params not in [t.params for t in more.trials[:4]]


def test_diverging_trial_is_failed_and_the_search_goes_on(data, monkeypatch):
    train, valid = data
    real = T.run_trial
    calls = []

    def flaky(params, *a, **k):
        calls.append(1)
        if len(calls) == 1:
            raise ModelFitError("diverged")
        return real(params, *a, **k)

    monkeypatch.setattr(T, "run_trial", flaky)
    r = T.search(train, valid, _space(), n_trials=2, settings=_settings(), sampler="random",
                 pruner="none")
    assert [t.state for t in r.trials] == ["failed", "complete"] and r.best_number == 1


def test_search_argument_errors(data):
    train, valid = data
    with pytest.raises(ValueError, match="n_trials"):
        T.search(train, valid, _space(), n_trials=0)
    with pytest.raises(ValueError, match="sampler"):
        T.search(train, valid, _space(), n_trials=1, sampler="grid")
    with pytest.raises(ValueError, match="pruner"):
        T.search(train, valid, _space(), n_trials=1, pruner="asha")


def test_missing_optuna_names_the_extra(monkeypatch):
    import builtins
    real_import = builtins.__import__

    def fake(name, *a, **k):
        if name == "optuna":
            raise ImportError("no optuna")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake)
    with pytest.raises(ImportError, match=r"gru_engine\[tune\]"):
        T.require_optuna()


# ---- CLI ------------------------------------------------------------------------------------
def _write(path, ev):
    from gru_engine.data import write_events
    write_events(str(path), ev)
    return str(path)


def test_cli_tune_writes_best_params(data, tmp_path, capsys):
    train, valid = data
    tr, va = _write(tmp_path / "tr.tsv", train), _write(tmp_path / "va.tsv", valid)
    out = tmp_path / "best.json"
    rc = cli.main(["-q", "tune", tr, "--valid", va, "--space", "bpr-max", "--trials", "2",
                   "--metric", "recall@5", "--sampler", "random", "--seed", "3", "--threads",
                   "1", "--no-progress", "-p", T.param_string(FAST), "-o", str(out)])
    assert rc == 0
    saved = json.loads(out.read_text())
    assert saved["metric"] == "recall@5" and len(saved["trials"]) == 2
    text = (tmp_path / "best.params").read_text().strip()
    assert parse_param_string(text) == saved["best_params"]
    assert saved["best_params"]["loss"] == "bpr-max"
    assert f'-p "{text}"' in capsys.readouterr().out


def test_cli_tune_valid_split_and_errors(data, tmp_path, capsys):
    train, _ = data
    tr = _write(tmp_path / "tr.tsv", train)
    rc = cli.main(["-q", "tune", tr, "--valid-split", "0.2", "--space", "cross-entropy",
                   "--trials", "1", "--threads", "1", "--no-progress", "-p",
                   T.param_string(FAST)])
    assert rc == 0 and "best trial: 0" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:  # --valid or --valid-split is required
        cli.main(["tune", tr, "--space", "bpr-max"])
    assert exc.value.code == 2
    assert cli.main(["tune", tr, "--valid-split", "0.2", "--space", "nope.json"]) == 2
    assert cli.main(["tune", tr, "--valid-split", "0.2", "--space", "bpr-max",
                     "--metric", "auc"]) == 2
    assert cli.main(["tune", tr, "--valid-split", "0.2", "--space", "bpr-max",
                     "-p", "random_state=3"]) == 2
    assert "--seed" in capsys.readouterr().err

"""gru_engine.distributed on a local Ray cluster started here (2 CPUs): the Ray search equals
the serial one though a worker is killed mid-trial (Ray retries it), Ray scoring equals
in-process byte for byte."""
import os
import signal

import pytest

from gru_engine import scoring as S
from gru_engine import tune as T

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install '.[distributed]')")
pytest.importorskip("ray.tune", reason="Ray Tune is not installed (pip install '.[distributed]')")
pytest.importorskip("optuna", reason="Optuna is not installed (pip install '.[tune]')")

from gru_engine import distributed as D  # noqa: E402
from test_tune import FAST, _events  # noqa: E402  (tests/ is on sys.path)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    # Ray workers start in the driver's working directory and import from it: start them in a
    # folder without a gru_engine source tree, so that they import the package under test (in
    # CI the installed wheel, not the unbuilt checkout)
    if ray.is_initialized():
        ray.shutdown()
    cwd = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("ray"))
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        yield ray
    finally:
        ray.shutdown()
        os.chdir(cwd)


@pytest.fixture(scope="module")
def data():
    return T.split_validation(_events(n_sessions=3000, n_items=60, seed=1), 0.2)


def _settings():
    return T.TrialSettings(metric="mrr@5", seed=2, n_threads=1, overrides=dict(FAST, n_epochs=4))


def test_ray_search_equals_the_serial_one_though_a_worker_is_killed(cluster, data, tmp_path):
    """Same seeds: the same trials (parameters and values) and the same best as the serial
    search, although the test kills the process running trial 0 after its first epoch: Ray
    retries the trial (max_failures) and every trial is reported."""
    from ray.tune import Callback
    train, valid = data
    killed, failures = [], {}

    class KillFirstWorker(Callback):
        def on_trial_result(self, iteration, trials, trial, result, **info):
            if not killed and result.get("epoch") == 1:  # mid-trial: epoch 1 of 4
                os.kill(result["pid"], signal.SIGKILL)
                killed.append(result["trial_number"])

        def on_trial_complete(self, iteration, trials, trial, **info):
            failures[trial.config["trial_number"]] = trial.num_failures

    space = T.load_space("bpr-max")
    serial = T.search(train, valid, space, n_trials=2, settings=_settings(), sampler="random",
                      pruner="median")
    on_ray = D.ray_search(train, valid, space, n_trials=2, settings=_settings(),
                          sampler="random", pruner="median", max_failures=2,
                          ray_storage=str(tmp_path), callbacks=[KillFirstWorker()])
    assert len(killed) == 1 and sum(failures.values()) >= 1  # the kill hit a trial, Ray retried
    assert [t.number for t in on_ray.trials] == [0, 1]
    assert [t.state for t in on_ray.trials] == ["complete", "complete"]
    assert all(t.epochs == 4 for t in on_ray.trials)
    assert [t.params for t in on_ray.trials] == [t.params for t in serial.trials]
    assert [t.value for t in on_ray.trials] == [t.value for t in serial.trials]
    assert (on_ray.best_number, on_ray.best_value) == (serial.best_number, serial.best_value)
    assert on_ray.best_params == serial.best_params


def test_ray_scoring_is_bit_identical_to_in_process(cluster, tmp_path):
    from gru_engine import SessionGRU
    from gru_engine.sample_data import TEST_PATH, load_sample
    train, _ = load_sample()
    model = SessionGRU(layers=[16], n_epochs=1, n_sample=64, sample_store_size=20_000,
                       random_state=5, n_threads=1).fit(train)
    model.save(tmp_path / "m.npz")
    kw = dict(k=5, chunk_sessions=256)
    local = S.score_file(tmp_path / "m.npz", TEST_PATH, tmp_path / "local.tsv", n_threads=1, **kw)
    extra = {}
    remote = D.ray_score(tmp_path / "m.npz", TEST_PATH, tmp_path / "ray.tsv", n_actors=2,
                         n_threads=1, stats_out=extra, **kw)
    assert (tmp_path / "ray.tsv").read_bytes() == (tmp_path / "local.tsv").read_bytes()
    assert (remote.n_sessions, remote.n_events) == (local.n_sessions, local.n_events)
    assert len(extra["actor_peak_rss_mb"]) == 2 and min(extra["actor_peak_rss_mb"]) > 0
    with pytest.raises(ValueError, match="n_actors"):
        D.ray_score(tmp_path / "m.npz", TEST_PATH, tmp_path / "x.tsv", n_actors=0)

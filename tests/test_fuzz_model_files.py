"""Property test: mutated model files of both GRU classes (header fields, array shapes, dtypes,
index values, dropped and extra arrays, truncation, flipped bytes) are loaded and scored in
subprocesses; each must either score without error or raise ModelFileError: never a crash
signal, never a hang, never another exception.

300 cases here (15 Hypothesis examples of 20 mutations, run over two long-lived worker
processes); ``bench/fuzz_model_files.py`` runs 10,000.
"""
import collections

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import model_files as mf

BATCH = 20


@st.composite
def mutations(draw):
    return mf.build_mutation(lambda xs: draw(st.sampled_from(xs)),
                             lambda: draw(st.floats(0.0, 1.0)))


@pytest.fixture(scope="module")
def fuzz_env(tmp_path_factory):
    paths = mf.write_models(tmp_path_factory.mktemp("bases"))
    bases = {name: (mf.CONFIGS[name][0], mf.read(p)) for name, p in paths.items()}
    pool = mf.WorkerPool(2, timeout=60)
    outcomes = collections.Counter()
    yield bases, pool, tmp_path_factory.mktemp("cases"), outcomes
    pool.close()
    # both kinds of answer occur (a fuzz whose every case were refused, or accepted, would test
    # little)
    assert outcomes["ok"] > 0 and outcomes["ModelFileError"] > 0, outcomes
    assert sum(outcomes.values()) >= 15 * BATCH, outcomes


def test_pool_reports_crashes_and_hangs(tmp_path):
    pool = mf.WorkerPool(1, timeout=60)
    try:
        assert pool.run("__ping__", "") == ("ok", "")
        pool.timeout = 2
        assert pool.run("__hang__", "")[0] == "hang"
        pool.timeout = 60
        outcome, rc = pool.run("__crash__", "")
        assert outcome == "crash" and int(rc) < 0
        assert pool.run("__ping__", "") == ("ok", "")  # replaced workers answer
    finally:
        pool.close()


@settings(max_examples=15, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(batch=st.lists(mutations(), min_size=BATCH, max_size=BATCH))
def test_mutated_model_files_score_or_raise_model_file_error(fuzz_env, batch):
    bases, pool, folder, outcomes = fuzz_env
    results = mf.run_cases(pool, bases, batch, folder)
    outcomes.update(outcome for _, (outcome, _) in results)
    bad = [(m, r) for m, r in results if r[0] not in ("ok", "ModelFileError")]
    assert not bad, bad

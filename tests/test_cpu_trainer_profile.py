"""The per-phase profile of the CPU trainer (``backends/cpu/profile.py``): it leaves no timing
code in the normal (``prof=None``) kernels, it does not change training, and its GEMM FLOP
counts and timings add up."""
import numpy as np
from numba import njit

from gru_engine import SessionGRU
from gru_engine.backends.cpu import profile as cpu_profile
from gru_engine.backends.cpu.profile import (P_CE_GRADS, P_CE_SCORES, P_H_GEMM, PHASES, tick,
                                             tick_gemm, tick_start)
from gru_engine.batching import full_schedule
from gru_engine.data import build_sessions
from test_compile import fresh_fit_report

KW = dict(layers=[8], n_epochs=2, batch_size=4, n_sample=6, n_threads=1, random_state=3,
          dropout_p_hidden=0.3)


def _events(n_sessions=30, seed=0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, 6, n_sessions)
    return {"SessionId": np.repeat(np.arange(n_sessions), lengths),
            "ItemId": rng.integers(0, 25, lengths.sum()),
            "Time": np.arange(lengths.sum(), dtype=np.float64)}


class _Profiled(SessionGRU):
    def _make_trainer(self, *args, **kwargs):
        trainer = super()._make_trainer(*args, **kwargs)
        trainer.start_profile()
        self.trainer = trainer
        return trainer


@njit
def _ticked(prof, x):
    tick_start(prof)
    y = x + 1.0
    tick(prof, 1)
    y = y * 2.0
    tick_gemm(prof, 2, 3, 4, 5)
    return y


def test_ticks_compile_to_nothing_without_a_profile():
    prof = cpu_profile.new_profile()
    assert _ticked(None, 1.0) == _ticked(prof, 1.0) == 4.0
    asm = {str(sig[0]): _ticked.inspect_asm(sig) for sig in _ticked.signatures}
    assert len(asm) == 2
    assert "rdtsc" not in asm["none"]
    assert "rdtsc" in next(v for k, v in asm.items() if k != "none")
    assert prof[1, 2] == 2 * 3 * 4 * 5 and prof[2, 2] == 1 and prof[0, 1] >= 0


def test_the_training_kernel_has_no_timing_code_without_a_profile():
    """Compiled from scratch (an empty Numba cache: cached code cannot be inspected; the
    subprocess of test_compile.fresh_fit_report), the ``prof=None`` training kernel, with the
    step kernels it calls, has no ``rdtsc``."""
    size, has_rdtsc, has_step, profiled_has_rdtsc = fresh_fit_report()["asm"]
    assert int(size) > 10000 and has_step == "True"  # the whole kernel, callees linked in
    assert profiled_has_rdtsc == "True"  # the check sees timing code where there is some
    assert has_rdtsc == "False"


def test_profiling_leaves_training_unchanged_and_counts_the_gemms():
    ev = _events()
    plain = SessionGRU(**KW).fit(ev)
    prof_model = _Profiled(**KW).fit(ev)
    for k in ("theta", "Wy", "By", "T"):
        assert np.array_equal(plain.params_[k], prof_model.params_[k]), k
    prof = prof_model.trainer.profile()
    sessions, _, _ = build_sessions(ev, prof_model.item_index_)
    rows, *_ = full_schedule(sessions.items, sessions.order_by_start_time(), sessions.offsets,
                             KW["batch_size"], 1)
    H = KW["layers"][0]
    n_steps = KW["n_epochs"] * len(rows)
    assert prof_model.trainer.sched_state[4] == n_steps
    # the hidden GEMM h @ Wh of every step: (B x H) @ (H x 3H)
    assert prof[1, P_H_GEMM] == KW["n_epochs"] * 2 * int(np.sum(rows)) * H * 3 * H
    assert prof[2, P_H_GEMM] == n_steps
    assert np.all(prof[0, 1:] >= 0) and prof[0, 1:].sum() > 0
    table = cpu_profile.summary(prof, n_steps, cpu_profile.cycles_per_second(0.05))
    assert [r["phase"] for r in table] == list(PHASES)
    assert abs(sum(r["share"] for r in table) - 1.0) < 1e-9
    gemm = {r["phase"]: r for r in table if "shape" in r}
    assert set(gemm) <= set(cpu_profile.GEMM_LAYOUT)
    # cross-entropy: the output layer's products are timed in its parts (output_parts.py)
    assert "score GEMM" not in gemm and prof[0, P_CE_SCORES] > 0 and prof[0, P_CE_GRADS] > 0
    assert gemm["hidden GEMM"]["shape"][1:] == (3 * H, H)


def test_profile_before_start_is_an_error():
    import pytest
    m = _Profiled(**dict(KW, n_epochs=1)).fit(_events())
    m.trainer.prof = None
    with pytest.raises(ValueError, match="start_profile"):
        m.trainer.profile()


def test_gemm_ceiling_is_a_rate():
    for layout in ("NN", "NT", "TN"):
        assert cpu_profile.gemm_ceiling(8, 12, 16, layout, min_seconds=0.001) > 0

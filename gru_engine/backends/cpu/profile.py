"""Per-phase timing of CPU training steps (:meth:`Trainer.start_profile`,
``bench/bench_gru.py --profile``).

The step kernels (:mod:`.step`, :mod:`.trainer`) take a ``prof`` argument and call
:func:`tick` / :func:`tick_gemm` at the end of each phase. In normal training ``prof`` is
``None``: Numba compiles a specialisation per argument type and the ``None`` one of :func:`tick`
is empty, so the training kernels carry no timing code at all (``tests/test_cpu_trainer_profile``
checks the machine code). Profiling passes a :func:`new_profile` array instead: the time stamp
counter (``rdtsc``, a few ns to read) is read at each phase end and the cycles since the last
read are added to that phase; GEMM phases also count their FLOPs.
"""
from __future__ import annotations

import time

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

#: the phases of a training step, in the order they run (index = position + 1 in a profile)
PHASES = ("sampling", "dropout masks", "input gather", "input GEMM", "hidden GEMM",
          "GRU gates", "output gather", "score GEMM", "loss", "dWy GEMM", "dh GEMM",
          "GRU backward", "dWh GEMM", "dWx GEMM", "dx GEMM", "sparse sums", "Adagrad dense",
          "Adagrad sparse", "schedule", "carry", "CE parts: scores + softmax sums",
          "CE softmax join + dh sum", "CE parts: gradient + dWy, dh GEMMs")
(P_SAMPLING, P_MASKS, P_IN_GATHER, P_IN_GEMM, P_H_GEMM, P_GATES, P_OUT_GATHER, P_SCORE_GEMM,
 P_LOSS, P_DWY_GEMM, P_DH_GEMM, P_GRU_BACK, P_DWH_GEMM, P_DWX_GEMM, P_DX_GEMM, P_SPARSE,
 P_ADA_DENSE, P_ADA_SPARSE, P_SCHEDULE, P_CARRY, P_CE_SCORES, P_CE_JOIN,
 P_CE_GRADS) = range(1, len(PHASES) + 1)
#: "CE ...": the cross-entropy output layer after the gather (:mod:`.output_parts`; "parts"
#: run on threads); the phases "score GEMM" to "dh GEMM" are the other losses' and stay empty
#: GEMM phases and the operand layout of their product ``(M x K) @ (K x N)``: "NN", "NT"
#: (second operand transposed) or "TN" (first transposed), as the step calls ``np.dot``
GEMM_LAYOUT = {"input GEMM": "NN", "hidden GEMM": "NN", "score GEMM": "NT", "dWy GEMM": "TN",
               "dh GEMM": "NN", "dWh GEMM": "TN", "dWx GEMM": "TN", "dx GEMM": "NT"}


@intrinsic
def _cycles(typingctx):
    """The CPU's time stamp counter (``llvm.readcyclecounter``)."""
    def codegen(context, builder, sig, args):
        fn = cgutils.get_or_insert_function(builder.module,
                                            ir.FunctionType(ir.IntType(64), []),
                                            "llvm.readcyclecounter")
        return builder.call(fn, [])
    return types.int64(), codegen


@njit(cache=True)
def cycles():
    """:func:`_cycles` callable from Python (calibration)."""
    return _cycles()


def tick(prof, phase):
    """End of ``phase``: add the cycles since the last tick to it (Numba only; no-op for
    ``prof=None``)."""
    raise NotImplementedError("tick is for Numba-compiled code")


def tick_gemm(prof, phase, m, n, k):
    """:func:`tick` for a GEMM phase of an ``(m x k) @ (k x n)`` product (counts its FLOPs)."""
    raise NotImplementedError("tick_gemm is for Numba-compiled code")


def tick_start(prof):
    """Start the clock (first phase of a :func:`~.trainer.train_steps` call)."""
    raise NotImplementedError("tick_start is for Numba-compiled code")


@overload(tick, inline="always")
def _ov_tick(prof, phase):
    if isinstance(prof, types.NoneType):
        return lambda prof, phase: None

    def impl(prof, phase):
        t = _cycles()
        prof[0, phase] += t - prof[0, 0]
        prof[0, 0] = t
    return impl


@overload(tick_gemm, inline="always")
def _ov_tick_gemm(prof, phase, m, n, k):
    if isinstance(prof, types.NoneType):
        return lambda prof, phase, m, n, k: None

    def impl(prof, phase, m, n, k):
        t = _cycles()
        prof[0, phase] += t - prof[0, 0]
        prof[1, phase] += 2 * m * n * k
        prof[2, phase] += 1
        prof[3, phase] += m
        prof[4, phase] += n
        prof[5, phase] += k
        prof[0, 0] = t
    return impl


@overload(tick_start, inline="always")
def _ov_tick_start(prof):
    if isinstance(prof, types.NoneType):
        return lambda prof: None

    def impl(prof):
        prof[0, 0] = _cycles()
    return impl


def new_profile() -> np.ndarray:
    """A zeroed profile: (6, 1 + len(PHASES)) int64; per phase (column ``i``) row 0 cycles,
    row 1 FLOPs, row 2 GEMM calls, rows 3-5 the sums of their m, n, k; ``[0, 0]`` holds the
    last time stamp."""
    return np.zeros((6, 1 + len(PHASES)), np.int64)


def cycles_per_second(seconds: float = 0.2) -> float:
    """The time stamp counter's rate (constant on current x86 CPUs), measured over
    ``seconds``."""
    cycles()
    c0, t0 = cycles(), time.perf_counter()
    time.sleep(seconds)
    c1, t1 = cycles(), time.perf_counter()
    return (c1 - c0) / (t1 - t0)


def summary(prof: np.ndarray, steps: int, rate: float) -> list:
    """One dict per phase of a profile over ``steps`` steps (``rate``: time stamp cycles per
    second): ``phase``, ``ms_per_step``, ``share`` of the step time, and for GEMM phases
    ``gflops`` (achieved) and ``shape`` (mean ``(m, n, k)`` of its products, rounded)."""
    total = float(prof[0, 1:].sum())
    rows = []
    for i, name in enumerate(PHASES, start=1):
        sec = prof[0, i] / rate
        row = {"phase": name, "ms_per_step": 1e3 * sec / max(steps, 1),
               "share": prof[0, i] / total if total else 0.0}
        calls = prof[2, i]
        if name in GEMM_LAYOUT and calls > 0 and sec > 0:
            row["gflops"] = float(prof[1, i]) / sec / 1e9
            row["shape"] = tuple(int(round(prof[r, i] / calls)) for r in (3, 4, 5))
        rows.append(row)
    return rows


@njit(cache=True)
def _gemm_loop(a, b, out, repeats):
    for _ in range(repeats):
        np.dot(a, b, out)


def gemm_ceiling(m: int, n: int, k: int, layout: str, dtype=np.float32,
                 min_seconds: float = 0.05) -> float:
    """GFLOP/s of the best of three timed loops of one ``(m x k) @ (k x n)`` product with
    ``layout`` ("NN", "NT", "TN"; see :data:`GEMM_LAYOUT`), operands warm in cache, through
    Numba's ``np.dot`` as the step calls it (under the caller's thread limit)."""
    rng = np.random.default_rng(0)
    a = rng.random((k, m) if layout == "TN" else (m, k), dtype=np.float32).astype(dtype)
    b = rng.random((n, k) if layout == "NT" else (k, n), dtype=np.float32).astype(dtype)
    a = a.T if layout == "TN" else a
    b = b.T if layout == "NT" else b
    out = np.empty((m, n), dtype)
    _gemm_loop(a, b, out, 1)
    t0 = time.perf_counter()
    _gemm_loop(a, b, out, 3)
    per = (time.perf_counter() - t0) / 3
    repeats = max(3, int(min_seconds / max(per, 1e-9)))
    best = np.inf
    for _ in range(3):
        t0 = time.perf_counter()
        _gemm_loop(a, b, out, repeats)
        best = min(best, (time.perf_counter() - t0) / repeats)
    return 2.0 * m * n * k / best / 1e9

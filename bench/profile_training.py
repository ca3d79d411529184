"""Where a CPU training step's time goes: per-phase profile of SessionGRU training on the
official configurations, against the sgemm ceiling of the step's own GEMM shapes.

For each job: an untimed fit of a few steps on the same threads (compiles this thread count's
kernels), one plain fit (training events/s per epoch, the headline), then one profiled fit
(:meth:`Trainer.start_profile`: ms per step and share per phase, achieved GFLOP/s per GEMM
phase), then each GEMM phase's ceiling: the best GFLOP/s of its mean shape run back to back
through the same ``np.dot`` with warm operands, on the training threads. "GEMM-bound" is the
events/s a step made of its GEMMs alone at those ceilings would reach; "GEMM share of ceiling"
is the step's GEMM FLOP rate over the ceiling rate of the same GEMMs. Writes JSON to
``bench/out/``.

    python bench/profile_training.py --jobs rsc15 yoo480 --epochs 1 [--max-steps 0 800]
    NUMBA_CPU_NAME=haswell NUMBA_CACHE_DIR=/tmp/numba-haswell python bench/profile_training.py
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time


HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.append(os.path.join(HERE, ".."))  # after PYTHONPATH: `PYTHONPATH=<tree>` measures that tree
sys.path.insert(0, HERE)
from refactor_job import RSC15, YOO480  # noqa: E402

from gru_engine.data import read_events  # noqa: E402
from gru_engine.model import SessionGRU  # noqa: E402
from gru_engine.threads import thread_limit  # noqa: E402

JOBS = {"rsc15": ("rsc15-100k/rsc15_100k_train_full.tsv.gz", RSC15),
        "yoo480": ("yoochoose-1-64/yoochoose1_64_train.tsv.gz", YOO480)}


class LimitedSessionGRU(SessionGRU):
    """SessionGRU whose CPU trainer ends each epoch after ``max_steps`` steps (all when None)
    and, with ``profile``, profiles every step (the trainer is kept for reading)."""
    max_steps = None
    profile = False

    def _make_trainer(self, *args, **kwargs):
        trainer = super()._make_trainer(*args, **kwargs)
        if self.profile:
            trainer.start_profile()
        self.profiled_trainer = trainer
        if self.max_steps is not None:
            end_epochs_after(trainer, self.max_steps)
        return trainer


def end_epochs_after(trainer, steps: int) -> None:
    """Make ``trainer.run`` end every epoch after ``steps`` steps (a bench's short epoch)."""
    run = trainer.run

    def limited(max_steps=-1):
        result = run(steps)
        trainer.sched_state[0] = 0  # the epoch ends here
        return result
    trainer.run = limited


WARMUP_STEPS = 5  # steps of the untimed fit before each job's timed one


def fit(train, params: str, threads: int, seed: int, max_steps, profile: bool):
    cls = type("Fit", (LimitedSessionGRU,), {"max_steps": max_steps, "profile": profile})
    model = cls.from_param_string(params, random_state=seed, n_threads=threads)
    return model.fit(train)


def job_params(text: str, epochs: int) -> str:
    return ",".join(kv for kv in text.split(",") if not kv.startswith("n_epochs=")) + \
        f",n_epochs={epochs}"


def profile_job(train, params: str, threads: int, seed: int, max_steps) -> dict:
    """Profiled fit of ``params`` on ``train``; per-phase table with GEMM ceilings."""
    from gru_engine.backends.cpu import profile as cpu_profile
    model = fit(train, params, threads, seed, max_steps, True)
    tr = model.profiled_trainer
    prof = tr.profile()
    steps = int(tr.sched_state[4])
    events = int(sum(e * t for e, t in zip(model.events_per_s_, model.epoch_times_)))
    rate = cpu_profile.cycles_per_second()
    rows = cpu_profile.summary(prof, steps, rate)
    step_s = prof[0, 1:].sum() / rate / steps
    gemm_flops = gemm_s_at_ceiling = 0.0
    with thread_limit(threads):
        for row in rows:
            if "shape" in row:
                m, n, k = row["shape"]
                row["ceiling_gflops"] = cpu_profile.gemm_ceiling(
                    m, n, k, cpu_profile.GEMM_LAYOUT[row["phase"]])
                i = cpu_profile.PHASES.index(row["phase"]) + 1
                gemm_flops += prof[1, i]
                gemm_s_at_ceiling += prof[1, i] / (row["ceiling_gflops"] * 1e9)
    gemm_s = sum(r["ms_per_step"] for r in rows if "shape" in r) * 1e-3 * steps
    return {"steps": steps, "events": events, "ms_per_step": 1e3 * step_s,
            "profiled_events_per_s": events / (step_s * steps), "phases": rows,
            "gemm_gflops_per_s": gemm_flops / (step_s * steps) / 1e9,
            "gemm_ceiling_gflops_per_s": gemm_flops / gemm_s_at_ceiling / 1e9,
            "gemm_share_of_step": gemm_s / (step_s * steps),
            "gemm_bound_events_per_s": events / gemm_s_at_ceiling,
            "profiled_epoch_events_per_s": list(model.events_per_s_)}


def print_table(name: str, res: dict) -> None:
    print(f"\n{name}: {res['steps']} steps, {res['ms_per_step']:.3f} ms/step profiled, "
          f"plain fit {res['events_per_s']:.0f} events/s (best epoch)")
    print("| phase | ms/step | % | GFLOP/s | ceiling GFLOP/s (shape m, n, k) |")
    print("|---|---|---|---|---|")
    for r in res["phases"]:
        if r["ms_per_step"] == 0.0:
            continue
        g = f"{r['gflops']:.0f}" if "gflops" in r else ""
        c = (f"{r['ceiling_gflops']:.0f} ({', '.join(map(str, r['shape']))})"
             if "ceiling_gflops" in r else "")
        print(f"| {r['phase']} | {r['ms_per_step']:.4f} | {100 * r['share']:.1f} | {g} | {c} |")
    rate, ceiling = res["gemm_gflops_per_s"], res["gemm_ceiling_gflops_per_s"]
    print(f"GEMMs: {100 * res['gemm_share_of_step']:.0f}% of the step; step GEMM rate "
          f"{rate:.0f} GFLOP/s against {ceiling:.0f} at the ceilings of its shapes "
          f"({100 * rate / ceiling:.0f}%); GEMM-bound {res['gemm_bound_events_per_s']:.0f} "
          "events/s")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", nargs="+", default=list(JOBS), choices=list(JOBS))
    ap.add_argument("--epochs", type=int, default=1, help="epochs of each fit")
    ap.add_argument("--threads", type=int, default=2, help="training threads")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--max-steps", type=int, nargs="+", default=None,
                    help="end each epoch after this many steps (one value per job, or one for "
                    "all; 0: no limit): events/s and the profile then cover the first steps")
    ap.add_argument("--no-profile", action="store_true", help="plain fits only")
    ap.add_argument("--blas-threads", type=int, default=None,
                    help="BLAS threads of training, Numba threads = --threads, instead of "
                    "the model's choice (threads.training_threads)")
    ap.add_argument("--data", default="/work/shared/data")
    ap.add_argument("--out", default=os.path.join(HERE, "out"))
    a = ap.parse_args(argv)
    if a.blas_threads is not None:
        import gru_engine.model
        gru_engine.model.training_threads = lambda loss, hidden, n: (n, a.blas_threads)
    from bench_gru import sgemm_peak
    report = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "load_average": os.getloadavg(), "threads": a.threads,
              "numba_cpu_name": os.environ.get("NUMBA_CPU_NAME", "native"),
              "blas_threads": a.blas_threads,
              "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE", ""),
              "sgemm_peak_2048": sgemm_peak(a.threads), "jobs": {}}
    limits = a.max_steps or [None]
    for j, name in enumerate(a.jobs):
        path, text = JOBS[name]
        train = read_events(os.path.join(a.data, path))
        params = job_params(text, a.epochs)
        max_steps = (limits[j] if len(limits) > 1 else limits[0]) or None  # 0: no limit
        # compile (or load) this thread count's kernels outside the timing: a fit compiles
        # only the path it runs (the two-thread step only on two threads)
        fit(train, job_params(text, 1), a.threads, a.seed, WARMUP_STEPS, False)
        t0 = time.perf_counter()
        model = fit(train, params, a.threads, a.seed, max_steps, False)
        res = {"params": params, "max_steps": max_steps,
               "events_per_s": max(model.events_per_s_),
               "epoch_events_per_s": list(model.events_per_s_),
               "fit_seconds": time.perf_counter() - t0}
        if not a.no_profile:
            res.update(profile_job(train, params, a.threads, a.seed, max_steps))
            print_table(name, res)
        else:
            print(f"{name}: {res['events_per_s']:.0f} events/s")
        report["jobs"][name] = res
    report["load_average_end"] = os.getloadavg()
    print(f"\nsgemm 2048^3 peak on {a.threads} threads: {report['sgemm_peak_2048']:.0f} GFLOP/s;"
          f" load average {report['load_average']} -> {report['load_average_end']}")
    os.makedirs(a.out, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = os.path.join(a.out, f"profile_training-{stamp}.json")
    with open(out, "w") as f:
        json.dump(report, f, indent=1, default=float)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

"""Serving latency and throughput of the live session store (gru_engine.serving.SessionStore).

For each hidden size and thread count: p50/p99 latency of ``store.step`` (one click per session
+ top-k of all items) for batches of B sessions, and the throughput in session-steps/s (also
per CPU-second of the process, which a busy machine disturbs less than wall time); the same
for ``store.advance`` (the click without scoring); the sgemm ceiling of the scoring's shape,
NumPy float32 ``(B x H+1) @ (H+1 x n_items)`` on as many BLAS threads (threadpoolctl), in this
process (its OPENBLAS_CORETYPE) and in a child process without OPENBLAS_CORETYPE (OpenBLAS's
own choice of kernel, AVX-512 where the CPU has it), and the fraction of it that the store's
session-steps reach (2 (H+1) n_items FLOP each); then ``model.recommend`` latency before (a
fresh scorer per call, the old path) and after (item tables built once per model). The model
is synthetic: one quick epoch on generated sessions over ``--items`` items (fitted once,
cached under ``bench/out``). Each configuration runs ``--repeats`` times; the JSON keeps every
run, the table shows medians over the runs. Runs against any checkout on PYTHONPATH (one
without ``SessionStore.advance`` skips the advance rows).

    python bench/bench_serving.py                       # hidden 100 and 480, 1 and 2 threads
    python bench/bench_serving.py --hidden 100 --threads 1 --batches 1 --repeats 5
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from gru_engine import SessionGRU  # noqa: E402
from gru_engine.serving import SessionStore  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "out")


def synthetic_model(n_items: int, hidden: int, seed: int = 0) -> SessionGRU:
    """SessionGRU(hidden) after one quick epoch on generated sessions of 2 clicks in which every
    item occurs (latency does not depend on what the model learned), cached as
    bench/out/serving_model_<items>_<hidden>.npz."""
    path = os.path.join(OUT, f"serving_model_{n_items}_{hidden}.npz")
    if os.path.exists(path):
        try:
            return SessionGRU.load(path)
        except ValueError as e:  # a file of another version: fit again
            print(f"# {e}; fitting again", flush=True)
    rng = np.random.default_rng(seed)
    n_events = 2 * n_items
    items = rng.integers(0, n_items, n_events)
    items[rng.permutation(n_events)[:n_items]] = np.arange(n_items)
    data = {"SessionId": np.repeat(np.arange(n_events // 2), 2), "ItemId": items,
            "Time": np.arange(n_events, dtype=float)}
    t0 = time.perf_counter()
    model = SessionGRU(layers=[hidden], n_epochs=1, batch_size=256, n_sample=64,
                       sample_store_size=200_000, random_state=seed).fit(data)
    print(f"# fitted the hidden-{hidden} model in {time.perf_counter() - t0:.1f} s",
          flush=True)
    os.makedirs(OUT, exist_ok=True)
    model.save(path)
    return model


def time_steps(store, ids, batch: int, k, min_calls: int, budget_s: float, rng):
    """Latencies (s) and process CPU times (s) of ``store.step`` calls (``k`` None:
    ``store.advance``) of ``batch`` distinct sessions drawn from a pool of ``store.capacity``
    live sessions, clicking random items; after 3 warm-up calls, at least ``min_calls`` calls
    or until ``budget_s`` seconds."""
    pool = store.capacity
    lat, cpu = [], []
    t_end = None
    for c in range(min_calls + 3):
        sids = rng.choice(pool, size=batch, replace=False) if batch < pool else np.arange(pool)
        clicks = ids[rng.integers(len(ids), size=batch)]
        t0, c0 = time.perf_counter(), time.process_time()
        if k is None:
            store.advance(sids, clicks)
        else:
            store.step(sids, clicks, k=k)
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
        if c >= 3:
            lat.append(dt)
            cpu.append(dc)
            if t_end is None:
                t_end = time.perf_counter() + budget_s
            if len(lat) >= 5 and time.perf_counter() > t_end:
                break
    return np.asarray(lat), np.asarray(cpu)


def sgemm_gflops(batch: int, K: int, n_items: int, threads: int, repeats: int = 5) -> float:
    """GFLOP/s of NumPy float32 ``(batch x K) @ (K x n_items)`` into a preallocated output on
    ``threads`` BLAS threads (threadpoolctl), the best of ``repeats`` calls after one warm-up
    (wall time)."""
    from threadpoolctl import threadpool_limits
    rng = np.random.default_rng(0)
    A = rng.standard_normal((batch, K)).astype(np.float32)
    B = rng.standard_normal((K, n_items)).astype(np.float32)
    out = np.empty((batch, n_items), np.float32)
    n = max(repeats, int(2e9 / (2 * batch * K * n_items)) + 1)  # ~2 GFLOP at least
    with threadpool_limits(limits=threads, user_api="blas"):
        np.matmul(A, B, out=out)
        best = np.inf
        for _ in range(n):
            t0 = time.perf_counter()
            np.matmul(A, B, out=out)
            best = min(best, time.perf_counter() - t0)
    return 2 * batch * K * n_items / best / 1e9


def sgemm_gflops_unpinned(batch: int, K: int, n_items: int, threads: int) -> float | None:
    """:func:`sgemm_gflops` in a child process without OPENBLAS_CORETYPE (None if it fails)."""
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_CORETYPE"}
    cmd = [sys.executable, os.path.abspath(__file__), "--sgemm-child", str(batch), str(K),
           str(n_items), str(threads)]
    try:
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600,
                             check=True).stdout
        return float(out.strip().splitlines()[-1])
    except (subprocess.SubprocessError, ValueError, IndexError) as e:
        print(f"# unpinned sgemm child failed: {e}", flush=True)
        return None


def recommend_latency(model, n_before: int, n_after: int, rng):
    ids = model.item_index_.ids
    sessions = [ids[rng.integers(len(ids), size=5)] for _ in range(max(n_before, n_after))]
    model.recommend(sessions[0], k=20)  # builds the item tables once
    after = []
    for s in sessions[:n_after]:
        t0 = time.perf_counter()
        model.recommend(s, k=20)
        after.append(time.perf_counter() - t0)
    before = []
    for s in sessions[:n_before]:
        t0 = time.perf_counter()
        # the old path: a scorer built from scratch (input projection, item panels) per call
        model._recommend(model._build_scorer(), model.item_index_.to_index(s), 20, None)
        before.append(time.perf_counter() - t0)
    return np.asarray(before), np.asarray(after)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--sgemm-child"]:  # sgemm_gflops_unpinned's child
        print(sgemm_gflops(*(int(a) for a in argv[1:5])))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--items", type=int, default=40_000)
    ap.add_argument("--hidden", type=int, nargs="+", default=[100, 480])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 64, 1024])
    ap.add_argument("-k", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3, help="runs of each configuration")
    ap.add_argument("--min-calls", type=int, default=200,
                    help="timed step calls per run at batch 1 (fewer for big batches: "
                         "min-calls / sqrt(batch), at least 5)")
    ap.add_argument("--budget-s", type=float, default=4.0, help="seconds per run (soft)")
    ap.add_argument("--no-advance", action="store_true", help="skip the advance rows")
    ap.add_argument("--no-sgemm", action="store_true", help="skip the sgemm ceilings")
    ap.add_argument("--no-recommend", action="store_true", help="skip the recommend rows")
    ap.add_argument("--output", default=os.path.join(OUT, "serving.json"))
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    rows, runs = [], []
    has_advance = hasattr(SessionStore, "advance")
    calls_of = {"step": args.k}
    if has_advance and not args.no_advance:
        calls_of["advance"] = None
    for hidden in args.hidden:
        model = synthetic_model(args.items, hidden)
        ids = model.item_index_.ids
        K = model.params_["Wy"].shape[1] + 1
        flop = 2 * K * args.items  # one session-step's scoring
        for threads in args.threads:
            model.set_params(n_threads=threads)
            for batch in args.batches:
                ceil = {}
                if not args.no_sgemm and batch > 1:
                    ceil["sgemm_gflops"] = sgemm_gflops(batch, K, args.items, threads)
                    ceil["sgemm_unpinned_gflops"] = sgemm_gflops_unpinned(batch, K, args.items,
                                                                          threads)
                for call, k in calls_of.items():
                    p50, p99, thr, thr_cpu = [], [], [], []
                    for rep in range(args.repeats):
                        store = SessionStore(model, capacity=max(4 * batch, 1024), k=args.k,
                                             n_threads=threads)
                        # fill the pool: every session has clicked once
                        for a in range(0, store.capacity, 1024):
                            sids = np.arange(a, min(a + 1024, store.capacity))
                            store.step(sids, ids[rng.integers(len(ids), size=len(sids))])
                        calls = max(5, int(args.min_calls / np.sqrt(batch)))
                        lat, cpu = time_steps(store, ids, batch, k, calls, args.budget_s, rng)
                        p50.append(float(np.percentile(lat, 50)))
                        p99.append(float(np.percentile(lat, 99)))
                        thr.append(float(batch * len(lat) / lat.sum()))
                        thr_cpu.append(float(batch * len(cpu) / max(cpu.sum(), 1e-9)))
                        runs.append({"hidden": hidden, "threads": threads, "batch": batch,
                                     "call": call, "repeat": rep, "calls": len(lat),
                                     "p50_ms": p50[-1] * 1e3, "p99_ms": p99[-1] * 1e3,
                                     "session_steps_per_s": thr[-1],
                                     "session_steps_per_cpu_s": thr_cpu[-1]})
                        del store
                    row = {"hidden": hidden, "threads": threads, "batch": batch, "call": call,
                           "p50_ms": float(np.median(p50)) * 1e3,
                           "p99_ms": float(np.median(p99)) * 1e3,
                           "session_steps_per_s": float(np.median(thr)),
                           "session_steps_per_cpu_s": float(np.median(thr_cpu)),
                           "runs": args.repeats}
                    line = (f"hidden {hidden:4d}  threads {threads}  batch {batch:5d}  {call:7s}:"
                            f"  p50 {row['p50_ms']:9.3f} ms  p99 {row['p99_ms']:9.3f} ms  "
                            f"{row['session_steps_per_s']:10,.0f} /s  "
                            f"({row['session_steps_per_cpu_s']:8,.0f} per CPU-s)")
                    if call == "step" and ceil:
                        achieved = row["session_steps_per_s"] * flop / 1e9
                        row.update(ceil, scoring_gflops=achieved)
                        line += f"  scoring {achieved:6.1f} GFLOP/s"
                        for key, name in (("sgemm_gflops", "sgemm"),
                                          ("sgemm_unpinned_gflops", "sgemm unpinned")):
                            if ceil.get(key):
                                row[key.replace("gflops", "fraction")] = achieved / ceil[key]
                                line += (f"  = {achieved / ceil[key]:.2f} of {name} "
                                         f"{ceil[key]:.0f}")
                    rows.append(row)
                    print(line, flush=True)
        if args.no_recommend:
            continue
        model.set_params(n_threads=1)
        before, after = recommend_latency(model, 5, 50, rng)
        rec = {"hidden": hidden, "recommend_before_ms": float(np.median(before)) * 1e3,
               "recommend_after_ms": float(np.median(after)) * 1e3,
               "recommend_after_p99_ms": float(np.percentile(after, 99)) * 1e3}
        rows.append(rec)
        print(f"hidden {hidden:4d}  recommend (5 clicks, top-20, 1 thread): before "
              f"{rec['recommend_before_ms']:.1f} ms (fresh scorer per call), after "
              f"{rec['recommend_after_ms']:.2f} ms (p99 {rec['recommend_after_p99_ms']:.2f})",
              flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump({"command": " ".join(sys.argv), "items": args.items, "k": args.k,
                   "machine": {"cpu": _cpu(), "python": platform.python_version(),
                               "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
                               "cpus": len(os.sched_getaffinity(0)),
                               "loadavg": os.getloadavg()},
                   "gru_engine": os.path.dirname(__import__("gru_engine").__file__),
                   "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                   "rows": rows, "runs": runs}, f, indent=1)
    print(f"# wrote {args.output}; load average {os.getloadavg()}")


def _cpu() -> str:
    try:
        from machine import cpu_name
        return cpu_name()
    except ImportError:  # pragma: no cover
        return platform.processor()


if __name__ == "__main__":
    main()

"""Serving latency and throughput of the live session store (gru_engine.serving.SessionStore).

For each hidden size and thread count: p50/p99 latency of ``store.step`` (one click per session
+ top-k of all items) for batches of B sessions, and the throughput in session-steps/s; then
``model.recommend`` latency before (a fresh scorer per call, the old path) and after (item
tables built once per model). The model is synthetic: one quick epoch on generated sessions
over ``--items`` items (fitted once, cached under ``bench/out``). Each configuration runs
``--repeats`` times; the JSON keeps every run, the table shows medians over the runs.

    python bench/bench_serving.py                       # hidden 100 and 480, 1 and 2 threads
    python bench/bench_serving.py --hidden 100 --threads 1 --batches 1 --repeats 5
"""
from __future__ import annotations

import argparse
import json
import os
import platform
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


def time_steps(store, ids, batch: int, k: int, min_calls: int, budget_s: float, rng):
    """Latencies (s) of ``store.step`` calls of ``batch`` distinct sessions drawn from a pool of
    ``store.capacity`` live sessions, clicking random items; after 3 warm-up calls, at least
    ``min_calls`` calls or until ``budget_s`` seconds."""
    pool = store.capacity
    lat = []
    t_end = None
    for c in range(min_calls + 3):
        sids = rng.choice(pool, size=batch, replace=False) if batch < pool else np.arange(pool)
        clicks = ids[rng.integers(len(ids), size=batch)]
        t0 = time.perf_counter()
        store.step(sids, clicks, k=k)
        dt = time.perf_counter() - t0
        if c >= 3:
            lat.append(dt)
            if t_end is None:
                t_end = time.perf_counter() + budget_s
            if len(lat) >= 5 and time.perf_counter() > t_end:
                break
    return np.asarray(lat)


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
    ap.add_argument("--output", default=os.path.join(OUT, "serving.json"))
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    rows, runs = [], []
    for hidden in args.hidden:
        model = synthetic_model(args.items, hidden)
        ids = model.item_index_.ids
        for threads in args.threads:
            model.set_params(n_threads=threads)
            for batch in args.batches:
                p50, p99, thr = [], [], []
                for rep in range(args.repeats):
                    store = SessionStore(model, capacity=max(4 * batch, 1024), k=args.k,
                                         n_threads=threads)
                    # fill the pool: every session has clicked once
                    for a in range(0, store.capacity, 1024):
                        sids = np.arange(a, min(a + 1024, store.capacity))
                        store.step(sids, ids[rng.integers(len(ids), size=len(sids))])
                    calls = max(5, int(args.min_calls / np.sqrt(batch)))
                    lat = time_steps(store, ids, batch, args.k, calls, args.budget_s, rng)
                    p50.append(float(np.percentile(lat, 50)))
                    p99.append(float(np.percentile(lat, 99)))
                    thr.append(float(batch * len(lat) / lat.sum()))
                    runs.append({"hidden": hidden, "threads": threads, "batch": batch,
                                 "repeat": rep, "calls": len(lat), "p50_ms": p50[-1] * 1e3,
                                 "p99_ms": p99[-1] * 1e3, "session_steps_per_s": thr[-1]})
                    del store
                row = {"hidden": hidden, "threads": threads, "batch": batch,
                       "p50_ms": float(np.median(p50)) * 1e3,
                       "p99_ms": float(np.median(p99)) * 1e3,
                       "session_steps_per_s": float(np.median(thr)),
                       "runs": args.repeats}
                rows.append(row)
                print(f"hidden {hidden:4d}  threads {threads}  batch {batch:5d}:  "
                      f"p50 {row['p50_ms']:9.3f} ms  p99 {row['p99_ms']:9.3f} ms  "
                      f"{row['session_steps_per_s']:10,.0f} session-steps/s", flush=True)
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
                               "cpus": len(os.sched_getaffinity(0))},
                   "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                   "rows": rows, "runs": runs}, f, indent=1)
    print(f"# wrote {args.output}")


def _cpu() -> str:
    try:
        from machine import cpu_name
        return cpu_name()
    except ImportError:  # pragma: no cover
        return platform.processor()


if __name__ == "__main__":
    main()

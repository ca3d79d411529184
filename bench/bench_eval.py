"""Evaluation speed of SessionGRU on the CPU against the sgemm ceiling of the same shape.

    python bench/bench_eval.py                       # yoochoose-1-64, hidden 480, 1 epoch
    python bench/bench_eval.py --model bench/out/yc64_h480.npz --repeats 3

Trains the model once (``-p``, 1 epoch by default; a model file given with ``--model`` is
loaded instead, and written there after training when it does not exist), then times
``model.evaluate(test)`` round-robin for each output path: every panel tile the CPU has
(AVX-512 and AVX2 forced with ``limit_panel_isa``) and the BLAS path (``OutputLayer.USE_PANELS
= False``), with ``--threads`` scoring threads, beside the sgemm CEILING measured in the same
rounds: ``np.dot`` of the evaluation's full output-layer step, (batch x (H+1)) @ ((H+1) x
n_items), on as many BLAS threads. Reports seconds (measured, wall), and GFLOP/s from MODELLED
FLOPs: the output layer's 2 (H+1) n_items per prediction (the bar of issue 15) and, beside it,
all FLOPs including the GRU step's 2 H 3H per prediction and layer. The evaluation needs no
accuracy figure here: the metrics of every path are checked to be equal. Beside each time:
the CPU-seconds the rest of the machine took meanwhile (/proc/stat); on a shared machine a
two-thread time is clean only where that is near 0.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time

import numpy as np
from machine import busy_cpu_seconds, cpu_name  # bench/machine.py (this folder is on sys.path)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))
from threadpoolctl import threadpool_info, threadpool_limits  # noqa: E402

from gru_engine import SessionGRU, _ranking  # noqa: E402
from gru_engine.backends import cpu_scoring  # noqa: E402
from gru_engine.data import read_events  # noqa: E402

D = "/work/shared/data/yoochoose-1-64"
YOOCHOOSE_480 = ("loss=cross-entropy,layers=480,batch_size=48,learning_rate=0.07,momentum=0.0,"
                 "dropout_p_embed=0.0,dropout_p_hidden=0.2,sample_alpha=0.2,bpreg=0,elu_param=0,"
                 "logq=1,n_sample=2048,n_epochs=1,constrained_embedding=True")


def covering_sessions(events: dict) -> dict:
    """The events of, for each item, the first session (in file order) that holds it."""
    sid, item = np.asarray(events["SessionId"]), np.asarray(events["ItemId"])
    _, first = np.unique(item, return_index=True)
    keep = np.isin(sid, np.unique(sid[first]))
    print(f"training on {keep.sum()} of {len(keep)} events ({len(np.unique(sid[first]))} "
          f"sessions) that hold all {len(first)} items")
    return {k: np.asarray(v)[keep] for k, v in events.items()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--train", default=f"{D}/yoochoose1_64_train.tsv.gz")
    ap.add_argument("--test", default=f"{D}/yoochoose1_64_test.tsv.gz")
    ap.add_argument("-p", "--params", default=YOOCHOOSE_480, help="official key=value string")
    ap.add_argument("--model", default=None, help="model file: loaded if it exists, else "
                                                   "written after training")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--cover-items", action="store_true",
                    help="train (1 thread) only on the fewest whole sessions that hold every "
                         "training item: same items and shapes, a fraction of the training "
                         "time, for timing the evaluation only (the metrics mean little)")
    ap.add_argument("--threads", type=int, default=2, help="scoring threads (n_threads)")
    ap.add_argument("--eval-batch", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3, help="rounds (one evaluation per path each)")
    ap.add_argument("--paths", nargs="+", default=["avx512", "avx2", "blas"])
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                  "out", "eval.json"))
    args = ap.parse_args(argv)

    test = read_events(args.test)
    if args.model and os.path.exists(args.model):
        model = SessionGRU.load(args.model)
    else:
        model = SessionGRU.from_param_string(args.params, random_state=args.seed,
                                             n_threads=1 if args.cover_items else args.threads)
        train = read_events(args.train)
        if args.cover_items:
            train = covering_sessions(train)
        t0 = time.perf_counter()
        model.fit(train)
        print(f"trained 1 model in {time.perf_counter() - t0:.0f} s")
        if args.model:
            model.save(args.model)
    model.set_params(n_threads=args.threads)
    H = [int(h) for h in np.atleast_1d(model.layers)]
    N = int(model.n_items_)
    K = H[-1] + 1
    R = args.eval_batch
    rng = np.random.default_rng(0)
    A = rng.standard_normal((R, K), dtype=np.float32)
    B = rng.standard_normal((K, N), dtype=np.float32)
    S = np.empty((R, N), np.float32)

    have = _ranking.panel_isa()
    paths = [p for p in args.paths if p == "blas" or {"avx512": 2, "avx2": 1}[p] <= have]

    def evaluate(path):
        cpu_scoring.OutputLayer.USE_PANELS = path != "blas"
        if path != "blas":
            _ranking.limit_panel_isa({"avx512": 2, "avx2": 1}[path])
        try:
            c0, b0 = time.process_time(), busy_cpu_seconds()
            res = model.evaluate(test, cutoffs=(5, 10, 20), batch_size=R, by_position=False)
            c = time.process_time() - c0
            # CPU the rest of the machine took meanwhile: a 2-thread timing is only clean near 0
            res["foreign_cpu_s"] = busy_cpu_seconds() - b0 - c if b0 is not None else None
            return res, c
        finally:
            cpu_scoring.OutputLayer.USE_PANELS = True
            _ranking.limit_panel_isa(2)

    def ceiling(threads=args.threads, clock=time.perf_counter):
        with threadpool_limits(threads, user_api="blas"):
            np.dot(A, B, out=S)
            best = float("inf")
            for _ in range(3):
                t0 = clock()
                np.dot(A, B, out=S)
                best = min(best, clock() - t0)
            return 2.0 * R * K * N / best / 1e9

    times = {p: [] for p in paths}
    cpu = {p: [] for p in paths}
    foreign = {p: [] for p in paths}
    ceilings, cpu_ceilings = [], []
    metrics = {}
    for p in paths:  # warm-up: compile, page in, check the paths agree
        res, _ = evaluate(p)
        metrics[p] = {k: v for k, v in res.items() if k.startswith(("recall", "mrr"))}
    n_pred = res["n_events"]
    for _ in range(args.repeats):
        ceilings.append(ceiling())
        cpu_ceilings.append(ceiling(1, time.process_time))
        for p in paths:
            res, c = evaluate(p)
            times[p].append(res["seconds"])
            cpu[p].append(c)
            foreign[p].append(res["foreign_cpu_s"])
        ceilings.append(ceiling())
    ceil = statistics.median(ceilings)
    cpu_ceil = statistics.median(cpu_ceilings)
    out_flop = 2.0 * n_pred * K * N
    gru_flop = 2.0 * n_pred * sum(3 * h * h for h in H)  # h @ Wh per layer (one-hot input: a lookup)
    rows = {}
    for p in paths:
        t = statistics.median(times[p])
        rows[p] = {"seconds": times[p], "median_s": t, "median_cpu_s": statistics.median(cpu[p]),
                   "output_gflops": out_flop / t / 1e9, "all_gflops": (out_flop + gru_flop) / t / 1e9,
                   "of_ceiling": out_flop / t / 1e9 / ceil,
                   "foreign_cpu_s": foreign[p],
                   "output_gflop_per_cpu_s": out_flop / statistics.median(cpu[p]) / 1e9,
                   "of_cpu_ceiling": out_flop / statistics.median(cpu[p]) / 1e9 / cpu_ceil,
                   "metrics": metrics[p]}
    tiles = [p for p in paths if p != "blas"]
    same = all(metrics[p] == metrics[tiles[0]] for p in tiles)  # same fmaf chains: same bits
    # BLAS sums in another order: its scores, hence near-tie ranks, differ by rounding
    blas_diff = (max(abs(metrics["blas"][k] - metrics[tiles[0]][k]) for k in metrics["blas"])
                 if "blas" in metrics and tiles else None)
    record = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{cpu_name()}, {os.cpu_count()} logical CPUs",
        "command": " ".join(["python bench/bench_eval.py"] + (sys.argv[1:] if argv is None else argv)),
        "blas": [f"{i.get('internal_api')} {i.get('version')} {i.get('architecture')}"
                 for i in threadpool_info() if i.get("user_api") == "blas"],
        "openblas_env": {k: v for k, v in os.environ.items() if k.startswith("OPENBLAS")},
        "load_average": list(os.getloadavg()), "threads": args.threads,
        "n_predictions": n_pred, "n_items": N, "hidden": H, "eval_batch": R,
        "sgemm_ceiling_gflops": ceilings, "sgemm_1thread_gflop_per_cpu_s": cpu_ceilings,
        "paths": rows, "tile_metrics_identical": same, "blas_max_metric_diff": blas_diff,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(record, f, indent=2)
    print(f"{record['date']}, {record['machine']}, BLAS {record['blas']} {record['openblas_env']}, "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"evaluation: {n_pred} predictions over {N} items, hidden {H}, batch {R}, "
          f"{args.threads} threads; metrics of the panel tiles identical: {same}; BLAS path's "
          f"largest metric difference (rounding): {blas_diff}")
    print(f"sgemm ceiling ({R} x {K} x {N}, {args.threads} BLAS threads, measured in the same "
          f"rounds): median {ceil:.1f} GFLOP/s (all: {', '.join(f'{c:.0f}' for c in ceilings)})")
    print(f"  and on one BLAS thread per CPU-second (the work rate, blind to waiting for a core "
          f"on a busy machine): {cpu_ceil:.1f} GFLOP per CPU-second")
    for p, r in rows.items():
        print(f"  {p:7s} {r['median_s']:6.2f} s (runs {', '.join(f'{x:.2f}' for x in r['seconds'])};"
              f" CPU {r['median_cpu_s']:.1f} s; other processes' CPU meanwhile: "
              f"{', '.join('?' if x is None else f'{x:.2f}' for x in r['foreign_cpu_s'])} s)  output layer {r['output_gflops']:6.1f} GFLOP/s "
              f"= {100 * r['of_ceiling']:5.1f}% of the ceiling, {r['output_gflop_per_cpu_s']:.1f} "
              f"per CPU-s = {100 * r['of_cpu_ceiling']:5.1f}% of the 1-thread one; all FLOPs "
              f"{r['all_gflops']:6.1f} GFLOP/s (FLOPs modelled, time measured)")


if __name__ == "__main__":
    main()

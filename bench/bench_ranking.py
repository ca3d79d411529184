"""Rank and top-k kernels (gru_engine._ranking) against the NumPy one-liners they replace.

    python bench/bench_ranking.py                      # 512 x 40000, kernels on 1 and 2 threads
    python bench/bench_ranking.py --threads 1 --repeat 20

Rank: ``rank_targets(scores, t)`` vs ``(scores > scores[arange(B), t][:, None]).sum(1)``.
Top-k: ``top_k(scores, k)`` (sorted, best first) vs ``np.argpartition(-scores, k-1, 1)[:, :k]``
(unsorted, so NumPy is given the easier task). Both NumPy expressions run on one thread; the
speed-up that counts is the kernels' on 1 thread, other thread counts are shown beside it.
Fused (``--hidden K ...``): ``ItemPanels(B).rank(A, t)`` (scores counted in registers; with the
AVX-512 and the AVX2 tile, those the CPU has)
vs ``rank_targets(A @ B, t)`` with one BLAS thread, A (batch, K), B (K, items), and the GFLOP/s
of the 2 * batch * K * items multiply-adds.
Times are wall-clock seconds per call on the same random float32 block after one warm-up call;
best and median over ``--repeat`` calls.
Writes ``bench/out/ranking.json`` and prints a line for bench/RESULTS.md.
"""
import argparse
import datetime
import json
import os
import statistics
import sys
import time

import numpy as np
from machine import cpu_name  # bench/machine.py (this folder is on sys.path)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))
from gru_engine import _ranking  # noqa: E402
from gru_engine.ranking import ItemPanels, panels_available, rank_targets, top_k  # noqa: E402
from gru_engine.model import _thread_limit  # noqa: E402


def timed(fn, repeat):
    fn()  # warm-up: page in the buffers, start the OpenMP team
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return {"best_s": min(times), "median_s": statistics.median(times), "repeat": repeat}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=512, help="rows of the score block")
    parser.add_argument("--items", type=int, default=40000, help="columns (items)")
    parser.add_argument("--k", type=int, default=20, help="k of top-k")
    parser.add_argument("--repeat", type=int, default=10, help="timed calls per variant")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2],
                        help="kernel thread counts to time (0 = OpenMP default)")
    parser.add_argument("--hidden", type=int, nargs="*", default=[101, 501],
                        help="K of the fused score-and-rank comparison (none: skip it)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                      "out", "ranking.json"))
    args = parser.parse_args(argv)
    if args.batch < 1 or args.items < 1 or not 1 <= args.k <= args.items or args.repeat < 1 \
            or min(args.threads) < 0:
        parser.error("need batch >= 1, items >= 1, 1 <= k <= items, repeat >= 1, threads >= 0")

    rng = np.random.default_rng(args.seed)
    scores = rng.standard_normal((args.batch, args.items), dtype=np.float32)
    targets = rng.integers(0, args.items, size=args.batch)
    rows = np.arange(args.batch)

    def numpy_rank():
        return (scores > scores[rows, targets][:, None]).sum(1)

    def numpy_top_k():
        return np.argpartition(-scores, args.k - 1, axis=1)[:, :args.k]

    # the two sides must agree before they are timed
    if not np.array_equal(rank_targets(scores, targets, "optimistic"), numpy_rank() + 1.0):
        raise SystemExit("rank kernel disagrees with NumPy")
    ref = np.sort(np.take_along_axis(scores, numpy_top_k(), 1), axis=1)[:, ::-1]
    if not np.array_equal(top_k(scores, args.k)[1], ref):
        raise SystemExit("top-k kernel disagrees with NumPy")

    numpy_times = {"rank": timed(numpy_rank, args.repeat),
                   "top_k_argpartition": timed(numpy_top_k, args.repeat)}
    kernels = {}
    for n_threads in args.threads:
        rank = timed(lambda: rank_targets(scores, targets, "optimistic", n_threads=n_threads),
                     args.repeat)
        topk = timed(lambda: top_k(scores, args.k, n_threads=n_threads), args.repeat)
        kernels[str(n_threads or _ranking.max_threads())] = {
            "rank": rank, "top_k": topk,
            "rank_speedup_best": numpy_times["rank"]["best_s"] / rank["best_s"],
            "top_k_speedup_best": numpy_times["top_k_argpartition"]["best_s"] / topk["best_s"]}
    fused = {}
    for K in args.hidden if panels_available() else []:
        A = rng.standard_normal((args.batch, K), dtype=np.float32)
        B = rng.standard_normal((K, args.items), dtype=np.float32)
        panels, out = ItemPanels(B), np.empty((args.batch, args.items), np.float32)
        flop = 2.0 * args.batch * K * args.items
        with _thread_limit(1):
            blas = timed(lambda: rank_targets(np.dot(A, B, out=out), targets), args.repeat)
        fused[str(K)] = {"blas_gemm_plus_rank": blas, "blas_gflops": flop / blas["best_s"] / 1e9}
        for isa, name in ((2, "avx512"), (1, "avx2")):
            if _ranking.limit_panel_isa(isa) != isa:
                continue
            panel = timed(lambda: panels.rank(A, targets), args.repeat)
            fused[str(K)][f"panels_{name}"] = panel
            fused[str(K)][f"panels_{name}_gflops"] = flop / panel["best_s"] / 1e9
        _ranking.limit_panel_isa(2)
    record = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{cpu_name()}, {os.cpu_count()} logical CPUs",
        "command": " ".join(["python bench/bench_ranking.py"] + (sys.argv[1:] if argv is None else argv)),
        "shape": [args.batch, args.items], "k": args.k, "openmp": _ranking.openmp_enabled(),
        "numpy_version": np.__version__, "load_average": list(os.getloadavg()),
        "numpy": numpy_times, "kernel_by_threads": kernels, "fused_by_hidden": fused,
        "panels_available": panels_available(),
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(record, f, indent=2)

    def ms(d):
        return f"{d['best_s'] * 1e3:.2f} ms (median {d['median_s'] * 1e3:.2f})"

    shape = f"{args.batch}x{args.items}"
    print(f"load average {os.getloadavg()[0]:.2f}; NumPy rank {ms(numpy_times['rank'])}, "
          f"argpartition top-{args.k} {ms(numpy_times['top_k_argpartition'])}")
    for threads, r in kernels.items():
        print(f"{threads} thread(s): rank {ms(r['rank'])}, {r['rank_speedup_best']:.1f}x; "
              f"top-{args.k} {ms(r['top_k'])}, {r['top_k_speedup_best']:.1f}x")
    for K, r in fused.items():
        panels = ", ".join(f"panels {name} {ms(r[f'panels_{name}'])} "
                           f"({r[f'panels_{name}_gflops']:.0f} GFLOP/s)"
                           for name in ("avx512", "avx2") if f"panels_{name}" in r)
        print(f"fused score+rank, K={K}, 1 thread: BLAS GEMM + rank {ms(r['blas_gemm_plus_rank'])} "
              f"({r['blas_gflops']:.0f} GFLOP/s); {panels}")
    cells = "; ".join(f"{t} thr: rank {r['rank']['best_s'] * 1e3:.2f} ms ({r['rank_speedup_best']:.1f}x), "
                      f"top-{args.k} {r['top_k']['best_s'] * 1e3:.2f} ms ({r['top_k_speedup_best']:.1f}x)"
                      for t, r in kernels.items())
    print(f"| {record['date']} | {record['machine']} | `{record['command']}` | {shape} float32, "
          f"NumPy rank {numpy_times['rank']['best_s'] * 1e3:.2f} ms, argpartition "
          f"{numpy_times['top_k_argpartition']['best_s'] * 1e3:.2f} ms; {cells} (best of "
          f"{args.repeat}) |")

if __name__ == "__main__":
    main()

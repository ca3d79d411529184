"""Rank and top-k kernels (gru_engine._ranking) against the NumPy one-liners they replace.

    python bench/bench_ranking.py                      # 512 x 40000, kernels on 1 and 2 threads
    python bench/bench_ranking.py --threads 1 --repeat 20

Rank: ``rank_targets(scores, t)`` vs ``(scores > scores[arange(B), t][:, None]).sum(1)``.
Top-k: ``top_k(scores, k)`` (sorted, best first) vs ``np.argpartition(-scores, k-1, 1)[:, :k]``
(unsorted, so NumPy is given the easier task). Both NumPy expressions run on one thread; the
speed-up that counts is the kernels' on 1 thread, other thread counts are shown beside it.
Fused (``--shapes RxKxN ...``, default 512x101x40000 and 512x481x17376, the rsc15-like and
yoochoose-1-64 hidden-480 output layers): ``ItemPanels(B).rank(A, t)`` (scores counted in
registers; every tile the CPU has, AVX-512 and AVX2 forced) and the BLAS path of the scorers
(``rank_targets(A @ B, t)``, one BLAS thread per block), both with the rows split over
``--fused-threads`` threads by the scorers' own ``run_row_blocks``; beside them the sgemm
CEILING of the same shape in the same run (``np.dot(A, B)`` alone, BLAS on as many threads),
and each variant's GFLOP/s (2 R K N / median time, measured) as a fraction of it. Variants are
timed round-robin (one call each per round), so a busy machine slows all of them alike.
``--baseline-so`` times the panel kernels of an older build of ``_ranking`` beside the current
ones (before/after in one run).
Times are wall-clock seconds per call on the same random float32 block after one warm-up call;
best and median over ``--repeat`` calls.
Writes ``bench/out/ranking.json`` and prints a line for bench/RESULTS.md.
"""
import argparse
import datetime
import importlib.util
import json
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from machine import cpu_name  # bench/machine.py (this folder is on sys.path)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))
from gru_engine import _ranking  # noqa: E402
from gru_engine.ranking import ItemPanels, panels_available, rank_targets, top_k  # noqa: E402
from gru_engine.backends.cpu_scoring import MIN_BLOCK_ROWS, run_row_blocks  # noqa: E402
from threadpoolctl import threadpool_info, threadpool_limits  # noqa: E402


def load_baseline(path):
    """An older build of the extension, loaded under its own name beside the current one."""
    spec = importlib.util.spec_from_file_location("_ranking", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def round_robin(variants: dict, rounds: int) -> dict:
    """Time each variant once per round, in turn, after one warm-up call each: wall seconds
    and CPU seconds of the whole process (all threads; on a busy machine the CPU time leaves
    out the time the threads waited for a core). A variant that returns a (wall, cpu) pair has
    timed itself (set-up outside its clock)."""
    for fn in variants.values():
        fn()
    wall = {name: [] for name in variants}
    cpu = {name: [] for name in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            t0, c0 = time.perf_counter(), time.process_time()
            own = fn()
            w, c = own if own is not None else (time.perf_counter() - t0, time.process_time() - c0)
            wall[name].append(w)
            cpu[name].append(c)
    return {name: {"best_s": min(wall[name]), "median_s": statistics.median(wall[name]),
                   "median_cpu_s": statistics.median(cpu[name]), "repeat": rounds,
                   "all_s": wall[name], "all_cpu_s": cpu[name]} for name in variants}


def static_blocks(n_rows, n_threads, min_rows, block):
    """The scorers' earlier split (before the queue of run_row_blocks): n_threads equal
    blocks, block 0 on the calling thread."""
    n_blocks = min(max(1, n_threads), max(1, n_rows // min_rows))
    edges = np.linspace(0, n_rows, n_blocks + 1).astype(int)
    futures = [_STATIC_POOL.submit(block, k, int(edges[k]), int(edges[k + 1]))
               for k in range(1, n_blocks)]
    block(0, 0, int(edges[1]))
    for f in futures:
        f.result()


_STATIC_POOL = ThreadPoolExecutor(max_workers=8)


def blas_info() -> str:
    return "; ".join(f"{i.get('internal_api')} {i.get('version')} {i.get('architecture')}"
                     for i in threadpool_info() if i.get("user_api") == "blas")


def fused_comparison(args, rng) -> dict:
    """Per shape and thread count: the sgemm ceiling, the BLAS path and each panel tile (and
    those of ``--baseline-so``), GFLOP/s of the median and its fraction of the ceiling."""
    base = load_baseline(args.baseline_so) if args.baseline_so else None
    tiles = [(isa, name) for isa, name in ((2, "avx512"), (1, "avx2")) if isa <= _ranking.panel_isa()]
    out = {}
    for shape in args.shapes:
        R, K, N = (int(x) for x in shape.split("x"))
        A = rng.standard_normal((R, K), dtype=np.float32)
        B = rng.standard_normal((K, N), dtype=np.float32)
        t = rng.integers(0, N, R)
        S = np.empty((R, N), np.float32)
        panels = ItemPanels(B)
        want = panels.rank(A, t)
        if base is not None:
            bp = np.empty(-(-N // base.PANEL_COLUMNS) * K * base.PANEL_COLUMNS, np.float32)
            base.pack_panels(B, bp)
        flop = 2.0 * R * K * N
        for T in args.fused_threads:
            ranks = np.empty(R)

            def split(fn, static=False):
                def run():
                    if static:
                        static_blocks(R, T, MIN_BLOCK_ROWS, fn)
                    else:
                        run_row_blocks(R, T, MIN_BLOCK_ROWS, fn)
                return run

            def blas_block(k, a, b):
                ranks[a:b] = rank_targets(np.dot(A[a:b], B, out=S[a:b]), t[a:b])

            def panel_block(k, a, b):
                ranks[a:b] = panels.rank(A[a:b], t[a:b])

            def base_block(k, a, b):
                ng, ne, nan = np.empty(b - a, np.int64), np.empty(b - a, np.int64), np.zeros(b - a, np.uint8)
                base.panel_rank_counts(A[a:b], bp, N, t[a:b], ng, ne, nan)
                ranks[a:b] = ng + ne

            def with_isa(isa, fn, mod=_ranking):
                def run():
                    mod.limit_panel_isa(isa)
                    fn()
                return run

            def ceiling():
                with threadpool_limits(T, user_api="blas"):
                    np.dot(A, B, out=S)  # wakes BLAS's T threads after the change
                    t0, c0 = time.perf_counter(), time.process_time()
                    np.dot(A, B, out=S)
                    return time.perf_counter() - t0, time.process_time() - c0

            def blas_path():
                with threadpool_limits(1, user_api="blas"):
                    split(blas_block)()

            variants = {"sgemm_ceiling": ceiling, "blas_gemm_plus_rank": blas_path}
            for isa, name in tiles:
                variants[f"panels_{name}"] = with_isa(isa, split(panel_block))
                if T > 1:
                    variants[f"panels_{name}_static_split"] = with_isa(
                        isa, split(panel_block, static=True))
                if base is not None and isa <= base.panel_isa():
                    variants[f"baseline_panels_{name}"] = with_isa(isa, split(base_block), base)
            # every variant must give the same ranks before it is timed
            for name, fn in variants.items():
                if name == "sgemm_ceiling":
                    continue
                ranks[:] = -1
                fn()
                if not np.array_equal(ranks, want):
                    raise SystemExit(f"{name} ranks differ from ItemPanels.rank ({shape})")
            res = round_robin(variants, args.fused_repeat)
            _ranking.limit_panel_isa(2)
            if base is not None:
                base.limit_panel_isa(2)
            for r in res.values():
                r["gflops_median"] = flop / r["median_s"] / 1e9
                r["gflops_best"] = flop / r["best_s"] / 1e9
                r["gflops_per_cpu_s"] = flop / r["median_cpu_s"] / 1e9
            ceil = res["sgemm_ceiling"]
            for r in res.values():
                r["of_ceiling"] = r["gflops_median"] / ceil["gflops_median"]
                r["of_ceiling_cpu"] = r["gflops_per_cpu_s"] / ceil["gflops_per_cpu_s"]
            out[f"{shape}/{T}"] = res
    return out


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
    parser.add_argument("--shapes", nargs="*", default=["512x101x40000", "512x481x17376"],
                        help="RxKxN of the fused score-and-rank comparison (none: skip it)")
    parser.add_argument("--fused-threads", type=int, nargs="+", default=[1, 2],
                        help="threads of the fused comparison (row blocks; BLAS threads of "
                             "the ceiling)")
    parser.add_argument("--fused-repeat", type=int, default=7, help="rounds of the fused part")
    parser.add_argument("--baseline-so", default=None,
                        help="an older build of gru_engine/_ranking (.so) to time beside")
    parser.add_argument("--skip-scan", action="store_true",
                        help="only the fused comparison (no rank / top-k on score blocks)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                      "out", "ranking.json"))
    args = parser.parse_args(argv)
    if args.batch < 1 or args.items < 1 or not 1 <= args.k <= args.items or args.repeat < 1 \
            or min(args.threads) < 0:
        parser.error("need batch >= 1, items >= 1, 1 <= k <= items, repeat >= 1, threads >= 0")

    rng = np.random.default_rng(args.seed)
    numpy_times, kernels = ({}, {}) if args.skip_scan else scan_comparison(args, rng)
    fused = fused_comparison(args, rng) if args.shapes and panels_available() else {}
    record = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{cpu_name()}, {os.cpu_count()} logical CPUs",
        "command": " ".join(["python bench/bench_ranking.py"] + (sys.argv[1:] if argv is None else argv)),
        "shape": [args.batch, args.items], "k": args.k, "openmp": _ranking.openmp_enabled(),
        "numpy_version": np.__version__, "blas": blas_info(),
        "openblas_env": {k: v for k, v in os.environ.items() if k.startswith("OPENBLAS")},
        "load_average": list(os.getloadavg()),
        "numpy": numpy_times, "kernel_by_threads": kernels, "fused": fused,
        "panels_available": panels_available(), "panel_isa": _ranking.panel_isa(),
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(record, f, indent=2)

    def ms(d):
        return f"{d['best_s'] * 1e3:.2f} ms (median {d['median_s'] * 1e3:.2f})"

    print(f"{record['date']}, {record['machine']}, BLAS: {record['blas']} "
          f"{record['openblas_env']}; load average after {os.getloadavg()[0]:.2f}")
    if kernels:
        print(f"NumPy rank {ms(numpy_times['rank'])}, argpartition top-{args.k} "
              f"{ms(numpy_times['top_k_argpartition'])}")
    for threads, r in kernels.items():
        print(f"{threads} thread(s): rank {ms(r['rank'])}, {r['rank_speedup_best']:.1f}x; "
              f"top-{args.k} {ms(r['top_k'])}, {r['top_k_speedup_best']:.1f}x")
    for key, res in fused.items():
        shape, T = key.split("/")
        print(f"fused score+rank {shape} (R x K x N), {T} thread(s), measured, median of "
              f"{args.fused_repeat} rounds:")
        ceil = res["sgemm_ceiling"]
        print(f"  {'':26s} {'wall ms':>8s} {'best':>8s}  {'GFLOP/s':>7s} {'% ceil':>6s}"
              f"  | {'GFLOP/cpu-s':>11s} {'% ceil':>6s}")
        for name, r in res.items():
            print(f"  {name:26s} {r['median_s'] * 1e3:8.2f} {r['best_s'] * 1e3:8.2f}  "
                  f"{r['gflops_median']:7.1f} {100 * r['of_ceiling']:6.1f}  | "
                  f"{r['gflops_per_cpu_s']:11.1f} {100 * r['of_ceiling_cpu']:6.1f}")
        print(f"  (sgemm ceiling, same shape, {T} BLAS thread(s): {ceil['gflops_median']:.1f} "
              f"GFLOP/s wall, {ceil['gflops_per_cpu_s']:.1f} GFLOP per CPU-second)")
    if kernels:
        cells = "; ".join(f"{t} thr: rank {r['rank']['best_s'] * 1e3:.2f} ms ({r['rank_speedup_best']:.1f}x), "
                          f"top-{args.k} {r['top_k']['best_s'] * 1e3:.2f} ms ({r['top_k_speedup_best']:.1f}x)"
                          for t, r in kernels.items())
        print(f"| {record['date']} | {record['machine']} | `{record['command']}` | "
              f"{args.batch}x{args.items} float32, NumPy rank "
              f"{numpy_times['rank']['best_s'] * 1e3:.2f} ms, argpartition "
              f"{numpy_times['top_k_argpartition']['best_s'] * 1e3:.2f} ms; {cells} (best of "
              f"{args.repeat}) |")


def scan_comparison(args, rng):
    """Rank and top-k kernels on a score block against the NumPy expressions."""
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
    return numpy_times, kernels


if __name__ == "__main__":
    main()

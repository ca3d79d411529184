"""Benchmark SessionGRU on one train/test split: accuracy, training and evaluation speed.

Reports Recall@k / MRR@k (conservative ties, mean over seeds), training events/s per epoch
(the one-off sample-store build is reported separately), evaluation predictions/s (median of
``--eval-repeats`` evaluations per seed; the first, cold one also apart), peak RSS,
and the GEMM FLOP rate of training against a measured single-precision GEMM peak. Writes JSON to
``bench/out/``.

    python bench/bench_gru.py --train /work/shared/data/rsc15-100k/rsc15_100k_train_full.tsv.gz \
        --test /work/shared/data/rsc15-100k/rsc15_100k_test.tsv.gz \
        -p "loss=cross-entropy,layers=100,n_epochs=3,batch_size=32,dropout_p_hidden=0.4,learning_rate=0.2,momentum=0.2" \
        --seeds 1 2 3 --threads 2
"""
from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import resource
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from gru_engine.batching import full_schedule  # noqa: E402
from gru_engine.data import build_sessions, read_events  # noqa: E402
from gru_engine.model import SessionGRU  # noqa: E402
from gru_engine.threads import thread_limit  # noqa: E402

OFFICIAL = {"recall@5": 0.4913, "recall@10": 0.5829, "recall@20": 0.6550, "mrr@20": 0.3453,
            "train_events_per_s": "9-13k", "eval_predictions_per_s": 92000}
DEFAULT_PARAMS = ("loss=cross-entropy,constrained_embedding=True,embedding=0,elu_param=0,"
                  "layers=100,n_epochs=3,batch_size=32,dropout_p_embed=0.0,dropout_p_hidden=0.4,"
                  "learning_rate=0.2,momentum=0.2,n_sample=2048,sample_alpha=0.5,bpreg=0.0,"
                  "logq=1.0")
DATA = "/work/shared/data/rsc15-100k"


def sgemm_peak(n_threads, size=2048, repeats=5) -> float:
    """GFLOP/s of the best of ``repeats`` float32 (size x size) @ (size x size) products."""
    rng = np.random.default_rng(0)
    a = rng.random((size, size), dtype=np.float32)
    b = rng.random((size, size), dtype=np.float32)
    out = np.empty_like(a)
    best = np.inf
    with thread_limit(n_threads):
        np.dot(a, b, out=out)
        for _ in range(repeats):
            t0 = time.perf_counter()
            np.dot(a, b, out=out)
            best = min(best, time.perf_counter() - t0)
    return 2.0 * size ** 3 / best / 1e9


def train_flops_per_epoch(model, sessions) -> float:
    """FLOPs of the GEMMs of one epoch: GRU input/hidden products forward and backward and the
    three sampled-output products (scores, dWy, dh)."""
    order = sessions.order_by_start_time()
    min_rows = 2 if model.n_sample == 0 else 1
    rows, *_ = full_schedule(sessions.items, order, sessions.offsets, model.batch_size, min_rows)
    rows = rows.astype(np.float64)
    layers = list(model.layers)
    H_last = layers[-1]
    flops = 3 * 2.0 * np.sum(rows * (rows + model.n_sample)) * H_last
    for l, H in enumerate(layers):
        flops += 2 * 2.0 * rows.sum() * H * 3 * H  # h @ Wh, dWh
        if l > 0 or model.input_mode_ != "onehot":
            n_in = layers[l - 1] if l > 0 else model.subnet_params("id")["Wx"][0].shape[0]
            flops += 3 * 2.0 * rows.sum() * n_in * 3 * H  # x @ Wx, dWx, dx
    return float(flops)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train", default=os.path.join(DATA, "rsc15_100k_train_full.tsv.gz"))
    ap.add_argument("--test", default=os.path.join(DATA, "rsc15_100k_test.tsv.gz"))
    ap.add_argument("-p", "--params", default=DEFAULT_PARAMS, help="official key=value string")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--threads", type=int, default=2, help="threads for evaluation (scoring blocks, SessionGRU n_threads) and the "
                    "sgemm peak")
    ap.add_argument("--train-threads", type=int, default=None,
                    help="BLAS threads for training (default: --threads)")
    ap.add_argument("-m", "--cutoffs", type=int, nargs="+", default=[5, 10, 20])
    ap.add_argument("--eval-batch", type=int, default=512)
    ap.add_argument("--eval-repeats", type=int, default=3,
                    help="evaluations per seed: the first (cold: right after training, first "
                    "buffers) is reported apart; the headline is the median of all")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "out"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    log = logging.getLogger("bench")

    t0 = time.perf_counter()
    train, test = read_events(args.train), read_events(args.test)
    log.info("read data in %.1f s", time.perf_counter() - t0)
    train_threads = args.train_threads or args.threads
    peak = sgemm_peak(args.threads)
    log.info("sgemm peak with %d threads: %.1f GFLOP/s", args.threads, peak)
    runs = []
    for seed in args.seeds:
        model = SessionGRU.from_param_string(args.params, random_state=seed,
                                             n_threads=train_threads)
        model.fit(train)
        sessions, _, _ = build_sessions(train, model.item_index_)
        flops = train_flops_per_epoch(model, sessions)
        model.set_params(n_threads=args.threads)  # evaluation threads (see SessionGRU.evaluate)
        evals = [model.evaluate(test, cutoffs=tuple(args.cutoffs), batch_size=args.eval_batch,
                                by_position=False) for _ in range(max(1, args.eval_repeats))]
        res = evals[0]
        eval_rates = [r["n_events"] / r["seconds"] for r in evals]
        run = {
            "seed": seed,
            "metrics": {k: v for k, v in res.items() if k.startswith(("recall", "mrr"))},
            "n_predictions": res["n_events"],
            "eval_seconds": [r["seconds"] for r in evals],
            "eval_predictions_per_s": float(np.median(eval_rates)),
            "eval_predictions_per_s_cold": eval_rates[0],
            "epoch_seconds": model.epoch_times_,
            "train_events_per_s": model.events_per_s_,
            "sample_store_seconds": model.sample_store_seconds_,
            "epoch_losses": model.loss_history_,
            "train_gemm_gflops_per_s": [flops / t / 1e9 for t in model.epoch_times_],
        }
        log.info("seed %d: %s, training %s events/s, eval %s predictions/s", seed,
                 {k: round(v, 4) for k, v in run["metrics"].items()},
                 [round(x) for x in run["train_events_per_s"]], [round(x) for x in eval_rates])
        runs.append(run)
    mean = {k: float(np.mean([r["metrics"][k] for r in runs])) for k in runs[0]["metrics"]}
    summary = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}, "
                   f"{os.cpu_count()} cpus",
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
        "train": args.train, "test": args.test, "params": args.params,
        "threads": args.threads, "train_threads": train_threads,
        "mean_metrics": mean,
        "mean_train_events_per_s": float(np.mean([np.mean(r["train_events_per_s"]) for r in runs])),
        "mean_eval_predictions_per_s": float(np.mean([r["eval_predictions_per_s"] for r in runs])),
        "mean_eval_predictions_per_s_cold": float(np.mean([r["eval_predictions_per_s_cold"]
                                                           for r in runs])),
        "sgemm_peak_gflops_per_s": peak,
        "mean_train_gemm_gflops_per_s": float(np.mean([np.mean(r["train_gemm_gflops_per_s"])
                                                       for r in runs])),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "official_reference": OFFICIAL,
        "runs": runs,
    }
    os.makedirs(args.out, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = os.path.join(args.out, f"bench_gru-{stamp}.json")
    with open(path, "w") as f:
        json.dump(summary, f, indent=2)
    print(json.dumps({k: v for k, v in summary.items() if k != "runs"}, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

"""Benchmark: item-feature variants vs ID-only GRU4Rec under the same random-search budget.

Usage (from the repository root)::

    nice python bench/bench_features_tuned.py --datasets amazon-beauty --variants id par-alt

For every dataset and variant: ``--trials`` random hyperparameter draws, each trained for
``--epochs`` epochs on the tuning split (carved from the training split, see
``bench_features.load``: amazon-* leave-last-out of the training sequences, yoochoose-category
its ``valid`` day parts) and scored on its validation part (Recall@20); the best draw is
retrained on the full training split with ``--seeds`` and tested (Recall@20 / MRR@20, all
training items, conservative ties). The draws come from one generator seeded by
``--search-seed``, so every variant sees the same hyperparameter draws (a paired budget).

Searched: learning rate (log-uniform 0.02..0.3), dropout_p_hidden {0, 0.1, 0.2, 0.3},
dropout_p_embed {0, 0.1, 0.25}, momentum {0, 0.3, 0.6}. Fixed: hidden 64 (ID and feature
subnets), batch 32, n_sample 512, cross-entropy, logq 1, one thread.

Output: ``<out>/features_tuned.json`` (every trial and seed) and a markdown table on stdout.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from datetime import datetime, timezone

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

from bench_features import load  # noqa: E402
from gru_engine.data import build_sessions  # noqa: E402
from gru_engine.evaluation import evaluate_sessions  # noqa: E402
from gru_engine.exceptions import ModelFitError  # noqa: E402
from gru_engine.feature_model import FeatureSessionGRU  # noqa: E402

logger = logging.getLogger("bench_features_tuned")
DATASETS = ("amazon-beauty", "amazon-toys", "yoochoose-category")
# name -> FeatureSessionGRU keyword arguments of the variant
VARIANTS = {
    "id": dict(architecture="id"),
    "par-concat": dict(architecture="parallel", combine="concat", strategy="simultaneous"),
    "par-sum": dict(architecture="parallel", combine="sum", strategy="simultaneous"),
    "par-alt": dict(architecture="parallel", combine="concat", strategy="alternating"),
    "par-res": dict(architecture="parallel", combine="concat", strategy="residual"),
    "out-feat": dict(architecture="parallel", combine="sum", strategy="simultaneous",
                     output_features=True),
    "par-out-feat": dict(architecture="parallel", combine="concat", strategy="simultaneous",
                         output_features=True),
    "feat-out-feat": dict(architecture="feature", combine="concat", strategy="simultaneous",
                          output_features=True),
}


def draw_trials(n: int, seed: int) -> list:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        out.append({"learning_rate": float(np.exp(rng.uniform(np.log(0.02), np.log(0.3)))),
                    "dropout_p_hidden": float(rng.choice([0.0, 0.1, 0.2, 0.3])),
                    "dropout_p_embed": float(rng.choice([0.0, 0.1, 0.25])),
                    "momentum": float(rng.choice([0.0, 0.3, 0.6]))})
    return out


def fit_score(variant, hyper, seed, train, test, feats, targets, args):
    model = FeatureSessionGRU(layers=[args.hidden], feature_layers=[args.hidden],
                              n_epochs=args.epochs, batch_size=32, n_sample=512,
                              loss="cross-entropy", logq=1.0, sample_alpha=0.5,
                              sample_store_size=1_000_000, random_state=seed, n_threads=1,
                              **VARIANTS[variant], **hyper)
    t0 = time.perf_counter()
    try:
        model.fit(train, item_features=feats)
    except ModelFitError as e:
        logger.info("%s %s diverged: %s", variant, hyper, e)
        return None
    fit_s = time.perf_counter() - t0
    sessions, _, _ = build_sessions(test, model.item_index_)
    res = evaluate_sessions(model.scorer(), sessions, cutoffs=(20,), mode="conservative",
                            batch_size=512, targets=targets)
    eps = model.events_per_s_[1:] or model.events_per_s_
    return {"recall@20": float(res["recall@20"]), "mrr@20": float(res["mrr@20"]),
            "fit_s": fit_s, "events_per_s": float(np.median(eps))}


def run(name, args) -> dict:
    d = load(args.data_dir, name)
    trials = draw_trials(args.trials, args.search_seed)
    out = {}
    for variant in args.variants:
        t0 = time.perf_counter()
        tuning = []
        for hyper in trials:
            r = fit_score(variant, hyper, args.search_seed, d["tune_train"], d["tune_valid"],
                          d["features"], d["targets"], args)
            tuning.append({"params": hyper, "result": r})
            logger.info("%s %s %s: valid %s", name, variant, hyper, r)
        ok = [t for t in tuning if t["result"] is not None]
        best = max(ok, key=lambda t: t["result"]["recall@20"])["params"]
        seeds = []
        for seed in args.seeds:
            r = fit_score(variant, best, seed, d["train"], d["test"], d["features"],
                          d["targets"], args)
            seeds.append(r)
            logger.info("%s %s seed %d: test %s", name, variant, seed, r)
        out[variant] = {"tuning": tuning, "best": best, "seeds": seeds,
                        "seconds": time.perf_counter() - t0}
    return out


def table(results: dict) -> str:
    lines = ["| dataset | variant | best valid R@20 | test R@20 (mean of seeds; per seed) | "
             "test MRR@20 (mean) | chosen lr / drop_h / drop_e / mom | train events/s |",
             "|---|---|---|---|---|---|---|"]
    for name, res in results.items():
        for v, r in res.items():
            ok = [s for s in r["seeds"] if s is not None]
            val = max(t["result"]["recall@20"] for t in r["tuning"] if t["result"] is not None)
            rec = [s["recall@20"] for s in ok]
            b = r["best"]
            lines.append(
                f"| {name} | {v} | {val:.4f} | {np.mean(rec):.4f} ("
                + " / ".join(f"{x:.4f}" for x in rec) + f") | "
                f"{np.mean([s['mrr@20'] for s in ok]):.4f} | {b['learning_rate']:.3f} / "
                f"{b['dropout_p_hidden']:g} / {b['dropout_p_embed']:g} / {b['momentum']:g} | "
                f"{np.median([s['events_per_s'] for s in ok]):.0f} |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    ap.add_argument("--variants", nargs="+", default=["id", "par-alt", "out-feat"],
                    choices=list(VARIANTS))
    ap.add_argument("--data-dir", default="/work/shared/data")
    ap.add_argument("--out", default=os.path.join(HERE, "out"))
    ap.add_argument("--trials", type=int, default=6)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--search-seed", type=int, default=7)
    ap.add_argument("--tag", default="", help="suffix of the output file name")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("gru_engine").setLevel(logging.WARNING)
    logger.setLevel(logging.INFO)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"features_tuned{args.tag}.json")
    results = {}
    started = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M")
    for name in args.datasets:
        results[name] = run(name, args)
        with open(path, "w") as f:
            json.dump({"args": vars(args), "started_utc": started, "command":
                       "python " + " ".join(sys.argv), "results": results}, f, indent=1)
    print(table(results))


if __name__ == "__main__":
    main()

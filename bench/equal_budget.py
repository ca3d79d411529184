"""An extension against plain GRU4Rec under the same tuning budget (issue 14's protocol).

Each arm is a SessionGRU parameter space: the base space (``--space``) with the arm's own
``search`` entries added (and its ``fixed`` ones set). Per arm: ``--trials`` random-search
trials (Optuna's RandomSampler, no pruning, every trial with the same initialisation seed) on a
validation split carved from the training events (the ``--valid-split`` fraction of sessions
that end last), then the best trial's parameters retrained on all training events with each
``--seeds`` seed and tested: Recall@20 / MRR@20 (conservative ties), fit seconds, training
events/s. Retrain runs are interleaved (seed 1: every arm, seed 2: ...) so that every arm sees
the same load. One JSON line per search and per test run is appended to ``--out``; a Markdown
table is printed at the end.

    python bench/equal_budget.py --dataset rsc15-100k --space bench/spaces/rsc15_row.json \
        --arm plain --arm augment=bench/spaces/augment.json --trials 8 --seeds 1 2 3
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.append(os.path.join(HERE, ".."))  # after PYTHONPATH: `PYTHONPATH=<tree>` measures that tree
sys.path.insert(0, HERE)
from bench_augment import DATA, SPLITS  # noqa: E402

from gru_engine import SessionGRU  # noqa: E402
from gru_engine import tune  # noqa: E402
from gru_engine.data import read_events  # noqa: E402


def arm_space(base: tune.Space, extra_path: str | None) -> tune.Space:
    """The base space with an arm's ``fixed`` / ``search`` entries (a space-like JSON file)."""
    if extra_path is None:
        return base
    with open(extra_path) as f:
        extra = json.load(f)
    merged = {"fixed": {**base.fixed, **extra.get("fixed", {})},
              "search": {**base.search, **extra.get("search", {})}}
    for name in merged["search"]:
        merged["fixed"].pop(name, None)
    return tune.parse_space(merged, extra_path)


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", choices=sorted(SPLITS), default="rsc15-100k")
    ap.add_argument("--data", default=DATA)
    ap.add_argument("--space", required=True, help="base space JSON (tune's format)")
    ap.add_argument("--arm", action="append", required=True,
                    help="NAME (the base space) or NAME=extra.json (entries added to it)")
    ap.add_argument("--trials", type=int, default=8, help="random trials per arm")
    ap.add_argument("--valid-split", type=float, default=0.1)
    ap.add_argument("--metric", default="mrr@20", help="validation metric maximised")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--search-seed", type=int, default=0,
                    help="seed of the sampler and of every trial's initialisation")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    out = a.out or os.path.join(HERE, "out", f"equal_budget_{a.dataset}.jsonl")
    os.makedirs(os.path.dirname(out), exist_ok=True)

    def log(record: dict) -> None:
        with open(out, "a") as f:
            f.write(json.dumps(record) + "\n")

    base = tune.load_space(a.space)
    arms = {}
    for text in a.arm:
        name, _, path = text.partition("=")
        arms[name] = arm_space(base, path or None)
    train_path, test_path = (os.path.join(a.data, f) for f in SPLITS[a.dataset])
    train, test = read_events(train_path), read_events(test_path)
    search_train, valid = tune.split_validation(train, a.valid_split)
    settings = tune.TrialSettings(metric=a.metric, seed=a.search_seed, n_threads=a.threads)

    best = {}
    for name, space in arms.items():
        load, t0 = os.getloadavg()[0], time.perf_counter()
        result = tune.search(search_train, valid, space, n_trials=a.trials, settings=settings,
                             sampler="random", pruner="none", study_name=f"{a.dataset}-{name}")
        best[name] = result.best_params
        log({"date": now(), "dataset": a.dataset, "arm": name, "kind": "search",
             "trials": a.trials, "valid_split": a.valid_split, "seconds": time.perf_counter() - t0,
             "load_start": load, "load_end": os.getloadavg()[0], **result.to_json()})
        print(f"{name}: best validation {a.metric} {result.best_value:.4f} "
              f"(trial {result.best_number} of {a.trials}): {result.best_param_string}",
              flush=True)

    runs = []
    for seed in a.seeds:
        for name, params in best.items():
            model = SessionGRU(**{**params, "random_state": seed, "n_threads": a.threads})
            load, t0 = os.getloadavg()[0], time.perf_counter()
            model.fit(train)
            fit_s = time.perf_counter() - t0
            res = model.evaluate(test, cutoffs=(20,), by_position=False)
            run = {"date": now(), "dataset": a.dataset, "arm": name, "kind": "test",
                   "seed": seed, "recall@20": res["recall@20"], "mrr@20": res["mrr@20"],
                   "n_predictions": res["n_events"], "fit_s": fit_s,
                   "events_per_s": float(np.mean(model.events_per_s_)), "load_start": load,
                   "load_end": os.getloadavg()[0], "params": tune.param_string(params)}
            runs.append(run)
            log(run)
            print(f"{name} seed {seed}: R@20 {run['recall@20']:.4f} MRR@20 {run['mrr@20']:.4f} "
                  f"fit {fit_s:.1f} s, {run['events_per_s']:.0f} ev/s (load {load:.1f})",
                  flush=True)

    print(f"\n{a.dataset}, {a.trials} random trials per arm on a {a.valid_split:g} validation "
          f"split ({a.metric}), best retrained with seeds {a.seeds}:\n")
    print("| arm | Recall@20 mean (min-max) | MRR@20 mean (min-max) | fit s | events/s |")
    print("|---|---|---|---|---|")
    for name in best:
        rs = [r for r in runs if r["arm"] == name]
        rec, mrr = [r["recall@20"] for r in rs], [r["mrr@20"] for r in rs]
        print(f"| {name} | {np.mean(rec):.4f} ({min(rec):.4f}-{max(rec):.4f}) | "
              f"{np.mean(mrr):.4f} ({min(mrr):.4f}-{max(mrr):.4f}) | "
              f"{np.mean([r['fit_s'] for r in rs]):.0f} | "
              f"{np.mean([r['events_per_s'] for r in rs]):.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

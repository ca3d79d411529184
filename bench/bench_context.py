"""Context-aware GRU vs plain GRU4Rec under the same tuning budget (gru_engine.context).

For each dataset, seed and variant: a random search of ``--trials`` configurations (Optuna's
RandomSampler seeded by the seed, so every variant tries the same configurations) fitted on a
training split and scored (MRR@20) on a validation split carved from the training data by
time; the best configuration is refitted on the full training data with the same seed and
evaluated on the test data. Reports Recall@20/MRR@20, the final fit's seconds and training
events/s, and the load average. Writes JSON (``--out``) and prints a table.

    nice python bench/bench_context.py --datasets rsc15-100k diginetica-sample --seeds 1 2 3 \
        --trials 6 --epochs 2 --out /tmp/context.json

Datasets (``/work/shared/data``): ``rsc15-100k`` (train_tr / train_valid / train_full / test
as shipped); ``diginetica-sample`` (the views sample: the last 10% of sessions by end time are
the test set, the last 10% of the rest the validation set; its ``Time`` is the event date's
midnight UTC plus the time since the session start, so hour of day is not a real clock time
there). Datasets with ordinal times (yoochoose-1-64, diginetica) cannot take time context.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

DATA = "/work/shared/data"
VARIANTS = {
    "plain": {},
    "ctx-in": {"context_input": "concat"},
    "ctx-in-out": {"context_input": "concat", "context_output": "multiply"},
    "ctx-mul-in": {"context_input": "multiply"},
    "ctx-out": {"context_output": "multiply"},
}
SEARCH = {
    "layers": {"type": "int", "low": 64, "high": 160, "step": 32},
    "learning_rate": {"type": "float", "low": 0.02, "high": 0.2, "log": True},
    "momentum": {"type": "float", "low": 0.0, "high": 0.5, "step": 0.1},
    "dropout_p_hidden": {"type": "float", "low": 0.0, "high": 0.4, "step": 0.1},
    "batch_size": {"type": "categorical", "choices": [32, 64]},
}


def load(name):
    from gru_engine.data import read_events
    from gru_engine.tune import split_validation
    if name == "rsc15-100k":
        f = lambda part: read_events(f"{DATA}/rsc15-100k/rsc15_100k_{part}.tsv.gz")
        return f("train_tr"), f("train_valid"), f("train_full"), f("test")
    if name == "diginetica-sample":
        ev = read_events(f"{DATA}/diginetica-sample/diginetica_sample_views.tsv.gz")
        ev = {k: ev[k] for k in ("SessionId", "ItemId", "Time")}
        full, test = split_validation(ev, 0.1)
        tr, va = split_validation(full, 0.1)
        return tr, va, full, test
    raise SystemExit(f"unknown dataset {name!r}")


def run(dataset, seed, variant, args, splits):
    from gru_engine import SessionGRU
    from gru_engine.tune import TrialSettings, parse_space, search
    tr, va, full, test = splits
    fixed = dict(loss="cross-entropy", n_epochs=args.epochs, n_sample=args.n_sample,
                 **VARIANTS[variant])
    space = parse_space({"fixed": fixed, "search": SEARCH})
    res = search(tr, va, space, n_trials=args.trials, sampler="random", pruner="none",
                 settings=TrialSettings(metric="mrr@20", seed=seed, n_threads=1))
    params = dict(res.best_params, random_state=seed, n_threads=1)
    t0 = time.perf_counter()
    model = SessionGRU(**params).fit(full)
    fit_s = time.perf_counter() - t0
    r = model.evaluate(test, cutoffs=(20,), by_position=False)
    return {"dataset": dataset, "seed": seed, "variant": variant,
            "valid_mrr20": res.best_value, "best": res.best_param_string,
            "recall20": r["recall@20"], "mrr20": r["mrr@20"], "fit_s": fit_s,
            "events_per_s": float(np.mean(model.events_per_s_)), "load": os.getloadavg()[0],
            "trial_s": sum(t.seconds or 0 for t in res.trials)}


def speed(args):
    """Training events/s of each variant against plain, interleaved (plain, v1, v2, plain, ...)
    ``args.speed`` rounds of one epoch on rsc15-100k train_full, fixed parameters (layers 100,
    batch 32, n_sample 2048, one thread); prints per variant the median ratio to the plain
    epoch of the same round."""
    from gru_engine import SessionGRU
    full = load("rsc15-100k")[2]
    ratios = {v: [] for v in args.variants if v != "plain"}
    eps = {v: [] for v in args.variants}
    for rnd in range(args.speed):
        got = {}
        for v in args.variants:
            m = SessionGRU(layers=[100], n_epochs=1, n_sample=2048, n_threads=1, random_state=rnd,
                           **VARIANTS[v]).fit(full)
            got[v] = m.events_per_s_[0]
            eps[v].append(got[v])
        for v in ratios:
            ratios[v].append(got[v] / got["plain"])
        print(json.dumps({"round": rnd, "events_per_s": got, "load": os.getloadavg()[0]}),
              flush=True)
    for v in args.variants:
        r = f", median ratio to plain {np.median(ratios[v]):.3f}" if v in ratios else ""
        print(f"{v}: median {np.median(eps[v]):.0f} events/s{r}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--datasets", nargs="+", default=["rsc15-100k", "diginetica-sample"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    ap.add_argument("--variants", nargs="+", default=["plain", "ctx-in", "ctx-in-out"],
                    choices=list(VARIANTS))
    ap.add_argument("--trials", type=int, default=6)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--n-sample", type=int, default=512)
    ap.add_argument("--out", default="context.json")
    ap.add_argument("--speed", type=int, default=0,
                    help="instead of the search: this many interleaved rounds of training speed")
    args = ap.parse_args()
    if args.speed:
        return speed(args)
    import logging
    import optuna
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("gru_engine").setLevel(logging.ERROR)
    rows = []
    for ds in args.datasets:
        splits = load(ds)
        for seed in args.seeds:
            for v in args.variants:  # interleaved: the variants of a seed run back to back
                row = run(ds, seed, v, args, splits)
                rows.append(row)
                print(json.dumps(row), flush=True)
                with open(args.out, "w") as f:
                    json.dump({"args": vars(args), "rows": rows}, f, indent=1)
    print(f"\n| dataset | variant | Recall@20 (mean ± sd, {len(args.seeds)} seeds) | MRR@20 | "
          "fit s | events/s |")
    print("|---|---|---|---|---|---|")
    for ds in args.datasets:
        for v in args.variants:
            sel = [r for r in rows if r["dataset"] == ds and r["variant"] == v]
            f = lambda k: np.array([r[k] for r in sel])
            print(f"| {ds} | {v} | {f('recall20').mean():.4f} ± {f('recall20').std(ddof=1):.4f} "
                  f"| {f('mrr20').mean():.4f} ± {f('mrr20').std(ddof=1):.4f} | "
                  f"{f('fit_s').mean():.1f} | {f('events_per_s').mean():.0f} |")


if __name__ == "__main__":
    main()

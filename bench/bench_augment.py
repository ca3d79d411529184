"""Session augmentation (``augment_crop_p`` / ``augment_drop_p``) against plain GRU4Rec on one
train/test split: Recall@20 / MRR@20 (conservative ties), fit time and training events/s per
variant and seed. Runs are interleaved (seed 1: every variant, seed 2: every variant, ...) so
that every variant sees the same machine load; one JSON line per run is appended to ``--out``
as soon as it finishes, and a summary table (means and ranges over seeds) is printed at the end.

Training events/s counts the events actually trained (an augmented epoch has fewer); fit time
is the whole ``fit`` (reading excluded, sample store and augmentation included).

    python bench/bench_augment.py --dataset rsc15-100k --seeds 1 2 3 \
        --variants plain drop=0.2 crop=0.5 crop=0.5,drop=0.2 plain,epochs=4 drop=0.2,epochs=4
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time

import numpy as np

sys.path.append(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # after PYTHONPATH
from gru_engine import SessionGRU  # noqa: E402
from gru_engine.data import read_events  # noqa: E402

DATA = "/work/shared/data"
SPLITS = {"rsc15-100k": ("rsc15-100k/rsc15_100k_train_full.tsv.gz",
                         "rsc15-100k/rsc15_100k_test.tsv.gz"),
          "yoochoose-1-64": ("yoochoose-1-64/yoochoose1_64_train.tsv.gz",
                             "yoochoose-1-64/yoochoose1_64_test.tsv.gz"),
          "diginetica": ("diginetica/diginetica_train.tsv.gz",
                         "diginetica/diginetica_test.tsv.gz")}
#: the official rsc15 parameters (GRU4Rec paramfiles, cross-entropy, 100 units)
RSC15 = ("loss=cross-entropy,constrained_embedding=True,embedding=0,elu_param=0,layers=100,"
         "n_epochs=3,batch_size=32,dropout_p_embed=0.0,dropout_p_hidden=0.4,learning_rate=0.2,"
         "momentum=0.2,n_sample=2048,sample_alpha=0.5,bpreg=0.0,logq=1.0")
_SHORT = {"crop": "augment_crop_p", "drop": "augment_drop_p", "epochs": "n_epochs"}


def variant_params(text: str) -> dict:
    """``'plain'`` -> {}; ``'crop=0.5,drop=0.2,epochs=4'`` -> the two augmentation parameters
    (and ``n_epochs`` overriding the parameter string's, e.g. to train as many events as the
    plain model: an augmented epoch has fewer)."""
    out = {}
    for part in text.split(","):
        if part == "plain":
            continue
        key, _, value = part.partition("=")
        if key not in _SHORT:
            raise SystemExit(f"unknown variant key {key!r} in {text!r}; use "
                             "plain|crop=P,drop=P,epochs=N")
        out[_SHORT[key]] = int(value) if key == "epochs" else float(value)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", choices=sorted(SPLITS), default="rsc15-100k")
    ap.add_argument("--data", default=DATA)
    ap.add_argument("-p", "--params", default=RSC15, help="official key=value string")
    ap.add_argument("--variants", nargs="+", default=["plain", "crop=0.5,drop=0.2"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="JSON-lines file (default bench/out/augment_<dataset>.jsonl)")
    a = ap.parse_args(argv)
    out = a.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "out",
                                f"augment_{a.dataset}.jsonl")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    train_path, test_path = (os.path.join(a.data, f) for f in SPLITS[a.dataset])
    train, test = read_events(train_path), read_events(test_path)
    # warm-up (not timed): compiles or loads the Numba kernels, the augmentation's included
    head = {k: np.asarray(v)[:3000] for k, v in train.items()}
    SessionGRU.from_param_string(a.params, n_epochs=1, n_threads=a.threads, augment_crop_p=0.5,
                                 augment_drop_p=0.2).fit(head)
    runs = []
    for seed in a.seeds:
        for variant in a.variants:
            model = SessionGRU.from_param_string(a.params, random_state=seed,
                                                 n_threads=a.threads, **variant_params(variant))
            load = os.getloadavg()[0]
            t0 = time.perf_counter()
            model.fit(train)
            fit_s = time.perf_counter() - t0
            res = model.evaluate(test, cutoffs=(20,), by_position=False)
            run = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(
                       timespec="seconds"),
                   "dataset": a.dataset, "variant": variant, "seed": seed,
                   "recall@20": res["recall@20"], "mrr@20": res["mrr@20"],
                   "n_predictions": res["n_events"], "fit_s": fit_s,
                   "epoch_s": model.epoch_times_, "events_per_s": model.events_per_s_,
                   "losses": model.loss_history_, "load_start": load,
                   "load_end": os.getloadavg()[0], "params": a.params,
                   "trained_events": float(np.dot(model.events_per_s_, model.epoch_times_))}
            runs.append(run)
            with open(out, "a") as f:
                f.write(json.dumps(run) + "\n")
            print(f"{a.dataset} {variant:>18} seed {seed}: R@20 {run['recall@20']:.4f} "
                  f"MRR@20 {run['mrr@20']:.4f} fit {fit_s:.1f} s "
                  f"{np.mean(run['events_per_s']):.0f} ev/s (load {load:.1f})", flush=True)
    print("\n| variant | Recall@20 mean (min-max) | MRR@20 mean (min-max) | fit s | events/s |")
    print("|---|---|---|---|---|")
    for variant in a.variants:
        rs = [r for r in runs if r["variant"] == variant]
        rec = [r["recall@20"] for r in rs]
        mrr = [r["mrr@20"] for r in rs]
        print(f"| {variant} | {np.mean(rec):.4f} ({min(rec):.4f}-{max(rec):.4f}) | "
              f"{np.mean(mrr):.4f} ({min(mrr):.4f}-{max(mrr):.4f}) | "
              f"{np.mean([r['fit_s'] for r in rs]):.0f} | "
              f"{np.mean([np.mean(r['events_per_s']) for r in rs]):.0f} |")


if __name__ == "__main__":
    main()

"""Scoring speed of the neighbourhood models (SKNN, V-SKNN, STAN, VSTAN) on one train/test split.

Fits each model once, then evaluates it ``--repeats`` times (GRU4Rec protocol, all items ranked,
conservative ties): the first evaluation of a process includes loading Numba's compiled kernels
from its cache, so the median of the later ones is the warm figure. Prints one line per model
and writes JSON to ``bench/out/neighbors.json``.

    python bench/bench_neighbors.py --train ../shared/data/diginetica/diginetica_train.tsv.gz \\
        --test ../shared/data/diginetica/diginetica_test.tsv.gz --repeats 3
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import datetime, timezone

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
from gru_engine.data import read_events  # noqa: E402
from gru_engine.neighbors import SKNN, STAN, VSKNN, VSTAN  # noqa: E402

D = os.path.join(HERE, "..", "..", "shared", "data", "diginetica")
MODELS = {"SKNN": SKNN, "V-SKNN": VSKNN, "STAN": STAN, "VSTAN": VSTAN}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train", default=os.path.join(D, "diginetica_train.tsv.gz"))
    ap.add_argument("--test", default=os.path.join(D, "diginetica_test.tsv.gz"))
    ap.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    ap.add_argument("--repeats", type=int, default=3, help="evaluations per model (default: 3)")
    ap.add_argument("--out", default=os.path.join(HERE, "out", "neighbors.json"))
    args = ap.parse_args(argv)
    if args.repeats < 1:
        ap.error("--repeats must be >= 1")
    train, test = read_events(args.train), read_events(args.test)
    rows = []
    for name in args.models:
        model = MODELS[name]()
        t0 = time.perf_counter()
        model.fit(train)
        fit_s = time.perf_counter() - t0
        secs, res = [], None
        for _ in range(args.repeats):
            res = model.evaluate(test, cutoffs=(20,), by_position=False)
            secs.append(res["seconds"])
        warm = float(np.median(secs[1:])) if len(secs) > 1 else secs[0]
        row = {"model": name, "fit_s": fit_s, "n_predictions": res["n_events"],
               "eval_s_first": secs[0], "eval_s_warm_median": warm,
               "predictions_per_s_warm": res["n_events"] / warm,
               "recall@20": res["recall@20"], "mrr@20": res["mrr@20"]}
        rows.append(row)
        print(f"{name}: fit {fit_s:.1f} s; {res['n_events']} predictions in {secs[0]:.1f} s first, "
              f"{warm:.1f} s warm ({row['predictions_per_s_warm']:,.0f}/s); "
              f"Recall@20 {res['recall@20']:.4f} MRR@20 {res['mrr@20']:.4f}", flush=True)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump({"date": datetime.now(timezone.utc).isoformat(), "argv": sys.argv,
                   "load_average": os.getloadavg(), "rows": rows}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

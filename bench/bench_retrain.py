"""Daily retraining: warm start (``partial_fit`` on the newest slice) against retraining from
scratch on everything so far.

The training events are split by session start time into ``--slices`` equal parts (by event
count), standing for days. Day 0 is fitted from scratch. For every later day ``k``: the warm
model continues from day ``k-1``'s warm model on day ``k``'s events only (``--warm-epochs``);
the scratch model is fitted on days ``0..k`` (``n_epochs`` of the parameter string). Both are
evaluated on day ``k+1`` (the last day on the official test file) with the GRU4Rec protocol
(events of items unknown to the model removed), Recall@20 / MRR@20, with wall time of the
training.

    python bench/bench_retrain.py --slices 4 --warm-epochs 1
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from gru_engine import SessionGRU  # noqa: E402
from gru_engine.data import read_events  # noqa: E402
from refactor_job import RSC15  # noqa: E402

DATA = "/work/shared/data/rsc15-100k"


def split_by_session_start(table: dict, n: int) -> list:
    """``n`` tables of whole sessions, by session start time, of about equal event counts."""
    sid, t = np.asarray(table["SessionId"]), np.asarray(table["Time"], np.float64)
    uniq, inv = np.unique(sid, return_inverse=True)
    start = np.full(len(uniq), np.inf)
    np.minimum.at(start, inv, t)
    counts = np.bincount(inv)
    order = np.argsort(start, kind="stable")
    cum = np.cumsum(counts[order])
    part_of_session = np.empty(len(uniq), np.int64)
    part_of_session[order] = np.minimum((cum - 1) * n // cum[-1], n - 1)
    part = part_of_session[inv]
    return [{k: np.asarray(v)[part == i] for k, v in table.items()} for i in range(n)]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train", default=os.path.join(DATA, "rsc15_100k_train_full.tsv.gz"))
    ap.add_argument("--test", default=os.path.join(DATA, "rsc15_100k_test.tsv.gz"))
    ap.add_argument("-p", "--params", default=RSC15)
    ap.add_argument("--slices", type=int, default=4)
    ap.add_argument("--warm-epochs", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default=os.path.join(HERE, "out", "retrain.json"))
    a = ap.parse_args(argv)
    days = split_by_session_start(read_events(a.train), a.slices)
    days.append(read_events(a.test))
    make = lambda: SessionGRU.from_param_string(a.params, random_state=a.seed,
                                                n_threads=a.threads)
    rows = []

    def evaluate(model, day):
        r = model.evaluate(days[day], cutoffs=(20,), by_position=False)
        return {"recall@20": r["recall@20"], "mrr@20": r["mrr@20"], "n": r["n_events"]}

    t0 = time.perf_counter()
    warm = make().fit(days[0])
    first = time.perf_counter() - t0
    rows.append({"day": 0, "method": "scratch = warm", "train_events": len(days[0]["ItemId"]),
                 "seconds": first, **evaluate(warm, 1)})
    for k in range(1, a.slices):
        t0 = time.perf_counter()
        warm.partial_fit(days[k], n_epochs=a.warm_epochs)
        tw = time.perf_counter() - t0
        so_far = {c: np.concatenate([d[c] for d in days[:k + 1]]) for c in days[0]}
        t0 = time.perf_counter()
        scratch = make().fit(so_far)
        ts = time.perf_counter() - t0
        rows.append({"day": k, "method": f"warm start ({a.warm_epochs} epoch)",
                     "train_events": len(days[k]["ItemId"]), "seconds": tw,
                     "n_items": warm.n_items_, **evaluate(warm, k + 1)})
        rows.append({"day": k, "method": "from scratch", "train_events": len(so_far["ItemId"]),
                     "seconds": ts, "n_items": scratch.n_items_, **evaluate(scratch, k + 1)})
        print(json.dumps(rows[-2:]), flush=True)
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump({"args": vars(a), "rows": rows}, f, indent=1)
    print("| day | method | training events | seconds | Recall@20 | MRR@20 | next-day predictions |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['day']} | {r['method']} | {r['train_events']} | {r['seconds']:.1f} | "
              f"{r['recall@20']:.4f} | {r['mrr@20']:.4f} | {r['n']} |")


if __name__ == "__main__":
    main()

"""Benchmark of the non-recurrent baselines (POP, S-POP, Item-KNN, BPR-MF) on the shared data.

Usage (from the repository root)::

    python bench/baselines.py                       # every dataset, every model
    python bench/baselines.py --datasets diginetica --models ItemKNN BPRMF

Protocols
---------
* rsc15-100k: train_full -> test. yoochoose-1-64, diginetica, retailrocket: train -> test files.
  yoochoose-category: rows with ``Split == 'train'`` -> rows with ``Split == 'test'``.
  These are next-click evaluations (GRU4Rec protocol, :func:`gru_engine.evaluation.evaluate_sessions`):
  test events of items unseen in training are removed first (counted), sessions left shorter
  than 2 events are dropped (counted), and after every click but the last the true next item is
  ranked against ALL training items, conservative ties (ties count against the model).
* amazon-beauty, amazon-toys (one sequence per user): leave-last-out. Training = every sequence
  without its last item; test = every full sequence whose last item is known to training (the
  others are dropped and counted); only the last item of each sequence is ranked
  (``targets='last'``), after feeding all earlier items.

Writes ``bench/out/baselines.json`` and ``bench/out/baselines.md`` (date, machine, command).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone

import numpy as np
from machine import cpu_name  # bench/machine.py (this folder is on sys.path)

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from gru_engine.baselines import BPRMF, ItemKNN, Pop, SessionPop  # noqa: E402
from gru_engine.data import build_sessions, leave_last_out, read_events  # noqa: E402
from gru_engine.evaluation import evaluate_sessions  # noqa: E402
from gru_engine.ranking import rank_targets  # noqa: E402

logger = logging.getLogger("gru_engine")

DATASETS = {
    "rsc15-100k": ("files", "rsc15-100k/rsc15_100k_train_full.tsv.gz",
                   "rsc15-100k/rsc15_100k_test.tsv.gz"),
    "yoochoose-1-64": ("files", "yoochoose-1-64/yoochoose1_64_train.tsv.gz",
                       "yoochoose-1-64/yoochoose1_64_test.tsv.gz"),
    "diginetica": ("files", "diginetica/diginetica_train.tsv.gz",
                   "diginetica/diginetica_test.tsv.gz"),
    "retailrocket": ("files", "retailrocket/retailrocket_train.tsv.gz",
                     "retailrocket/retailrocket_test.tsv.gz"),
    "yoochoose-category": ("split_column", "yoochoose-category/yoochoose_category_events.tsv.gz"),
    "amazon-beauty": ("leave_last_out", "amazon-beauty/beauty_sequences.tsv.gz"),
    "amazon-toys": ("leave_last_out", "amazon-toys/toys_sequences.tsv.gz"),
}
PROTOCOL = {
    "files": "next click, all positions (train file -> test file)",
    "split_column": "next click, all positions (Split=train -> Split=test)",
    "leave_last_out": "leave-last-out: last item of each sequence only",
}
MODELS = ["Pop", "SessionPop", "ItemKNN", "BPRMF"]
LABEL = {"Pop": "POP", "SessionPop": "S-POP", "ItemKNN": "Item-KNN", "BPRMF": "BPR-MF"}
# SR-GNN paper (Wu et al., AAAI 2019), Table 2: Recall@20 / MRR@20 in %.
PUBLISHED = {
    ("yoochoose-1-64", "Pop"): (6.71, 1.65), ("diginetica", "Pop"): (0.89, 0.20),
    ("yoochoose-1-64", "SessionPop"): (30.44, 18.35), ("diginetica", "SessionPop"): (21.06, 13.68),
    ("yoochoose-1-64", "ItemKNN"): (51.60, 21.81), ("diginetica", "ItemKNN"): (35.75, 11.57),
    ("yoochoose-1-64", "BPRMF"): (31.31, 12.08), ("diginetica", "BPRMF"): (5.24, 1.98),
}
KEYS = ("SessionId", "ItemId", "Time")


def _subset(table: dict, mask: np.ndarray) -> dict:
    return {k: v[mask] for k, v in table.items()}


def load(data_dir: str, name: str):
    """``(train, test, targets, info)`` event tables of one dataset under its protocol."""
    kind, *files = DATASETS[name]
    info = {}
    if kind == "files":
        train = read_events(os.path.join(data_dir, files[0]), columns=list(KEYS))
        test = read_events(os.path.join(data_dir, files[1]), columns=list(KEYS))
        return train, test, "all", info
    if kind == "split_column":
        table = read_events(os.path.join(data_dir, files[0]), columns=list(KEYS) + ["Split"])
        split = table.pop("Split").astype(str)
        return _subset(table, split == "train"), _subset(table, split == "test"), "all", info
    train, test, dropped = leave_last_out(read_events(os.path.join(data_dir, files[0]),
                                                      columns=list(KEYS)))
    info["sequences_dropped_unknown_last_item"] = dropped
    return train, test, "last", info


def repeat_shares(sessions, targets: str) -> dict:
    """Share of ranked next items equal to the current click / clicked earlier in the session.

    Item-KNN scores the current item 0 (it is not its own neighbour), S-POP ranks items already
    clicked first: these two shares explain most of their gap on a dataset.
    """
    items, offsets = sessions.items, sessions.offsets
    same = seen = n = 0
    for s in range(sessions.n_sessions):
        sess = items[offsets[s]:offsets[s + 1]]
        steps = range(len(sess) - 2, len(sess) - 1) if targets == "last" else range(len(sess) - 1)
        for t in steps:
            same += sess[t + 1] == sess[t]
            seen += sess[t + 1] in sess[:t + 1]
            n += 1
    return {"share_next_is_current": same / max(n, 1), "share_next_seen_in_session": seen / max(n, 1)}


def recall_by_repeat(model, sessions, targets: str, k: int = 20, chunk: int = 512) -> dict:
    """Diagnostic: Recall@k split by whether the target was already clicked in the session.

    Replays the sessions in chunks (one slot per session, step by step) and ranks with
    :func:`gru_engine.ranking.rank_targets` (conservative ties); the headline metrics come from
    :func:`evaluate_sessions`, whose overall Recall@k this split must reproduce.
    """
    items, offsets = sessions.items, sessions.offsets
    scorer = model.scorer()
    scorer.begin(chunk)
    ranks, seen = [], []
    for c in range(0, sessions.n_sessions, chunk):
        idx = np.arange(c, min(c + chunk, sessions.n_sessions))
        lengths = offsets[idx + 1] - offsets[idx]
        for t in range(int(lengths.max()) - 1):
            act = np.flatnonzero(lengths - 1 > t)
            pos = offsets[idx[act]] + t
            out = scorer.score(act.astype(np.int64), items[pos], np.full(len(act), t == 0))
            sel = (np.arange(len(act)) if targets == "all"
                   else np.flatnonzero(lengths[act] - 2 == t))
            ranks.append(rank_targets(out[sel], items[pos[sel] + 1]))
            for p in pos[sel]:
                start = offsets[np.searchsorted(offsets, p, side="right") - 1]
                seen.append(items[p + 1] in items[start:p + 1])
    ranks, seen = np.concatenate(ranks), np.array(seen, dtype=bool)
    hit = ranks <= k
    return {f"recall@{k}_check": float(hit.mean()),
            f"recall@{k}_target_seen": float(hit[seen].mean()) if seen.any() else None,
            f"recall@{k}_target_new": float(hit[~seen].mean()) if (~seen).any() else None}


def make_model(name: str, args):
    if name == "Pop":
        return Pop()
    if name == "SessionPop":
        return SessionPop()
    if name == "ItemKNN":
        return ItemKNN(lambda_=args.knn_lambda, alpha=args.knn_alpha,
                       n_neighbors=args.knn_neighbors or None)
    return BPRMF(n_factors=args.bpr_factors, n_epochs=args.bpr_epochs,
                 learning_rate=args.bpr_lr, lambda_session=args.bpr_lambda,
                 lambda_item=args.bpr_lambda, random_state=args.seed)


def run_dataset(name: str, args) -> list:
    t0 = time.perf_counter()
    train, test, targets, info = load(args.data_dir, name)
    logger.info("%s: %d train / %d test events loaded in %.1f s", name, len(train["ItemId"]),
                len(test["ItemId"]), time.perf_counter() - t0)
    rows = []
    stats = None
    for model_name in args.models:
        model = make_model(model_name, args)
        t0 = time.perf_counter()
        model.fit(train)
        fit_s = time.perf_counter() - t0
        sessions, _, report = build_sessions(test, model.item_index_)
        if stats is None:  # the item index, hence the test sessions, is the same for all models
            stats = repeat_shares(sessions, targets)
            lengths = sessions.lengths
            stats["n_clicks_scored"] = int((lengths[lengths >= 2] - 1).sum())
        res = evaluate_sessions(model.scorer(), sessions, cutoffs=(5, 10, 20), mode=args.mode,
                                batch_size=args.batch_size, by_position=False, targets=targets)
        row = {
            "dataset": name, "model": LABEL[model_name], "params": model.get_params(),
            "protocol": PROTOCOL[DATASETS[name][0]],
            "recall@20": res["recall@20"], "mrr@20": res["mrr@20"],
            "recall@5": res["recall@5"], "recall@10": res["recall@10"],
            "n_events": res["n_events"], "n_sessions": res["n_sessions"],
            "n_train_events": len(train["ItemId"]), "n_items": model.n_items_,
            "n_test_events": report.n_events_in,
            "n_unknown_item_events": report.n_unknown_item_events,
            "n_short_sessions_dropped": report.n_short_sessions,
            "fit_s": fit_s, "eval_s": res["seconds"],
            "eval_events_per_s": res["n_events"] / max(res["seconds"], 1e-9),
            "eval_clicks_scored_per_s": stats["n_clicks_scored"] / max(res["seconds"], 1e-9),
            **stats, **info,
        }
        if args.split_by_repeat:
            row.update(recall_by_repeat(model, sessions, targets))
        pub = PUBLISHED.get((name, model_name))
        if pub is not None:
            row["published_recall@20_pct"], row["published_mrr@20_pct"] = pub
        rows.append(row)
        logger.info("%-18s %-8s R@20 %.4f MRR@20 %.4f (%d events) fit %.1f s, eval %.0f ev/s",
                    name, row["model"], row["recall@20"], row["mrr@20"], row["n_events"],
                    fit_s, row["eval_events_per_s"])
    return rows


def markdown(rows: list, meta: dict) -> str:
    out = [
        "# Baselines: POP, S-POP, Item-KNN, BPR-MF", "",
        f"- date (UTC): {meta['date']}", f"- machine: `{meta['uname']}`",
        f"- cpu: {meta['cpu']} ({meta['n_cpus']} logical cpus; shared with other jobs, "
        "timings are under contention)",
        f"- command: `{meta['command']}`",
        f"- rank mode: {meta['mode']}; Recall/MRR over ALL training items; test events of "
        "unseen items removed first (column 'unknown ev.').", "",
        "| dataset | protocol | model | Recall@20 | MRR@20 | published R@20 / MRR@20 (%) | "
        "n_events | unknown ev. | next = current | next seen in session | fit s | "
        "eval events/s | eval clicks scored/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        pub = (f"{r['published_recall@20_pct']:.2f} / {r['published_mrr@20_pct']:.2f}"
               if "published_recall@20_pct" in r else "")
        proto = "leave-last-out" if r["protocol"].startswith("leave") else "next click"
        out.append(f"| {r['dataset']} | {proto} | {r['model']} | {r['recall@20']:.4f} | "
                   f"{r['mrr@20']:.4f} | {pub} | {r['n_events']} | "
                   f"{r['n_unknown_item_events']} | {r['share_next_is_current']:.3f} | "
                   f"{r['share_next_seen_in_session']:.3f} | {r['fit_s']:.2f} | "
                   f"{r['eval_events_per_s']:.0f} | {r['eval_clicks_scored_per_s']:.0f} |")
    if rows and "recall@20_target_seen" in rows[0]:
        out += ["", "Recall@20 split by target (diagnostic replay; 'check' must equal Recall@20):",
                "", "| dataset | model | check | target already in session | new target |",
                "|---|---|---|---|---|"]
        def fmt(v):
            return "–" if v is None else f"{v:.4f}"
        out += [f"| {r['dataset']} | {r['model']} | {fmt(r['recall@20_check'])} | "
                f"{fmt(r['recall@20_target_seen'])} | {fmt(r['recall@20_target_new'])} |"
                for r in rows]
    out += ["", "Settings: " + "; ".join(f"{m}: {p}" for m, p in meta["params"].items()), ""]
    dropped = {r["dataset"]: r["sequences_dropped_unknown_last_item"] for r in rows
               if "sequences_dropped_unknown_last_item" in r}
    if dropped:
        out.append("Leave-last-out sequences dropped because their last item never occurs in "
                   "training: " + ", ".join(f"{k} {v}" for k, v in dropped.items()) + ".")
    out.append("Published: SR-GNN paper (Wu et al. 2019), Table 2. 'next = current' / 'next seen "
               "in session': share of ranked targets equal to the current click / clicked "
               "before in the session (Item-KNN scores the current item 0, S-POP ranks seen "
               "items first). 'eval events/s' counts ranked predictions, 'clicks scored/s' "
               "every click fed (they differ under leave-last-out).")
    return "\n".join(out) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default=os.path.join(ROOT, "..", "shared", "data"))
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--models", nargs="+", default=MODELS, choices=MODELS)
    parser.add_argument("--out-dir", default=os.path.join(HERE, "out"))
    parser.add_argument("--mode", default="conservative",
                        choices=["conservative", "standard", "optimistic", "median"])
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--knn-lambda", type=float, default=20.0)
    parser.add_argument("--knn-alpha", type=float, default=0.5)
    parser.add_argument("--knn-neighbors", type=int, default=100, help="0 keeps all neighbours")
    parser.add_argument("--bpr-factors", type=int, default=100)
    parser.add_argument("--bpr-epochs", type=int, default=20)
    parser.add_argument("--bpr-lr", type=float, default=0.2)
    parser.add_argument("--bpr-lambda", type=float, default=0.001)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split-by-repeat", action="store_true",
                        help="also report Recall@20 on targets already clicked in the session "
                             "and on new ones (diagnostic replay, slower)")
    args = parser.parse_args(argv)
    if not os.path.isdir(args.data_dir):
        parser.error(f"--data-dir {args.data_dir} does not exist")
    if args.batch_size < 1:
        parser.error("--batch-size must be >= 1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    rows = []
    for name in args.datasets:
        rows += run_dataset(name, args)

    meta = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "uname": " ".join(platform.uname()), "cpu": cpu_name(), "n_cpus": os.cpu_count(),
        "command": "python " + " ".join([os.path.relpath(sys.argv[0], ROOT)] + sys.argv[1:]),
        "mode": args.mode, "git_commit": _git_commit(),
        "params": {LABEL[m]: make_model(m, args).get_params() for m in args.models},
    }
    os.makedirs(args.out_dir, exist_ok=True)
    with open(os.path.join(args.out_dir, "baselines.json"), "w") as f:
        json.dump({"meta": meta, "results": rows}, f, indent=1)
    text = markdown(rows, meta)
    with open(os.path.join(args.out_dir, "baselines.md"), "w") as f:
        f.write(text)
    print(text)


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                              capture_output=True, text=True).stdout.strip()
    except OSError:
        return "unknown"


if __name__ == "__main__":
    main()

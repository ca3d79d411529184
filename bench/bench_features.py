"""Benchmark: do item features help GRU4Rec? ID-only vs p-RNN architectures and strategies.

Usage (from the repository root)::

    python bench/bench_features.py                                   # all four datasets
    python bench/bench_features.py --datasets amazon-beauty --epochs 3 --lrs 0.1

Datasets and protocols (``--data-dir``, default ``../shared/data``)
--------------------------------------------------------------------
* amazon-beauty, amazon-toys: one sequence per user; item features = multi-hot attribute ids
  (``*_item_attributes.tsv.gz``, ``|``-separated) -> ``CategoricalFeatures`` (sum pooling).
  Leave-last-out: training = each sequence without its last item; test = each full sequence
  whose last item is known to training; only the last item is ranked (``targets='last'``) after
  feeding all earlier items. Tuning split: training = sequences without their last two items,
  validation = sequences without their last item, last item ranked.
* yoochoose-category: per-click ``Category`` -> item -> most frequent category (ties: smallest
  code) over all rows -> ``CategoricalFeatures``. ``Split`` train -> test (next click, every
  position); tuning on train -> valid.
* diginetica-sample: item -> category table; sessions split by time (the last 20% of sessions
  by start time are the test set), no tuning (first learning rate). Pipeline check only: the
  sample is ~12k views.

Every model is ranked against ALL training items with conservative ties, test events of items
unseen in training removed first (GRU4Rec protocol, :func:`gru_engine.evaluation.evaluate_sessions`).

Tuning budget: the same for every variant — each learning rate in ``--lrs`` is trained on the
tuning split and scored on its validation part; the best Recall@20 is retrained on the full
training split and tested. Other hyperparameters are fixed (see ``--help``).

Output: ``bench/out/features.json``, ``bench/out/features.md`` (tables: accuracy, recall by
position, training throughput relative to ID-only in the same run) and, with matplotlib,
``bench/out/features_by_position.png``.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from datetime import datetime, timezone

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from gru_engine.data import build_sessions, leave_last_out, read_events  # noqa: E402
from gru_engine.evaluation import evaluate_sessions  # noqa: E402
from gru_engine.feature_model import FeatureSessionGRU  # noqa: E402
from gru_engine.features import CategoricalFeatures  # noqa: E402

logger = logging.getLogger("gru_engine")
KEYS = ("SessionId", "ItemId", "Time")
DATASETS = ("amazon-beauty", "amazon-toys", "yoochoose-category", "diginetica-sample")
# (label, architecture, combine, strategy)
VARIANTS = {
    "id": ("ID only (GRU4Rec)", "id", "concat", "simultaneous"),
    "par-concat": ("parallel, concat, simultaneous", "parallel", "concat", "simultaneous"),
    "par-sum": ("parallel, sum, simultaneous", "parallel", "sum", "simultaneous"),
    "par-alt": ("parallel, concat, alternating", "parallel", "concat", "alternating"),
    "par-res": ("parallel, concat, residual", "parallel", "concat", "residual"),
    "par-int": ("parallel, concat, interleaved", "parallel", "concat", "interleaved"),
    "feature": ("feature only, concat", "feature", "concat", "simultaneous"),
}
POSITION_BUCKETS = ((1, 1), (2, 2), (3, 3), (4, 5), (6, 9), (10, 10 ** 9))


def _subset(table: dict, mask) -> dict:
    return {k: v[mask] for k, v in table.items()}


def load(data_dir: str, name: str) -> dict:
    """``{'train', 'test', 'tune_train', 'tune_valid', 'targets', 'features', 'info'}``."""
    path = lambda *p: os.path.join(data_dir, name, *p)
    info = {}
    if name.startswith("amazon"):
        short = "beauty" if name == "amazon-beauty" else "toys"
        table = read_events(path(f"{short}_sequences.tsv.gz"), columns=list(KEYS))
        order = np.lexsort((table["Time"], table["SessionId"]))
        table = _subset(table, order)
        train, test, dropped = leave_last_out(table)
        tune_train, tune_valid, _ = leave_last_out(train)
        info["sequences_dropped_unknown_last_item"] = dropped
        attr = read_events(path(f"{short}_item_attributes.tsv.gz"), columns=["ItemId", "AttributeIds"])
        lists = [[int(a) for a in str(s).split("|") if a] for s in attr["AttributeIds"]]
        feats = {"attributes": CategoricalFeatures(attr["ItemId"], lists, dim=32)}
        targets = "last"
    elif name == "yoochoose-category":
        table = read_events(path("yoochoose_category_events.tsv.gz"),
                            columns=list(KEYS) + ["Category", "Split"])
        split = np.asarray(table.pop("Split")).astype(str)
        cat = np.asarray(table.pop("Category")).astype(np.int64)
        items = np.asarray(table["ItemId"]).astype(np.int64)
        pairs, counts = np.unique(np.stack([items, cat], 1), axis=0, return_counts=True)
        # most frequent category per item; ties -> smallest code (pairs are sorted by item, cat)
        order = np.lexsort((pairs[:, 1], -counts, pairs[:, 0]))
        pairs = pairs[order]
        first = np.r_[True, pairs[1:, 0] != pairs[:-1, 0]]
        info["items_with_several_categories"] = int((np.bincount(
            np.unique(pairs[:, 0], return_inverse=True)[1]) > 1).sum())
        feats = {"category": CategoricalFeatures(pairs[first, 0], pairs[first, 1], dim=16)}
        train, test = _subset(table, split == "train"), _subset(table, split == "test")
        tune_train, tune_valid = train, _subset(table, split == "valid")
        targets = "all"
    elif name == "diginetica-sample":
        table = read_events(path("diginetica_sample_views.tsv.gz"), columns=list(KEYS))
        sid = np.asarray(table["SessionId"])
        uniq, inv = np.unique(sid, return_inverse=True)
        start = np.full(len(uniq), np.inf)
        np.minimum.at(start, inv, np.asarray(table["Time"], float))
        cut = np.quantile(start, 0.8)
        is_test = start[inv] > cut
        train, test = _subset(table, ~is_test), _subset(table, is_test)
        tune_train = tune_valid = None
        cats = read_events(path("diginetica_item_categories.tsv.gz"), columns=["ItemId", "CategoryId"])
        feats = {"category": CategoricalFeatures(cats["ItemId"], cats["CategoryId"], dim=16)}
        targets = "all"
    else:
        raise ValueError(f"unknown dataset {name!r}; choose from {list(DATASETS)}")
    return {"train": train, "test": test, "tune_train": tune_train, "tune_valid": tune_valid,
            "targets": targets, "features": feats, "info": info}


def make_model(variant: str, lr: float, args) -> FeatureSessionGRU:
    _, arch, combine, strategy = VARIANTS[variant]
    return FeatureSessionGRU(layers=[args.hidden], feature_layers=[args.hidden],
                             architecture=arch, combine=combine, strategy=strategy,
                             n_epochs=args.epochs, batch_size=args.batch_size,
                             n_sample=args.n_sample, learning_rate=lr, momentum=args.momentum,
                             loss="cross-entropy", logq=1.0, sample_alpha=0.5,
                             dropout_p_hidden=args.dropout, random_state=args.seed,
                             sample_store_size=1_000_000)


def fit_eval(variant, lr, train, test, feats, targets, args, by_position=False):
    model = make_model(variant, lr, args)
    t0 = time.perf_counter()
    model.fit(train, item_features=feats)
    fit_s = time.perf_counter() - t0
    sessions, _, report = build_sessions(test, model.item_index_)
    res = evaluate_sessions(model.scorer(), sessions, cutoffs=(5, 10, 20), mode="conservative",
                            batch_size=512, by_position=by_position, targets=targets)
    # throughput: epochs after the first (the first one may include JIT compilation)
    eps = model.events_per_s_[1:] or model.events_per_s_
    res.update(fit_s=fit_s, train_events_per_s=float(np.median(eps)),
               epoch_seconds=[float(x) for x in model.epoch_times_],
               n_unknown_item_events=report.n_unknown_item_events)
    return model, res


def by_position_buckets(res) -> list:
    """Recall@20 / MRR@20 over position buckets (position = clicks seen before the prediction)."""
    rows = res["by_position"]
    out = []
    for lo, hi in POSITION_BUCKETS:
        sel = [r for r in rows if lo <= (20 if r["position"] == "20+" else r["position"]) <= hi]
        n = sum(r["n"] for r in sel)
        if n == 0:
            continue
        out.append({"positions": f"{lo}" if lo == hi else (f"{lo}-{hi}" if hi < 10 ** 9 else f"{lo}+"),
                    "n": n,
                    "recall@20": sum(r["recall@20"] * r["n"] for r in sel) / n,
                    "mrr@20": sum(r["mrr@20"] * r["n"] for r in sel) / n})
    return out


def run_dataset(name, args) -> dict:
    t0 = time.perf_counter()
    d = load(args.data_dir, name)
    logger.info("%s: %d train / %d test events, loaded in %.1f s", name, len(d["train"]["ItemId"]),
                len(d["test"]["ItemId"]), time.perf_counter() - t0)
    out = {"dataset": name, "targets": d["targets"], "info": d["info"], "variants": {}}
    for variant in args.variants:
        tuning = []
        if d["tune_train"] is not None and len(args.lrs) > 1:
            for lr in args.lrs:
                _, res = fit_eval(variant, lr, d["tune_train"], d["tune_valid"], d["features"],
                                  d["targets"], args)
                tuning.append({"learning_rate": lr, "recall@20": res["recall@20"],
                               "mrr@20": res["mrr@20"]})
                logger.info("%s %s lr=%g: validation R@20 %.4f MRR@20 %.4f", name, variant, lr,
                            res["recall@20"], res["mrr@20"])
            best = max(tuning, key=lambda t: t["recall@20"])["learning_rate"]
        else:
            best = args.lrs[0]
        model, res = fit_eval(variant, best, d["train"], d["test"], d["features"], d["targets"],
                              args, by_position=True)
        row = {"label": VARIANTS[variant][0], "learning_rate": best, "tuning": tuning,
               "recall@5": res["recall@5"], "recall@10": res["recall@10"],
               "recall@20": res["recall@20"], "mrr@20": res["mrr@20"],
               "n_events": res["n_events"], "n_unknown_item_events": res["n_unknown_item_events"],
               "fit_s": res["fit_s"], "epoch_seconds": res["epoch_seconds"],
               "train_events_per_s": res["train_events_per_s"],
               "by_position": by_position_buckets(res), "n_items": model.n_items_,
               "n_train_events": len(d["train"]["ItemId"])}
        out["variants"][variant] = row
        logger.info("%s %s (lr=%g): R@20 %.4f MRR@20 %.4f, %.0f train events/s", name, variant,
                    best, row["recall@20"], row["mrr@20"], row["train_events_per_s"])
    if "id" in out["variants"]:
        base = out["variants"]["id"]["train_events_per_s"]
        for row in out["variants"].values():
            row["throughput_vs_id"] = row["train_events_per_s"] / base
    return out


def throughput_check(name, args, rounds: int = 3) -> dict:
    """Training events/s of ID-only and of each feature variant, fitted in alternation
    (``rounds`` times, 2 epochs each, the second epoch timed) on the same training split, so
    that both see the same machine load; ratios of medians."""
    d = load(args.data_dir, name)
    variants = [v for v in args.variants if v != "id"]
    speeds = {v: [] for v in ["id"] + variants}
    targs = argparse.Namespace(**dict(vars(args), epochs=2))
    for _ in range(rounds):
        for v in ["id"] + variants:
            model = make_model(v, args.lrs[0], targs)
            model.fit(d["train"], item_features=d["features"])
            speeds[v].append(model.events_per_s_[-1])
    base = float(np.median(speeds["id"]))
    return {"dataset": name, "rounds": rounds,
            "events_per_s": {v: float(np.median(x)) for v, x in speeds.items()},
            "ratio_vs_id": {v: float(np.median(x)) / base for v, x in speeds.items()}}


def write_markdown(results, args, path, throughput=None, commands=()):
    lines = ["# Item features (p-RNN) vs ID-only GRU4Rec", "",
             f"- date (UTC): {datetime.now(timezone.utc):%Y-%m-%d %H:%M}",
             f"- machine: `{platform.platform()}`, {os.cpu_count()} logical cpus, shared with other "
             "jobs: timings are under contention",
             "- commands: " + ", ".join(f"`{c}`" for c in commands),
             f"- fixed: hidden {args.hidden} (ID and feature subnets), batch {args.batch_size}, "
             f"n_sample {args.n_sample}, {args.epochs} epochs, cross-entropy, logq 1, momentum "
             f"{args.momentum}, dropout_hidden {args.dropout}, 1 thread; learning rate tuned over "
             f"{args.lrs} on the validation split (same budget per variant)",
             "- Recall/MRR@20 over all training items, conservative ties. 'train events/s' = median "
             "over epochs 2.. of the final fit; these fits ran one after another on a shared machine, "
             "so 'vs ID' there is noisy: the throughput table at the end (variants fitted in "
             "alternation with ID-only) is the one to quote", ""]
    for res in results:
        lines += [f"## {res['dataset']} ({'leave-last-out' if res['targets'] == 'last' else 'next click, all positions'})",
                  "", f"info: {json.dumps(res['info'])}", "",
                  "| variant | lr | Recall@5 | Recall@10 | Recall@20 | MRR@20 | predictions | train events/s | vs ID |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for v, r in res["variants"].items():
            lines.append(f"| {r['label']} | {r['learning_rate']:g} | {r['recall@5']:.4f} | "
                         f"{r['recall@10']:.4f} | {r['recall@20']:.4f} | {r['mrr@20']:.4f} | "
                         f"{r['n_events']} | {r['train_events_per_s']:.0f} | "
                         f"{r.get('throughput_vs_id', float('nan')):.2f} |")
        buckets = [b["positions"] for b in next(iter(res["variants"].values()))["by_position"]]
        lines += ["", "Recall@20 by position (clicks seen before the prediction; n in the header):", "",
                  "| variant | " + " | ".join(
                      f"{b['positions']} (n={b['n']})"
                      for b in next(iter(res["variants"].values()))["by_position"]) + " |",
                  "|---|" + "---|" * len(buckets)]
        for v, r in res["variants"].items():
            lines.append(f"| {r['label']} | " + " | ".join(f"{b['recall@20']:.4f}" for b in r["by_position"]) + " |")
        base = res["variants"].get("id")
        if base is not None:
            lines += ["", "Recall@20 by position minus ID-only's:", "",
                      "| variant | " + " | ".join(b["positions"] for b in base["by_position"]) + " |",
                      "|---|" + "---|" * len(buckets)]
            for v, r in res["variants"].items():
                if v != "id":
                    lines.append(f"| {r['label']} | " + " | ".join(
                        f"{b['recall@20'] - a['recall@20']:+.4f}"
                        for b, a in zip(r["by_position"], base["by_position"])) + " |")
        lines.append("")
    if throughput:
        lines += ["## Training throughput, variants fitted in alternation with ID-only "
                  f"({throughput['dataset']}, median of {throughput['rounds']} rounds, epoch 2 timed)", "",
                  "| variant | train events/s | vs ID |", "|---|---|---|"]
        for v, eps in throughput["events_per_s"].items():
            lines.append(f"| {VARIANTS[v][0]} | {eps:.0f} | {throughput['ratio_vs_id'][v]:.2f} |")
        lines.append("")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def plot(results, path) -> bool:
    """Recall@20 by position (top row) and its difference to ID-only (bottom row)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed: no plot")
        return False
    fig, axes = plt.subplots(2, len(results), figsize=(5 * len(results), 7.5), squeeze=False)
    for col, res in enumerate(results):
        base = res["variants"].get("id")
        for v, r in res["variants"].items():
            xs = [b["positions"] for b in r["by_position"]]
            ys = [b["recall@20"] for b in r["by_position"]]
            style = dict(marker="o", label=r["label"], lw=2.5 if v == "id" else 1.2)
            axes[0][col].plot(range(len(xs)), ys, **style)
            if base is not None:
                d = [y - b["recall@20"] for y, b in zip(ys, base["by_position"])]
                axes[1][col].plot(range(len(xs)), d, **style)
            for ax in axes[:, col]:
                ax.set_xticks(range(len(xs)), xs)
        axes[0][col].set_title(res["dataset"])
        axes[0][col].set_ylabel("Recall@20")
        axes[1][col].set_ylabel("Recall@20 minus ID-only")
        axes[1][col].axhline(0, color="grey", lw=0.8)
        axes[1][col].set_xlabel("clicks before the prediction")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--data-dir", default=os.path.join(ROOT, "..", "shared", "data"))
    ap.add_argument("--out", default=os.path.join(HERE, "out"))
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--n-sample", type=int, default=512)
    ap.add_argument("--lrs", type=float, nargs="+", default=[0.05, 0.1])
    ap.add_argument("--momentum", type=float, default=0.0)
    ap.add_argument("--dropout", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--throughput-dataset", default="amazon-beauty", choices=DATASETS + ("none",),
                    help="dataset of the alternating throughput measurement ('none': skip)")
    ap.add_argument("--throughput-only", action="store_true",
                    help="only the throughput measurement (keeps the accuracy results of features.json)")
    ap.add_argument("--report-only", action="store_true",
                    help="only rewrite features.md and the plot from features.json")
    args = ap.parse_args(argv)
    if args.epochs < 2:
        ap.error("--epochs must be >= 2 (residual trains the subnets one after another)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("gru_engine").setLevel(logging.INFO)
    os.makedirs(args.out, exist_ok=True)
    t0 = time.perf_counter()
    json_path = os.path.join(args.out, "features.json")
    commands = ["python " + " ".join(sys.argv)]
    if args.report_only:
        with open(json_path) as f:
            saved = json.load(f)
        saved_args = argparse.Namespace(**saved["args"])
        write_markdown(saved["results"], saved_args, os.path.join(args.out, "features.md"),
                       saved.get("throughput"), saved.get("commands", ()))
        plot(saved["results"], os.path.join(args.out, "features_by_position.png"))
        return
    if args.throughput_only:
        with open(json_path) as f:
            saved = json.load(f)
        results = saved["results"]
        commands = saved.get("commands", []) + commands
        args = argparse.Namespace(**dict(saved["args"], throughput_dataset=args.throughput_dataset))
    else:
        results = []
        for name in args.datasets:
            results.append(run_dataset(name, args))
            with open(json_path, "w") as f:
                json.dump({"args": vars(args), "results": results, "commands": commands}, f, indent=1)
            write_markdown(results, args, os.path.join(args.out, "features.md"), None, commands)
        plot(results, os.path.join(args.out, "features_by_position.png"))
    throughput = None
    if args.throughput_dataset != "none":
        throughput = throughput_check(args.throughput_dataset, args)
        with open(json_path, "w") as f:
            json.dump({"args": vars(args), "results": results, "throughput": throughput,
                       "commands": commands}, f, indent=1)
        write_markdown(results, args, os.path.join(args.out, "features.md"), throughput, commands)
    logger.info("done in %.0f s", time.perf_counter() - t0)


if __name__ == "__main__":
    main()

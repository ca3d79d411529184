"""Benchmark: recommending items never clicked in training, from their features
(``FeatureSessionGRU(output_features=True)`` + ``add_items``).

Usage (from the repository root)::

    nice python bench/bench_new_items.py --datasets amazon-beauty amazon-toys

Protocol (amazon-*: one sequence per user, multi-hot attribute ids): the leave-last-out split of
``bench_features.load``; then ``--holdout`` (default 10%) of the training items, drawn with
``--seed``, are held out: every training event of theirs is removed. The model is fitted on
what is left, the held-out items are added from their attributes (``add_items``: zero ID
vectors, output vector = the pooled attribute rows), and every test sequence whose last item
is held out is scored (the earlier clicks fed, held-out ones read through their features).

Reported, Recall@20 / MRR@20 (conservative ties) of the held-out targets:

* ``among all items``: the target ranked against every item (trained and added): would the new
  item reach a real top-20? An ID-only model scores 0 here (it cannot rank an unknown item).
* ``among all items, mean prior``: the same model with every new item's ID part set to
  the support-weighted mean ID vector and bias of the trained items (tried as an add_items
  option; it did not help, so the library has none).
* ``among new items``: ranked against the held-out items only (a cold-start shelf), where two
  feature baselines compete: attribute popularity (an item's mean training count of its
  attributes) and session-attribute match (attribute overlap with the session's clicks, ties
  by attribute popularity); and a random ranking (expected Recall@20 = 20 / n new).

Also the ordinary test sequences (last item trained): the model against ID-only GRU4Rec fitted
on the same reduced training events (does the option cost accuracy on known items?).
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
from gru_engine.feature_model import FeatureSessionGRU  # noqa: E402

logger = logging.getLogger("bench_new_items")


def conservative_ranks(scores: np.ndarray, target_cols: np.ndarray) -> np.ndarray:
    """1-based rank of each row's target column (ties count against it)."""
    t = scores[np.arange(len(scores)), target_cols][:, None]
    return (scores > t).sum(1) + (scores == t).sum(1)


def metrics(ranks, k=20) -> dict:
    ranks = np.asarray(ranks)
    hit = ranks <= k
    return {"recall@20": float(hit.mean()), "mrr@20": float(np.where(hit, 1.0 / ranks, 0).mean()),
            "n": int(len(ranks))}


def target_ranks(model, seqs) -> np.ndarray:
    """Conservative rank of each sequence's last item after its earlier clicks, among all of
    ``model``'s items (sessions scored 512 at a time)."""
    out = []
    for a in range(0, len(seqs), 512):
        chunk = seqs[a:a + 512]
        S = model.predict_next([s[:-1] for s in chunk])
        out += list(conservative_ranks(S, model.item_index_.lookup(
            np.array([s[-1] for s in chunk]))))
    return np.array(out, np.int64)


def sequences(table: dict) -> list:
    sid = np.asarray(table["SessionId"])
    cut = np.flatnonzero(np.r_[True, sid[1:] != sid[:-1], True])
    items = np.asarray(table["ItemId"])
    return [items[a:b] for a, b in zip(cut[:-1], cut[1:])]


def attribute_lists(spec) -> dict:
    return {int(i): np.asarray(a, np.int64) for i, a in zip(spec.ids, spec.codes)}


def run(name, args) -> dict:
    d = load(args.data_dir, name)
    spec = d["features"]["attributes"]
    train, test = d["train"], d["test"]
    rng = np.random.default_rng(args.seed)
    train_items = np.unique(train["ItemId"])
    held = np.sort(rng.choice(train_items, int(round(args.holdout * len(train_items))),
                              replace=False))
    keep = ~np.isin(train["ItemId"], held)
    reduced = {k: v[keep] for k, v in train.items()}
    seqs = sequences(test)
    new_target = [s for s in seqs if s[-1] in set(held.tolist())]
    old_target = [s for s in seqs if s[-1] not in set(held.tolist())]
    out = {"dataset": name, "n_held_out_items": int(len(held)),
           "n_train_events_removed": int((~keep).sum()),
           "n_new_item_targets": len(new_target), "n_known_targets": len(old_target),
           "seeds": []}
    attrs = attribute_lists(spec)
    counts = {}
    for it in reduced["ItemId"]:
        for a in attrs.get(int(it), ()):
            counts[a] = counts.get(a, 0) + 1
    attr_pop = np.array([np.mean([counts.get(a, 0) for a in attrs.get(int(i), [])] or [0])
                         for i in held])
    held_pos = {int(i): k for k, i in enumerate(held)}
    # baselines over the new items only
    base_pop, base_match = [], []
    for s in new_target:
        t = held_pos[int(s[-1])]
        base_pop.append(conservative_ranks(attr_pop[None, :], np.array([t]))[0])
        seen = {}
        for it in s[:-1]:
            for a in attrs.get(int(it), ()):
                seen[a] = seen.get(a, 0) + 1
        match = np.array([sum(seen.get(a, 0) for a in attrs.get(int(i), [])) for i in held],
                         float)
        score = match + attr_pop / (attr_pop.max() + 1.0)  # ties by attribute popularity
        base_match.append(conservative_ranks(score[None, :], np.array([t]))[0])
    out["baselines_among_new"] = {"attribute popularity": metrics(base_pop),
                                  "session-attribute match": metrics(base_match),
                                  "random (expected)": {"recall@20": min(1.0, 20 / len(held))}}
    for seed in args.seeds:
        row = {"seed": seed}
        kw = dict(layers=[args.hidden], feature_layers=[args.hidden], n_epochs=args.epochs,
                  batch_size=32, n_sample=512, loss="cross-entropy", logq=1.0,
                  sample_alpha=0.5, sample_store_size=1_000_000, random_state=seed,
                  n_threads=1, learning_rate=args.lr)
        t0 = time.perf_counter()
        m = FeatureSessionGRU(architecture=args.architecture, combine=args.combine,
                              output_features=True, **kw).fit(reduced, item_features=d["features"])
        row["fit_s"] = time.perf_counter() - t0
        n_trained = m.n_items_
        added = m.add_items({"attributes": spec})
        row["n_added"] = int(len(added))
        idx_held = m.item_index_.lookup(held)
        ranks_all, ranks_new = [], []
        for a in range(0, len(new_target), 512):
            chunk = new_target[a:a + 512]
            S = m.predict_next([s[:-1] for s in chunk])
            cols = m.item_index_.lookup(np.array([s[-1] for s in chunk]))
            ranks_all += list(conservative_ranks(S, cols))
            pos = np.array([held_pos[int(s[-1])] for s in chunk])
            ranks_new += list(conservative_ranks(S[:, idx_held], pos))
        row["new_among_all"] = metrics(ranks_all)
        row["new_among_new"] = metrics(ranks_new)
        # known targets: this model (with the added items among the candidates) and ID-only
        known = [s for s in old_target if m.item_index_.lookup(s[-1:])[0] < n_trained]
        row["known_targets"] = metrics(target_ranks(m, known))
        # the same model with the support-weighted mean ID part (vector and bias) on
        # every new item (the order among new items is unchanged)
        w = m.item_support_[:n_trained].astype(np.float64)
        w /= w.sum()
        Wy, By = m.params_["Wy"].copy(), m.params_["By"].copy()
        Wy[n_trained:] = w @ Wy[:n_trained].astype(np.float64)
        By[n_trained:] = w @ By[:n_trained].astype(np.float64)
        m.params_ = dict(m.params_, Wy=Wy, By=By)
        row["new_among_all_mean_prior"] = metrics(target_ranks(m, new_target))
        row["known_targets_mean_prior"] = metrics(target_ranks(m, known))
        ido = FeatureSessionGRU(architecture="id", **kw).fit(reduced)
        ranks_id = []
        for a in range(0, len(known), 512):
            chunk = [s for s in known[a:a + 512]]
            prefix = [s[:-1][ido.item_index_.lookup(s[:-1]) >= 0] for s in chunk]
            ok = [len(p) > 0 for p in prefix]
            S = ido.predict_next([p for p, o in zip(prefix, ok) if o])
            tg = ido.item_index_.lookup(np.array([s[-1] for s, o in zip(chunk, ok) if o]))
            r = list(conservative_ranks(S, tg))
            # a session of held-out clicks only: ID-only has no state; rank as unscorable
            ranks_id += r + [ido.n_items_] * (len(chunk) - len(r))
        row["known_targets_id_only"] = metrics(ranks_id)
        logger.info("%s seed %d: %s", name, seed, row)
        out["seeds"].append(row)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--datasets", nargs="+", default=["amazon-beauty", "amazon-toys"],
                    choices=["amazon-beauty", "amazon-toys"])
    ap.add_argument("--data-dir", default="/work/shared/data")
    ap.add_argument("--out", default=os.path.join(HERE, "out"))
    ap.add_argument("--holdout", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=11, help="seed of the held-out item draw")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--architecture", default="parallel", choices=["parallel", "feature"])
    ap.add_argument("--combine", default="concat", choices=["concat", "sum"])
    ap.add_argument("--tag", default="", help="suffix of the output file name")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("gru_engine").setLevel(logging.WARNING)
    os.makedirs(args.out, exist_ok=True)
    results = [run(n, args) for n in args.datasets]
    path = os.path.join(args.out, f"new_items{args.tag}.json")
    with open(path, "w") as f:
        json.dump({"args": vars(args), "date_utc": datetime.now(timezone.utc).isoformat(),
                   "command": "python " + " ".join(sys.argv), "results": results}, f, indent=1)
    for r in results:
        print(f"## {r['dataset']}: {r['n_held_out_items']} held-out items, "
              f"{r['n_new_item_targets']} new-item targets")
        for k, v in r["baselines_among_new"].items():
            print(f"  baseline {k} (among new): {v}")
        for s in r["seeds"]:
            print(f"  seed {s['seed']}: new among all {s['new_among_all']} (mean prior "
                  f"{s['new_among_all_mean_prior']}), new among new {s['new_among_new']}, "
                  f"known {s['known_targets']} (mean prior {s['known_targets_mean_prior']}) "
                  f"vs ID-only {s['known_targets_id_only']}")


if __name__ == "__main__":
    main()

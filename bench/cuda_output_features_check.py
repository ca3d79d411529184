"""FeatureSessionGRU(output_features=True, device='cuda') against device='cpu' end to end.

The protocol of ``bench/bench_new_items.py`` (amazon-*: leave-last-out split, ``--holdout`` of
the training items held out of training and added from their attributes with ``add_items``) on
the first ``--max-sessions`` training sequences (and those users' test sequences): the same model is fitted on both backends from
one seed (no dropout, so both consume the same schedule and negative samples and differ only by
float32 rounding), its new items are added, and both are scored: Recall@20 / MRR@20 of the
last item of each test sequence after its earlier clicks, ranked among all items (trained and
added; ``predict_next``, on the device for the CUDA model), for the sequences ending in a
trained item and for those ending in a held-out (added) item. Also
reported: the relative difference of the trained ``Wy``/``Fy``/``Fb`` between the backends,
training events/s and the fit seconds.

Needs CuPy and an NVIDIA GPU; ``--emulated`` runs the CUDA backend in the CPU emulator instead
(a wiring check, slow: keep ``--max-sessions`` small; its race detector and other checks are
off unless ``GRU_ENGINE_CUDA_EMU_CHECKS`` says otherwise); speed figures are then meaningless.

    python bench/cuda_output_features_check.py                     # GPU
    python bench/cuda_output_features_check.py --emulated --max-sessions 300 --n-sample 32

Writes ``bench/out/cuda_output_features_check.json`` and prints Markdown. Exit status 1 when a
metric differs by more than ``--tolerance`` (relative) between the backends.
"""
from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
from bench_features import load  # noqa: E402
from bench_new_items import metrics, sequences, target_ranks  # noqa: E402
from gru_engine import model as model_mod  # noqa: E402
from gru_engine.backends.device import EmulatedDevice, cuda_available  # noqa: E402
from gru_engine.feature_model import FeatureSessionGRU  # noqa: E402


def _first_sessions(table: dict, n: int) -> dict:
    keep = np.isin(table["SessionId"], np.unique(table["SessionId"])[:n])
    return {k: np.asarray(v)[keep] for k, v in table.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", default="amazon-beauty", choices=["amazon-beauty", "amazon-toys"])
    ap.add_argument("--data-dir", default="/work/shared/data")
    ap.add_argument("--max-sessions", type=int, default=0, help="0 = every training sequence")
    ap.add_argument("--holdout", type=float, default=0.1)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--n-sample", type=int, default=512)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--emulated", action="store_true",
                    help="run the CUDA backend in the CPU emulator (wiring check, no GPU)")
    ap.add_argument("--tolerance", type=float, default=0.05)
    ap.add_argument("--out", type=Path, default=HERE / "out" / "cuda_output_features_check.json")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    if args.emulated:
        os.environ.setdefault("GRU_ENGINE_CUDA_EMU_CHECKS", "off")
        dev = EmulatedDevice()
        model_mod._resolve_device = lambda name: None if name == "cpu" else dev
    elif not cuda_available():
        ap.error("CuPy with an NVIDIA GPU is needed (or pass --emulated)")
    d = load(args.data_dir, args.dataset)
    train, test = d["train"], d["test"]
    if args.max_sessions:  # the first sequences (users), and those users' test sequences
        train = _first_sessions(train, args.max_sessions)
        keep = np.isin(test["SessionId"], np.unique(train["SessionId"]))
        test = {k: np.asarray(v)[keep] for k, v in test.items()}
    rng = np.random.default_rng(11)
    items = np.unique(train["ItemId"])
    held = np.sort(rng.choice(items, int(round(args.holdout * len(items))), replace=False))
    reduced = {k: v[~np.isin(train["ItemId"], held)] for k, v in train.items()}
    seqs = sequences(test)
    held_set, known_set = set(held.tolist()), set(np.unique(reduced["ItemId"]).tolist())
    new_target = [s for s in seqs if s[-1] in held_set]
    known_test = [s for s in seqs if s[-1] in known_set]
    kw = dict(layers=[args.hidden], feature_layers=[args.hidden], n_epochs=args.epochs,
              batch_size=32, n_sample=args.n_sample, loss="cross-entropy", logq=1.0,
              sample_alpha=0.5, sample_store_size=1_000_000, random_state=args.seed,
              n_threads=1, learning_rate=0.1, output_features=True)
    models, results = {}, {}
    for device in ("cuda", "cpu"):
        t0 = time.perf_counter()
        m = FeatureSessionGRU(**kw, device=device).fit(reduced, item_features=d["features"])
        fit_s = time.perf_counter() - t0
        models[device] = {k: m.params_[k].copy() for k in ("Wy", "Fy", "Fb")}
        m.add_items(d["features"])
        t0 = time.perf_counter()
        known = metrics(target_ranks(m, known_test))
        new = metrics(target_ranks(m, new_target))
        results[device] = {
            "device_": m.device_, "fit_seconds": fit_s, "train_events_per_s": m.events_per_s_,
            "loss_history": m.loss_history_, "scoring_seconds": time.perf_counter() - t0,
            **{f"known_{k}": v for k, v in known.items()},
            **{f"new_{k}": v for k, v in new.items()}}
    diffs = {k: abs(results["cuda"][k] - results["cpu"][k]) / max(results["cpu"][k], 1e-12)
             for k in ("known_recall@20", "known_mrr@20", "new_recall@20", "new_mrr@20")}
    param_diffs = {k: float(np.abs(models["cuda"][k] - models["cpu"][k]).max()
                            / np.abs(models["cpu"][k]).max()) for k in models["cpu"]}
    ok = all(v <= args.tolerance for v in diffs.values())
    out = {"kind": "cuda_output_features_check",
           "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "machine": platform.node(), "load_average": os.getloadavg(),
           "emulated": args.emulated, "dataset": args.dataset, "params": kw,
           "max_sessions": args.max_sessions, "n_train_events": len(reduced["ItemId"]),
           "n_held_out_items": int(len(held)), "results": results,
           "relative_metric_differences": diffs, "relative_parameter_differences": param_diffs,
           "tolerance": args.tolerance, "ok": ok}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print(f"{args.dataset}: {len(reduced['ItemId'])} training events, {len(held)} held-out "
          f"items; test sequences ending in a trained item: {len(known_test)}, in a new item: "
          f"{len(new_target)}")
    print("| device | known R@20 | known MRR@20 | new R@20 | new MRR@20 | fit s | "
          "train events/s |")
    print("|---|---|---|---|---|---|---|")
    for device, r in results.items():
        eps = ", ".join(f"{x:,.0f}" for x in r["train_events_per_s"])
        print(f"| {device}{' (emulated)' if args.emulated and device == 'cuda' else ''} | "
              f"{r['known_recall@20']:.4f} | {r['known_mrr@20']:.4f} | {r['new_recall@20']:.4f} "
              f"| {r['new_mrr@20']:.4f} | {r['fit_seconds']:.1f} | {eps} |")
    print("relative parameter differences: "
          + ", ".join(f"{k} {v:.1e}" for k, v in param_diffs.items()))
    print(f"relative metric differences: {', '.join(f'{k} {v:.2%}' for k, v in diffs.items())} "
          f"(tolerance {args.tolerance:.0%}): {'OK' if ok else 'FAIL'}")
    print(f"wrote {args.out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

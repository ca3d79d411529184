"""SessionGRU(device='cuda') against device='cpu' end to end (run by bench/gpu_check.sh).

Fits the same model on the bundled sample (``gru_engine.sample_data``: rsc15-100k train_full /
test) with both backends from the same seed, evaluates both (the CUDA model ranks on the
device), and reports training events/s, evaluation predictions/s, Recall@20 and MRR@20 of each.
Parameters: the official rsc15 row (cross-entropy, logq 1, 100 units, batch 32, lr 0.2,
momentum 0.2, 2048 samples, alpha 0.5) without dropout, because the CUDA backend draws its
dropout masks on the device (a different random stream); without dropout both backends consume
the same sample draws and differ only by float32 rounding. At lr 0.2 Adagrad amplifies that
rounding (a gradient near zero moves its weight by lr * g / sqrt(g^2 + 1e-6), up to 200 g):
measured through the emulator on 100 sessions, the parameters of the two backends differ by
~1e-6 (relative) after step 1, ~2e-5 after step 5 and ~1e-3 after 20 steps (at lr 0.01 without
momentum: 2.5e-7 after 20 steps), so the metrics agree to about a percent, not exactly; a
wiring bug shows as a far larger gap. Exit status 1 when Recall@20 or MRR@20 differ by more
than ``--tolerance`` (relative).

Needs CuPy and an NVIDIA GPU; ``--emulated`` runs the CUDA backend in the CPU emulator instead
(slow: use ``--max-sessions`` to cut the training data), which checks the wiring, not speed.

    python bench/cuda_model_check.py                       # GPU
    python bench/cuda_model_check.py --emulated --max-sessions 600 --epochs 1
    python bench/cuda_model_check.py --context full        # the context-aware GRU

``--context`` fits the context-aware GRU (:mod:`gru_engine.context`; the sample has real
timestamps: gap, hour, weekday) instead: ``concat``/``multiply`` input context, ``output``
(output multiply) or ``full`` (concat input + output multiply).

Writes ``bench/out/cuda_model_check.json`` and prints Markdown.
"""
from __future__ import annotations

import argparse
import datetime
import json
import logging
import platform
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from gru_engine import model as model_mod  # noqa: E402
from gru_engine.backends.device import EmulatedDevice, cuda_available  # noqa: E402
from gru_engine.model import SessionGRU  # noqa: E402
from gru_engine.sample_data import load_sample  # noqa: E402

PARAMS = dict(loss="cross-entropy", logq=1.0, layers=[100], batch_size=32, learning_rate=0.2,
              momentum=0.2, n_sample=2048, sample_alpha=0.5, dropout_p_embed=0.0,
              dropout_p_hidden=0.0, constrained_embedding=True)


#: ``--context`` variants (the sample's time features; no categorical column)
CONTEXTS = {"none": {}, "concat": dict(context_input="concat"),
            "multiply": dict(context_input="multiply"), "output": dict(context_output="multiply"),
            "full": dict(context_input="concat", context_output="multiply")}


def _first_sessions(table: dict, n: int) -> dict:
    keep = np.isin(table["SessionId"], np.unique(table["SessionId"])[:n])
    return {k: np.asarray(v)[keep] for k, v in table.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--emulated", action="store_true",
                    help="run the CUDA backend in the CPU emulator (wiring check, no GPU)")
    ap.add_argument("--max-sessions", type=int, default=0,
                    help="train on the first N sessions only (0 = all)")
    ap.add_argument("--tolerance", type=float, default=0.03,
                    help="largest relative difference of Recall@20 / MRR@20 accepted")
    ap.add_argument("--threads", type=int, default=None,
                    help="CPU threads of the CPU fit (default: every CPU; 1 on a busy machine)")
    ap.add_argument("--context", choices=sorted(CONTEXTS), default="none",
                    help="the context-aware GRU variant to fit (default: the plain GRU4Rec)")
    ap.add_argument("--out", type=Path, default=None,
                    help="JSON output (default bench/out/cuda_model_check[_context-X].json)")
    args = ap.parse_args(argv)
    if args.out is None:
        suffix = "" if args.context == "none" else f"_context-{args.context}"
        args.out = ROOT / "bench" / "out" / f"cuda_model_check{suffix}.json"
    params = dict(PARAMS, **CONTEXTS[args.context])
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.emulated:
        dev = EmulatedDevice()
        model_mod._resolve_device = lambda name: None if name == "cpu" else dev
    elif not cuda_available():
        ap.error("CuPy with an NVIDIA GPU is needed (or pass --emulated)")
    train, test = load_sample()
    if args.max_sessions:
        train = _first_sessions(train, args.max_sessions)
    results = {}
    for device in ("cuda", "cpu"):
        m = SessionGRU(**params, n_epochs=args.epochs, random_state=args.seed, device=device,
                       n_threads=args.threads)
        m.fit(train)
        res = m.evaluate(test, cutoffs=(5, 20), by_position=False)
        results[device] = {
            "device_": m.device_, "loss_history": m.loss_history_,
            "train_events_per_s": m.events_per_s_, "epoch_seconds": m.epoch_times_,
            "recall@20": res["recall@20"], "mrr@20": res["mrr@20"], "recall@5": res["recall@5"],
            "n_predictions": res["n_events"], "eval_seconds": res["seconds"],
            "eval_predictions_per_s": res["n_events"] / max(res["seconds"], 1e-9)}
    diffs = {k: abs(results["cuda"][k] - results["cpu"][k]) / max(results["cpu"][k], 1e-12)
             for k in ("recall@20", "mrr@20")}
    ok = all(d <= args.tolerance for d in diffs.values())
    now = datetime.datetime.now().isoformat(timespec="seconds")
    out = {"kind": "cuda_model_check", "date": now,
           "machine": platform.node(), "emulated": args.emulated, "params": params,
           "epochs": args.epochs, "max_sessions": args.max_sessions, "results": results,
           "relative_differences": diffs, "tolerance": args.tolerance, "ok": ok}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print("| device | R@5 | R@20 | MRR@20 | train events/s (per epoch) | eval predictions/s |")
    print("|---|---|---|---|---|---|")
    for device, r in results.items():
        eps = ", ".join(f"{x:,.0f}" for x in r["train_events_per_s"])
        print(f"| {device}{' (emulated)' if args.emulated and device == 'cuda' else ''} | "
              f"{r['recall@5']:.4f} | {r['recall@20']:.4f} | {r['mrr@20']:.4f} | {eps} | "
              f"{r['eval_predictions_per_s']:,.0f} |")
    print(f"relative differences: {', '.join(f'{k} {v:.2%}' for k, v in diffs.items())} "
          f"(tolerance {args.tolerance:.0%}): {'OK' if ok else 'FAIL'}")
    print(f"wrote {args.out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

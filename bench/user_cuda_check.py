"""The user-level GRU (HRNN) on the CUDA backend against the CPU, end to end (run by
bench/gpu_check.sh).

For each ``user_mode`` x ``user_input`` it fits ``SessionGRU(user_layers > 0)`` from the same
seed on both devices, on generated session-aware data (``gru_engine.synthetic``: users with a
persistent taste, the last session of each user is test), without network dropout (the CUDA
backend draws those masks on the device) and reports the largest parameter difference per
learned array, both fits' training events/s and the session-aware Recall@20 / MRR@20 of each
(the CUDA model scores and ranks on the device). Exit status 1 when a parameter differs by more
than ``--tolerance`` or a metric differs.

Needs CuPy and an NVIDIA GPU; ``--emulated`` runs the CUDA backend in the CPU emulator (checks
the wiring, not speed).

    python bench/user_cuda_check.py                 # GPU
    python bench/user_cuda_check.py --emulated --users 60

Writes ``bench/out/user_cuda_check.json`` and prints Markdown.
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from gru_engine import model as model_mod  # noqa: E402
from gru_engine.backends.device import EmulatedDevice, cuda_available  # noqa: E402
from gru_engine.evaluation import evaluate_session_aware  # noqa: E402
from gru_engine.model import SessionGRU  # noqa: E402
from gru_engine.session_aware import build_user_sessions  # noqa: E402
from gru_engine.synthetic import session_aware_events, session_aware_split  # noqa: E402

LEARNED = ("theta", "T", "Wy", "By", "U")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--emulated", action="store_true", help="CUDA backend in the CPU emulator")
    ap.add_argument("--users", type=int, default=400, help="generated users (4 sessions each)")
    ap.add_argument("--items", type=int, default=300, help="generated items")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--layers", type=int, nargs="+", default=[64])
    ap.add_argument("--user-layers", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--n-sample", type=int, default=64)
    ap.add_argument("--tolerance", type=float, default=1e-4,
                    help="largest parameter difference accepted (absolute)")
    args = ap.parse_args(argv)
    if args.emulated:
        device = EmulatedDevice()
        model_mod._resolve_device = lambda name: None if name == "cpu" else device
    elif not cuda_available():
        print("no CUDA device (CuPy); use --emulated")
        return 2
    ev, _ = session_aware_events(n_users=args.users, sessions_per_user=4, n_items=args.items,
                                 n_tastes=6, persistent=True, seed=0)
    train, test = session_aware_split(ev)
    rows, ok = [], True
    for mode in ("all", "init", "both"):
        for user_input in ("items", "hidden"):
            kw = dict(layers=args.layers, user_layers=args.user_layers, user_mode=mode,
                      user_input=user_input, batch_size=args.batch_size,
                      n_sample=args.n_sample, n_epochs=args.epochs, learning_rate=0.05,
                      random_state=3, n_threads=1)
            row = {"user_mode": mode, "user_input": user_input}
            fitted = {}
            for dev in ("cpu", "cuda"):
                t0 = time.perf_counter()
                m = SessionGRU(device=dev, **kw).fit(train)
                row[f"{dev}_fit_s"] = round(time.perf_counter() - t0, 2)
                row[f"{dev}_events_per_s"] = round(float(np.mean(m.events_per_s_)), 1)
                te, _, _ = build_user_sessions(test, m.item_index_)
                hi, _, _ = build_user_sessions(train, m.item_index_)
                r = evaluate_session_aware(m.scorer(), te, hi, cutoffs=(20,))
                row[f"{dev}_recall@20"], row[f"{dev}_mrr@20"] = r["recall@20"], r["mrr@20"]
                fitted[dev] = m
            row["max_param_diff"] = {k: float(np.abs(np.asarray(fitted["cpu"].params_[k], float)
                                                     - fitted["cuda"].params_[k]).max())
                                     for k in LEARNED}
            ok &= max(row["max_param_diff"].values()) <= args.tolerance
            ok &= row["cpu_recall@20"] == row["cuda_recall@20"]
            ok &= row["cpu_mrr@20"] == row["cuda_mrr@20"]
            rows.append(row)
            print(row, flush=True)
    out = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "device": "emulated" if args.emulated else "cuda", "args": vars(args), "rows": rows,
           "ok": bool(ok)}
    path = ROOT / "bench" / "out" / "user_cuda_check.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    print("\n| mode | input | max param diff | Recall@20 cpu / cuda | MRR@20 cpu / cuda | "
          "train ev/s cpu / cuda |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['user_mode']} | {r['user_input']} | {max(r['max_param_diff'].values()):.2e} "
              f"| {r['cpu_recall@20']:.4f} / {r['cuda_recall@20']:.4f} | {r['cpu_mrr@20']:.4f} / "
              f"{r['cuda_mrr@20']:.4f} | {r['cpu_events_per_s']:.0f} / "
              f"{r['cuda_events_per_s']:.0f} |")
    print("ok" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

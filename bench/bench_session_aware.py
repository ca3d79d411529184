"""Benchmark: session-aware data with a planted cross-session signal and its control.

Usage (from the repository root)::

    python bench/bench_session_aware.py                        # defaults below
    python bench/bench_session_aware.py --seeds 0 1 2

Defaults: 3000 users of 10 sessions, 4 epochs, 256 sampled negatives. With 1000 users the
user-level model memorised the users' sessions (training loss far below the plain model's on
the control arm too) without a test gain; 3000 users give it enough users to learn the taste
(docs/user_level_gru.md).

For each seed and arm (signal: a user's taste persists across sessions; control: it is
redrawn per session; :func:`gru_engine.synthetic.session_aware_events`), the events are split
by the HRNN protocol (each user's last session is test, the earlier ones train and history),
and each model is scored by :func:`gru_engine.evaluation.evaluate_session_aware` (every click
of the test sessions, ranked against all items, conservative ties):

* ``SessionGRU``: the plain session GRU (reads only the current session);
* ``SessionGRU+user``: the same with the user-level GRU (``--user-params``, default
  ``user_layers=100``: HRNN-all with the session's items as the user GRU's input; the
  history replayed by the scorer);
* ``UserHistoryPop``: the user's history click counts (reads only the earlier sessions).

A model that uses the cross-session signal gains on the signal arm and not on the control;
a session-only model scores the same on both (the within-session process is the same).
Output: JSON (``--out``, default ``bench/out/session_aware.json``) and a Markdown table on
stdout with Recall@20 / MRR@20 overall and at the first prediction of a session, fit time and
training events/s (mean over epochs).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import datetime, timezone

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from gru_engine.evaluation import evaluate_session_aware  # noqa: E402
from gru_engine.model import SessionGRU  # noqa: E402
from gru_engine.params import parse_param_string  # noqa: E402
from gru_engine.session_aware import UserHistoryPop, build_user_sessions  # noqa: E402
from gru_engine.synthetic import session_aware_events, session_aware_split  # noqa: E402

from machine import cpu_name  # noqa: E402


def first_position(result: dict, k: int = 20) -> float:
    return next(p[f"recall@{k}"] for p in result["by_position"] if p["position"] == 1)


def run_arm(args, persistent: bool, seed: int) -> dict:
    events, _ = session_aware_events(n_users=args.users, sessions_per_user=args.sessions,
                                     n_items=args.items, n_tastes=args.tastes,
                                     taste_weight=args.taste_weight, persistent=persistent,
                                     seed=seed)
    train, test = session_aware_split(events)
    history, index, _ = build_user_sessions(train)
    out = {}
    params = {"n_epochs": args.epochs, "random_state": seed, **parse_param_string(args.params)}
    variants = [("SessionGRU", params)]
    if args.user_params:
        variants.append(("SessionGRU+user", {**params, **parse_param_string(args.user_params)}))
    for name, kw in variants:
        t0 = time.perf_counter()
        gru = SessionGRU(**kw).fit(train)
        fit_s = time.perf_counter() - t0
        test_us, _, _ = build_user_sessions(test, gru.item_index_)
        history_gru, _, _ = build_user_sessions(train, gru.item_index_)
        res = evaluate_session_aware(gru.scorer(), test_us, history_gru, cutoffs=(5, 20))
        out[name] = {**{k: res[k] for k in ("recall@5", "recall@20", "mrr@20", "n_events")},
                     "recall@20_first": first_position(res), "fit_s": fit_s,
                     "events_per_s": float(sum(gru.events_per_s_) / len(gru.events_per_s_)),
                     "user_aware": res["user_aware"]}
    test_us, _, _ = build_user_sessions(test, index)
    res = evaluate_session_aware(UserHistoryPop(len(index)), test_us, history, cutoffs=(5, 20))
    out["UserHistoryPop"] = {**{k: res[k] for k in ("recall@5", "recall@20", "mrr@20",
                                                    "n_events")},
                             "recall@20_first": first_position(res)}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--users", type=int, default=3000)
    p.add_argument("--sessions", type=int, default=10, help="sessions per user")
    p.add_argument("--items", type=int, default=1000)
    p.add_argument("--tastes", type=int, default=50)
    p.add_argument("--taste-weight", type=float, default=0.3)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("-p", "--params", default="layers=100,batch_size=32,loss=cross-entropy,"
                                              "learning_rate=0.1,n_sample=256,n_threads=1",
                   help="SessionGRU key=value parameters (default: %(default)s)")
    p.add_argument("--user-params", default="user_layers=100",
                   help="key=value parameters added for SessionGRU+user ('' to skip it; "
                        "default: %(default)s)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--out", default=os.path.join(HERE, "out", "session_aware.json"))
    args = p.parse_args(argv)
    started = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    load = os.getloadavg()
    rows = []
    for seed in args.seeds:
        for persistent in (True, False):
            arm = "signal" if persistent else "control"
            for model, r in run_arm(args, persistent, seed).items():
                rows.append({"seed": seed, "arm": arm, "model": model, **r})
    report = {"started": started, "machine": cpu_name(), "loadavg_start": load,
              "loadavg_end": os.getloadavg(), "args": vars(args), "rows": rows}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)
    print(f"{started}, {cpu_name()}, load {load[0]:.1f} -> {os.getloadavg()[0]:.1f}")
    print("| seed | arm | model | Recall@5 | Recall@20 | MRR@20 | Recall@20 at position 1 | "
          "predictions | fit s | train events/s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        fit = f"{r['fit_s']:.1f} | {r['events_per_s']:.0f}" if "fit_s" in r else "- | -"
        print(f"| {r['seed']} | {r['arm']} | {r['model']} | {r['recall@5']:.4f} | "
              f"{r['recall@20']:.4f} | {r['mrr@20']:.4f} | {r['recall@20_first']:.4f} | "
              f"{r['n_events']} | {fit} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Batch scoring (`gru-engine score`): in-process vs a local Ray actor pool, and memory when the
input is 10x larger.

    python bench/bench_score.py [--data ../shared/data/yoochoose-1-64] [--out bench/out/score]

1. Trains (or reuses) a SessionGRU on yoochoose-1-64 train (the official yoochoose parameters,
   ``--epochs`` epochs) and saves it.
2. Scores the test sessions in a child process, in-process (``score_file``, ``--threads``
   threads) and on a local Ray cluster (``ray_score``, ``--actors`` actors of 1 thread), same
   chunk size: checks the two outputs are the same bytes, reports sessions/s and peak RSS
   (the child's ``ru_maxrss``; for Ray also each actor's).
3. Writes the test sessions repeated ``--repeat`` times with new session ids and scores that
   in-process: peak RSS should stay where it was.
Writes ``results.json`` in ``--out``.
"""
import argparse
import gzip
import hashlib
import json
import os
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
YC_PARAMS = ("loss=cross-entropy,layers=480,batch_size=48,learning_rate=0.07,momentum=0.0,"
             "dropout_p_embed=0.0,dropout_p_hidden=0.2,sample_alpha=0.2,bpreg=0,elu_param=0,"
             "logq=1,n_sample=2048,constrained_embedding=True")

CHILD = r"""
import json, resource, sys, time
args = json.loads(sys.argv[1])
from gru_engine import scoring
t0 = time.perf_counter()
extra = {}
if args["mode"] == "ray":
    import ray
    from gru_engine import distributed
    ray.init(num_cpus=args["actors"], include_dashboard=False, log_to_driver=False)
    stats = distributed.ray_score(args["model"], args["sessions"], args["output"], k=args["k"],
                                  chunk_sessions=args["chunk"], n_actors=args["actors"],
                                  n_threads=1, stats_out=extra)
else:
    stats = scoring.score_file(args["model"], args["sessions"], args["output"], k=args["k"],
                               chunk_sessions=args["chunk"], n_threads=args["threads"])
print(json.dumps({"seconds": stats.seconds, "n_sessions": stats.n_sessions,
                  "n_events": stats.n_events, "n_unknown": stats.n_unknown_item_events,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  **extra}))
"""


def run_child(**kw):
    # OMP_NUM_THREADS as Ray gives each actor (its num_cpus): part of the scoring path splits
    # rows over OpenMP's default thread count, which changes float32 rounding in the last bit
    env = dict(os.environ, OMP_NUM_THREADS=str(kw["threads"] if kw["mode"] == "local" else 1))
    out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(kw)], capture_output=True,
                         text=True, env=env)
    if out.returncode:
        sys.stderr.write(out.stderr)
        raise SystemExit(f"child {kw['mode']} failed")
    return json.loads(out.stdout.strip().splitlines()[-1])


def sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def repeat_sessions(src, dst, times):
    """Write ``src``'s events ``times`` times, copy r with session ids + r * (max id + 1)."""
    from gru_engine.data import read_events
    ev = read_events(src)
    sid = np.asarray(ev["SessionId"], dtype=np.int64)
    step = int(sid.max()) + 1
    with gzip.open(dst, "wt", compresslevel=1) as f:
        f.write("SessionId\tItemId\tTime\n")
        for r in range(times):
            lines = [f"{s + r * step}\t{i}\t{t!r}\n" for s, i, t in
                     zip(sid.tolist(), ev["ItemId"].tolist(), ev["Time"].tolist())]
            f.write("".join(lines))
    return len(sid) * times


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=os.path.join(HERE, "..", "..", "shared", "data", "yoochoose-1-64"))
    ap.add_argument("--out", default=os.path.join(HERE, "out", "score"))
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--params", default=YC_PARAMS,
                    help="model parameters (default: the official yoochoose row)")
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--chunk", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=2, help="in-process threads")
    ap.add_argument("--actors", type=int, default=2, help="Ray actors (1 thread each)")
    ap.add_argument("--repeat", type=int, default=10)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    train = os.path.join(args.data, "yoochoose1_64_train.tsv.gz")
    test = os.path.join(args.data, "yoochoose1_64_test.tsv.gz")
    tag = hashlib.sha256(args.params.encode()).hexdigest()[:8]
    model = os.path.join(args.out, f"yc64_e{args.epochs}_{tag}.npz")
    if not os.path.exists(model):
        from gru_engine import SessionGRU
        from gru_engine.data import read_events
        t0 = time.perf_counter()
        SessionGRU.from_param_string(args.params, n_epochs=args.epochs, random_state=1,
                                     n_threads=1).fit(read_events(train)).save(model)
        print(f"trained {model} in {time.perf_counter() - t0:.0f} s", flush=True)
    common = dict(model=model, k=args.k, chunk=args.chunk, threads=args.threads,
                  actors=args.actors)
    res = {"command": " ".join(sys.argv), "model": model, "params": args.params, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "loadavg_before": os.getloadavg()}
    out_local = os.path.join(args.out, "local.tsv")
    out_ray = os.path.join(args.out, "ray.tsv")
    res["local"] = run_child(mode="local", sessions=test, output=out_local, **common)
    print("local", res["local"], flush=True)
    res["ray"] = run_child(mode="ray", sessions=test, output=out_ray, **common)
    print("ray", res["ray"], flush=True)
    res["identical"] = sha(out_local) == sha(out_ray)
    res["sha256"] = sha(out_local)
    res["ray_over_local_throughput"] = res["local"]["seconds"] / res["ray"]["seconds"]
    big = os.path.join(args.out, f"test_x{args.repeat}.tsv.gz")
    res["big_events"] = repeat_sessions(test, big, args.repeat)
    res["local_x"] = run_child(mode="local", sessions=big, output=os.path.join(args.out, "local_x.tsv"),
                               **common)
    print(f"local x{args.repeat}", res["local_x"], flush=True)
    res["loadavg_after"] = os.getloadavg()
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(res, f, indent=1)
    print(json.dumps({k: res[k] for k in ("identical", "ray_over_local_throughput")}))


if __name__ == "__main__":
    main()

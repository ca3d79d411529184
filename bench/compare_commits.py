"""Before/after comparison of two commits in one run: the same jobs on a base commit (checked
out into a temporary git worktree, its Cython extension built there) and on this checkout,
interleaved, so that both see the same machine load.

For each job (:mod:`refactor_job`) it reports whether the trained parameters are bit-identical,
the largest metric difference, and the medians over ``--repeats`` runs of training events/s
(best epoch of each run) and evaluation predictions/s, with their ratios (head / base).

    python bench/compare_commits.py --base 787be13 --jobs gru-rsc15 gru-yoo480 \
        feat-beauty-simultaneous --repeats 2
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
JOB = os.path.join(HERE, "refactor_job.py")


def worktree(base: str, where: str) -> str:
    """A worktree of ``base`` under ``where`` with its extension built in place."""
    path = os.path.join(where, "base")
    subprocess.run(["git", "-C", ROOT, "worktree", "add", "--detach", "-f", path, base],
                   check=True, capture_output=True)
    subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace", "-q"], cwd=path,
                   check=True, capture_output=True)
    return path


def run(tree: str, job: str, out: str, threads: int, data: str) -> dict:
    env = dict(os.environ, PYTHONPATH=tree)
    subprocess.run([sys.executable, JOB, job, out, "--threads", str(threads), "--data", data],
                   check=True, env=env, cwd=tempfile.gettempdir())
    with open(out + ".json") as f:
        return json.load(f)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", required=True, help="commit to compare against")
    ap.add_argument("--jobs", nargs="+", default=["gru-rsc15"])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data", default="/work/shared/data")
    ap.add_argument("--out", default=os.path.join(HERE, "out", "compare_commits.json"))
    a = ap.parse_args(argv)
    report = {"base": a.base, "jobs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        base = worktree(a.base, tmp)
        try:
            for job in a.jobs:
                runs = {"base": [], "head": []}
                for r in range(a.repeats):
                    for side, tree in (("base", base), ("head", ROOT)):
                        out = os.path.join(tmp, f"{side}-{job}-{r}.npz")
                        res = run(tree, job, out, a.threads, a.data)
                        res["params"] = out
                        runs[side].append(res)
                        print(side, job, r, res["train_events_per_s"], res["eval_seconds"],
                              flush=True)
                with np.load(runs["base"][0]["params"]) as pb, \
                        np.load(runs["head"][0]["params"]) as ph:
                    same = sorted(pb.files) == sorted(ph.files) and all(
                        np.array_equal(pb[k], ph[k]) for k in pb.files)
                    diff = max(float(np.abs(pb[k] - ph[k]).max()) for k in pb.files
                               if k in ph.files and pb[k].shape == ph[k].shape)
                mb, mh = runs["base"][0]["metrics"], runs["head"][0]["metrics"]
                med = lambda side, f: float(np.median([f(x) for x in runs[side]]))
                train = lambda x: max(x["train_events_per_s"])
                pred = lambda x: x["n_predictions"] / min(x["eval_seconds"])
                row = {"params_bit_identical": bool(same), "max_param_diff": diff,
                       "max_metric_diff": max(abs(mb[k] - mh[k]) for k in mb),
                       "metrics_base": mb, "metrics_head": mh,
                       "train_events_per_s": {"base": med("base", train),
                                              "head": med("head", train)},
                       "eval_predictions_per_s": {"base": med("base", pred),
                                                  "head": med("head", pred)}}
                for key in ("train_events_per_s", "eval_predictions_per_s"):
                    row[key]["ratio"] = row[key]["head"] / row[key]["base"]
                report["jobs"][job] = row
                print(json.dumps({job: row}, indent=1), flush=True)
        finally:
            subprocess.run(["git", "-C", ROOT, "worktree", "remove", "--force", base],
                           capture_output=True)
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(report, f, indent=1)
    print("| job | params bit-identical | max metric diff | train ev/s base / head (ratio) | "
          "eval pred/s base / head (ratio) |")
    print("|---|---|---|---|---|")
    for job, r in report["jobs"].items():
        t, e = r["train_events_per_s"], r["eval_predictions_per_s"]
        print(f"| {job} | {r['params_bit_identical']} | {r['max_metric_diff']:.2g} | "
              f"{t['base']:.0f} / {t['head']:.0f} ({t['ratio']:.3f}) | "
              f"{e['base']:.0f} / {e['head']:.0f} ({e['ratio']:.3f}) |")


if __name__ == "__main__":
    main()

"""Fuzz the model-file loader: mutate valid files of both GRU classes and load + score each in a
pool of long-lived worker subprocesses; count how each case ended.

Every case must end ``ok`` (loaded and scored) or ``ModelFileError`` (refused); ``crash`` (a
worker killed by a signal), ``hang`` (no answer within ``--timeout``) or ``other`` (another
exception) are failures, listed with their mutation. The mutations and the pool are those of
the default test (``tests/model_files.py``: header fields, array dtypes and shapes, index and
float values, dropped and extra arrays, truncation, flipped bytes; one in ten keeps the stale
checksum), drawn here from a seeded generator.

    python bench/fuzz_model_files.py --cases 10000 --workers 2 --seed 0 --json bench/fuzz.json

``--loader-commit C`` runs the same cases against the package with ``gru_engine/io.py`` as of
commit ``C`` (a copy of the package in a temporary folder), to show what the checks prevent.
Exit status 1 when a case failed.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, HERE)

import model_files as mf  # noqa: E402
from machine import cpu_name  # noqa: E402


def old_loader_worker(commit: str, folder: str) -> str:
    """:data:`model_files.WORKER` importing a copy of the package whose ``io.py`` is that of
    ``commit`` (the editable install's finder is bypassed)."""
    pkg = os.path.join(folder, "gru_engine")
    # with __pycache__ (times kept): Numba's cached kernels stay valid for the copy
    shutil.copytree(os.path.join(ROOT, "gru_engine"), pkg)
    old = subprocess.run(["git", "-C", ROOT, "show", f"{commit}:gru_engine/io.py"],
                         check=True, capture_output=True, text=True).stdout
    with open(os.path.join(pkg, "io.py"), "w") as f:
        f.write(old)
    prefix = ("import sys\n"
              "sys.meta_path = [f for f in sys.meta_path if 'editable' not in repr(f).lower()]\n"
              f"sys.path.insert(0, {folder!r})\n")
    # the old package has no ModelFileError: every refusal then counts as 'other'
    return prefix + mf.WORKER.replace(
        "from gru_engine.exceptions import ModelFileError",
        "import gru_engine.exceptions as _e\n"
        "ModelFileError = getattr(_e, 'ModelFileError', type('ModelFileError', (Exception,), {}))")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=10_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=60.0,
                    help="seconds a case may take before it counts as a hang (default: 60)")
    ap.add_argument("--chunk", type=int, default=200, help="cases written and run per chunk")
    ap.add_argument("--loader-commit", help="run against gru_engine/io.py of this commit")
    ap.add_argument("--json", help="write the counts and the failed cases here")
    args = ap.parse_args(argv)

    work = tempfile.mkdtemp(prefix="fuzz-model-files-")
    try:
        t0 = time.perf_counter()
        os.makedirs(os.path.join(work, "bases"))
        paths = mf.write_models(os.path.join(work, "bases"))
        bases = {name: (mf.CONFIGS[name][0], mf.read(p)) for name, p in paths.items()}
        if args.loader_commit:
            mf.WORKER = old_loader_worker(args.loader_commit, os.path.join(work, "old"))
        pool = mf.WorkerPool(args.workers, timeout=args.timeout)
        rng = random.Random(args.seed)
        counts, by_op = collections.Counter(), collections.defaultdict(collections.Counter)
        failures = []
        cases_dir = os.path.join(work, "cases")
        os.makedirs(cases_dir)
        done = 0
        try:
            while done < args.cases:
                n = min(args.chunk, args.cases - done)
                batch = [mf.random_mutation(rng) for _ in range(n)]
                for m, (outcome, detail) in mf.run_cases(pool, bases, batch, cases_dir):
                    counts[outcome] += 1
                    by_op[m["op"]][outcome] += 1
                    if outcome not in ("ok", "ModelFileError"):
                        failures.append({"mutation": m, "outcome": outcome, "detail": detail})
                done += n
                print(f"{done} cases: {dict(counts)}", flush=True)
        finally:
            pool.close()
        seconds = time.perf_counter() - t0
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpu": cpu_name(),
              "command": "python bench/fuzz_model_files.py " + " ".join(argv or sys.argv[1:]),
              "cases": args.cases, "seed": args.seed, "workers": args.workers,
              "loader_commit": args.loader_commit, "seconds": round(seconds, 1),
              "outcomes": dict(counts), "by_mutation": {k: dict(v) for k, v in by_op.items()},
              "failures": failures[:200], "n_failures": len(failures)}
    print(json.dumps({k: result[k] for k in ("cases", "seconds", "outcomes", "by_mutation",
                                               "n_failures")}, indent=1))
    for f in failures[:20]:
        print(f)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

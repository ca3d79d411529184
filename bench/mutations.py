"""Mutation check: which tests catch deliberate one-line bugs in the feature model, the
training step and the strategies.

Each mutation replaces one line of package source in a *temporary copy* of the package and the
tests (the working tree is never touched), then runs the chosen test files there in a
subprocess (``PYTHONPATH`` = the copy, a fresh Numba cache dir so that no compiled kernel of the
unmutated source is reused) and records the tests that fail. A first run without mutation must
pass; tests failing there are reported and not counted. Prints a Markdown table (mutation,
file:line, failing tests) and writes JSON with ``--out``.

    python bench/mutations.py                     # every mutation, default test files
    python bench/mutations.py --only residual-no-freeze --tests tests/test_trainer_reference.py
    python bench/mutations.py --list

``--tree head`` (default) copies the last commit (``git archive HEAD``), so that half-edited
files of a shared working tree do not enter; ``--tree work`` copies the working tree as it is.
Compiled extensions (``gru_engine/*.so``) are taken from the working tree either way.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STEP = "gru_engine/backends/cpu/step.py"


@dataclass
class Mutation:
    name: str
    what: str
    path: str
    old: str  # must occur exactly once in the file
    new: str


MUTATIONS = [
    Mutation("sum-weight-grad", "combine='sum': the combine weight's gradient misses the "
             "subnet's output (dL/da = sum dhc instead of sum dhc * y)", STEP,
             "da += dhc[i, c0 + k] * y[i, k]", "da += dhc[i, c0 + k]"),
    Mutation("sum-weight-forward", "combine='sum': the combine weights are ignored in the "
             "forward pass (a = 1)", STEP,
             "a = theta[SI[s, S_A]] if sum_mode else 1.0", "a = 1.0"),
    Mutation("residual-no-freeze", "residual: the output blocks of the frozen subnets are "
             "updated too (freeze_out ignored)", STEP,
             "if freeze_out and not train[s]:", "if False and not train[s]:"),
    Mutation("alternating-wrong-subnet", "alternating: epoch e trains subnet (e + 1) % S "
             "instead of e % S", "gru_engine/network.py",
             "plan.append((every, [s == e % S for s in range(S)], False, False))",
             "plan.append((every, [s == (e + 1) % S for s in range(S)], False, False))"),
    Mutation("interleaved-epoch-count", "interleaved: the trained subnet follows the step "
             "count of the epoch instead of the fit's (restarts at subnet 0 every epoch)",
             "gru_engine/backends/cpu/trainer.py", "k = state[4] % S", "k = state[3] % S"),
    Mutation("frozen-id-input-rows", "a frozen constrained ID subnet still updates the Wy "
             "rows it reads as input", STEP,
             "elif not (train[s] and SI[s, S_TAB] == T_WY):", "elif not (SI[s, S_TAB] == T_WY):"),
    Mutation("frozen-subnet-backward", "frozen subnets run their backward pass too (their "
             "gradients, e.g. the constrained-input rows of Wy, enter the step)", STEP,
             "        if active[s] and train[s]:\n            nY = subnet_backward",
             "        if active[s]:\n            nY = subnet_backward"),
    Mutation("no-hidden-dropout-backward", "the hidden dropout mask is not applied in the "
             "backward pass", STEP,
             "multiply_rows(dyg, block_view(wk.MK, LI[g, L_HOFF], bs, H), B)", "pass"),
    Mutation("bag-weight-ignored", "the bag weight is ignored in the table-row gradient "
             "(mean pooling / token bags / dense projection get weight 1)", STEP,
             "G[u, col0 + k] += w * DX[i, k]", "G[u, col0 + k] += DX[i, k]"),
    Mutation("token-mean-pooling", "TokenFeatures: bags summed instead of mean-pooled",
             "gru_engine/features.py",
             "        wts = [np.full(len(x), 1.0 / max(len(x), 1)) for x in lists]\n"
             "        indptr, indices, weights = _csr(len(item_index)",
             "        wts = [np.ones(len(x)) for x in lists]\n"
             "        indptr, indices, weights = _csr(len(item_index)"),
]

DEFAULT_TESTS = ["tests/test_trainer_reference.py", "tests/test_gradients.py",
                 "tests/test_feature_model.py", "tests/test_features.py",
                 "tests/test_contract.py"]
DEFAULT_K = "not cuda"  # the contract's CUDA cases: the emulator is another backend


def prepare(dest: Path, tree: str) -> None:
    """A copy of the package, the tests and the kernels under ``dest``."""
    dest.mkdir(parents=True)
    paths = ["gru_engine", "tests", "kernels", "pyproject.toml"]
    if tree == "head":
        archive = subprocess.run(["git", "archive", "HEAD", *paths], cwd=ROOT, check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    else:
        for p in paths:
            src = ROOT / p
            if src.is_dir():
                shutil.copytree(src, dest / p, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(src, dest / p)
    for so in (ROOT / "gru_engine").glob("*.so"):
        shutil.copy2(so, dest / "gru_engine" / so.name)


def apply(dest: Path, m: Mutation) -> int:
    """Apply ``m`` in the copy; returns the 1-based line number of the change."""
    path = dest / m.path
    text = path.read_text()
    n = text.count(m.old)
    if n != 1:
        raise SystemExit(f"mutation {m.name}: {m.old!r} occurs {n} times in {m.path}")
    line = text[:text.index(m.old)].count("\n") + 1
    path.write_text(text.replace(m.old, m.new))
    return line


def run_tests(dest: Path, tests: list, k: str, timeout: int) -> tuple[set, str, float]:
    """Failing test ids of one pytest run in the copy, its last output line and seconds."""
    env = dict(os.environ, PYTHONPATH=str(dest), NUMBA_CACHE_DIR=str(dest / ".numba_cache"),
               PYTHONDONTWRITEBYTECODE="1")
    where = subprocess.run([sys.executable, "-c", "import gru_engine; print(gru_engine.__file__)"],
                           cwd=dest, env=env, capture_output=True, text=True).stdout.strip()
    if not where.startswith(str(dest)):
        raise SystemExit(f"the copy's package is not the one imported ({where})")
    cmd = [sys.executable, "-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider",
           *tests, "-k", k]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=dest, env=env, capture_output=True,
                              text=True, timeout=timeout)
        out = proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        out += "\nTIMEOUT"
    failed = set()
    for line in out.splitlines():
        if line.startswith(("FAILED ", "ERROR ")):
            failed.add(line.split(" ", 1)[1].split(" - ")[0].strip())
    lines = [l for l in out.splitlines() if l.strip()]
    return failed, (lines[-1] if lines else ""), time.perf_counter() - t0


def compact(test_ids) -> str:
    """``file: test (n cases), ...`` for a set of test ids."""
    groups = {}
    for t in sorted(test_ids):
        file, _, name = t.replace("tests/", "").partition("::")
        base = name.split("[")[0].replace("TestContract::", "")
        groups.setdefault(file, {}).setdefault(base, 0)
        groups[file][base] += 1
    return "; ".join(f"{f}: " + ", ".join(f"{b}" + (f" x{n}" if n > 1 else "")
                                          for b, n in tests.items())
                     for f, tests in groups.items())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", nargs="*", help="mutation names (default: all)")
    ap.add_argument("--tests", nargs="*", default=DEFAULT_TESTS)
    ap.add_argument("-k", default=DEFAULT_K, help="pytest -k expression")
    ap.add_argument("--tree", choices=("head", "work"), default="head")
    ap.add_argument("--timeout", type=int, default=1800, help="seconds per pytest run")
    ap.add_argument("--no-baseline", action="store_true", help="skip the unmutated run")
    ap.add_argument("--out", help="JSON file for the results")
    ap.add_argument("--list", action="store_true", help="list the mutations and exit")
    args = ap.parse_args(argv)
    if args.list:
        for m in MUTATIONS:
            print(f"{m.name}: {m.what} ({m.path})")
        return
    chosen = [m for m in MUTATIONS if not args.only or m.name in args.only]
    results = {"tests": args.tests, "k": args.k, "tree": args.tree, "mutations": []}
    with tempfile.TemporaryDirectory(prefix="gru_mut_") as tmp:
        tmp = Path(tmp)
        prepare(tmp / "check", args.tree)  # every mutation applies before anything runs
        for m in chosen:
            apply(tmp / "check", m)
        shutil.rmtree(tmp / "check")
        baseline = set()
        if not args.no_baseline:
            prepare(tmp / "base", args.tree)
            baseline, last, secs = run_tests(tmp / "base", args.tests, args.k, args.timeout)
            print(f"baseline: {last} ({secs:.0f} s)", file=sys.stderr)
            results["baseline_failures"] = sorted(baseline)
            shutil.rmtree(tmp / "base")
        for m in chosen:
            dest = tmp / m.name
            prepare(dest, args.tree)
            line = apply(dest, m)
            failed, last, secs = run_tests(dest, args.tests, args.k, args.timeout)
            caught = sorted(failed - baseline)
            print(f"{m.name}: {len(caught)} failing ({last}; {secs:.0f} s)", file=sys.stderr)
            results["mutations"].append(dict(asdict(m), line=line, caught=caught,
                                             summary=last, seconds=round(secs, 1)))
            shutil.rmtree(dest)
    print("| mutation | file:line | tests that fail |")
    print("|---|---|---|")
    for r in results["mutations"]:
        caught = compact(r["caught"]) or "**none**"
        print(f"| {r['name']}: {r['what']} | `{r['path']}:{r['line']}` | {caught} |")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

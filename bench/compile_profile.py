"""First-run cost: CPU seconds Numba spends compiling each kernel of `gru-engine demo`.

Runs the demo (bundled rsc15-100k sample) in a child process with an empty Numba cache and
records every ``numba:compile`` event (and every C callback's compile): per top-level kernel its compile CPU seconds, and per
function (nested compiles included) the inclusive seconds, largest first. CPU seconds
(``time.process_time``) rather than wall time, so the figures survive a busy machine.

    python bench/compile_profile.py [--epochs 1] [--top 30]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))

CHILD = r"""
import collections, sys, time
from numba.core import event
from numba.core.ccallback import CFunc
from gru_engine.cli import main

class Compiles(event.Listener):
    def __init__(self):
        self.stack, self.top, self.inclusive, self.count = [], collections.Counter(), collections.Counter(), collections.Counter()
    def on_start(self, ev):
        d = ev.data.get("dispatcher")
        self.push(d.py_func.__qualname__ if d is not None else "?")
    def push(self, name):
        self.stack.append((time.process_time(), name))
    def on_end(self, ev):
        t0, name = self.stack.pop()
        dt = time.process_time() - t0
        self.inclusive[name] += dt
        self.count[name] += 1
        if not self.stack:
            self.top[name] += dt

compiles = Compiles()
event.register("numba:compile", compiles)
cfunc_compile = CFunc.compile
def timed_cfunc_compile(self):  # C callbacks compile without a numba:compile event
    compiles.push(self._pyfunc.__qualname__ + " (cfunc)")
    try:
        return cfunc_compile(self)
    finally:
        compiles.on_end(None)
CFunc.compile = timed_cfunc_compile
epochs, top_n = sys.argv[1], int(sys.argv[2])
c0, w0 = time.process_time(), time.perf_counter()
sys.argv = ["gru-engine", "demo", "--epochs", epochs]
main()
print(f"\ndemo: CPU {time.process_time() - c0:.1f} s, wall {time.perf_counter() - w0:.1f} s; "
      f"compiling: CPU {sum(compiles.top.values()):.1f} s in {len(compiles.top)} top-level kernels")
print("top-level kernels (CPU s):")
for name, sec in compiles.top.most_common():
    print(f"  {sec:7.2f}  {name}")
print("largest functions, nested compiles included (CPU s, compiles):")
for name, sec in compiles.inclusive.most_common(top_n):
    print(f"  {sec:7.2f}  x{compiles.count[name]}  {name}")
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=1, help="demo training epochs")
    ap.add_argument("--top", type=int, default=30, help="functions listed")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as cache, tempfile.TemporaryDirectory() as cwd:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        # the checkout after PYTHONPATH: `PYTHONPATH=<tree>` measures that tree
        env["PYTHONPATH"] = os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"),
                                                         os.path.join(HERE, "..")) if p)
        return subprocess.call([sys.executable, "-c", CHILD, str(args.epochs), str(args.top)],
                               env=env, cwd=cwd)


if __name__ == "__main__":
    sys.exit(main())

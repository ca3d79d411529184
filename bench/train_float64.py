"""Semantics check of a CPU-trainer change that moves float rounding: trains SessionGRU in
float64 (where rounding differences stay near 1e-16 instead of growing through float32 training)
for a number of steps and writes the parameters. Run it with two checkouts first on
``PYTHONPATH`` and compare the files: a change that keeps the update rule agrees to ~1e-12.

    PYTHONPATH=/tmp/base python bench/train_float64.py rsc15 500 /tmp/base.npz
    PYTHONPATH=.         python bench/train_float64.py rsc15 500 /tmp/head.npz
    python bench/train_float64.py --compare /tmp/base.npz /tmp/head.npz
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def train(job: str, steps: int, out: str, data: str) -> None:
    from profile_training import end_epochs_after
    from refactor_job import RSC15, YOO480

    from gru_engine import SessionGRU
    from gru_engine.data import read_events
    path, text = {"rsc15": ("rsc15-100k/rsc15_100k_train_full.tsv.gz", RSC15),
                  "yoo480": ("yoochoose-1-64/yoochoose1_64_train.tsv.gz", YOO480)}[job]
    text = ",".join(kv for kv in text.split(",") if not kv.startswith("n_epochs")) + \
        ",n_epochs=1"

    class Float64GRU(SessionGRU):
        """Trains in float64 and stops after ``steps`` steps."""

        def _make_trainer(self, p, params, *args, **kwargs):
            for k, v in params.items():
                if v.dtype == np.float32:
                    params[k] = v.astype(np.float64)
            trainer = super()._make_trainer(p, params, *args, **kwargs)
            end_epochs_after(trainer, steps)
            return trainer

    model = Float64GRU.from_param_string(text, random_state=1, n_threads=1)
    model.fit(read_events(os.path.join(data, path)))
    np.savez(out, **{k: model.params_[k] for k in ("theta", "Wy", "By")},
             loss=np.array(model.loss_history_))


def compare(a: str, b: str) -> None:
    with np.load(a) as pa, np.load(b) as pb:
        for k in pa.files:
            x, y = pa[k], pb[k]
            diff = float(np.abs(x - y).max())
            print(f"{k}: max |diff| {diff:.3g}, max |value| {float(np.abs(x).max()):.3g}, "
                  f"bit-identical {np.array_equal(x, y)}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("args", nargs="+", help="JOB STEPS OUT.npz, or with --compare: A.npz B.npz")
    ap.add_argument("--compare", action="store_true")
    ap.add_argument("--data", default="/work/shared/data")
    a = ap.parse_args(argv)
    if a.compare:
        compare(*a.args)
    else:
        job, steps, out = a.args
        train(job, int(steps), out, a.data)


if __name__ == "__main__":
    main()

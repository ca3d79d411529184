"""GPU benchmark of the CUDA backend (needs CuPy and an NVIDIA GPU; run by bench/gpu_check.sh).

At the shapes of ``bench/cuda_static.py`` (hidden 100 / batch 64 and hidden 1000 / batch 256,
n_sample 2048, 40,000 items, 1 layer, constrained embedding, cross-entropy with logq, hidden
dropout 0.4 -- the configuration timed is the one modelled):

* training events/s of ``backends.cuda.Trainer`` (random schedule, steps timed with CUDA events
  after warm-up), with the full step replayed as a CUDA graph (default) and kernel by kernel, and
  evaluation predictions/s of ``backends.cuda.Scorer.rank`` (batches of 512);
* measured ceilings on this GPU: SGEMM FLOP/s (``cupy.matmul`` 8192^3 float32) and
  device-to-device copy bytes/s (1 GiB);
* "model-FLOP rate" and "model-byte rate" of a step: the MODELLED FLOPs/bytes of
  ``cuda_static.step_ops`` (at the timed configuration, dropout included) divided by the
  MEASURED step time, as a share of the measured ceilings -- not a hardware counter;
* host calls per step counted through the device interface in the timed kernel-by-kernel run
  (MEASURED), beside the count ``cuda_static.step_host_calls`` models.

Every printed figure is labelled MEASURED (timed or counted on this GPU) or MODEL.
* the PyTorch reference step (``bench/torch_reference_step.py``) at the same shapes when torch
  is installed.

Writes ``bench/out/cuda_bench.json`` and prints Markdown.
"""
from __future__ import annotations

import argparse
import datetime
import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from cuda_static import SHAPES, eval_ops, step_host_calls, step_ops  # noqa: E402
from gru_engine import params as hp  # noqa: E402
from gru_engine.backends.cuda import Scorer, Trainer  # noqa: E402
from gru_engine.network import PARAM_KEYS, build_layout  # noqa: E402
from gru_engine.backends.device import CupyDevice, cuda_available  # noqa: E402

logger = logging.getLogger("gru_engine.bench")


def _timed(cp, fn, reps):
    start, stop = cp.cuda.Event(), cp.cuda.Event()
    start.record()
    for _ in range(reps):
        fn()
    stop.record()
    stop.synchronize()
    return cp.cuda.get_elapsed_time(start, stop) / 1e3


def ceilings(cp):
    n = 8192
    a = cp.random.random((n, n), dtype=cp.float32)
    b = cp.random.random((n, n), dtype=cp.float32)
    c = cp.empty((n, n), cp.float32)
    cp.matmul(a, b, out=c)
    t = _timed(cp, lambda: cp.matmul(a, b, out=c), 10)
    gemm = 2 * n ** 3 * 10 / t
    x = cp.empty(2 ** 28, cp.float32)
    y = cp.empty_like(x)
    y[...] = x
    t = _timed(cp, lambda: cp.copyto(y, x), 20)
    copy = 2 * x.nbytes * 20 / t  # read + write
    return dict(sgemm_flops=gemm, copy_bytes_per_s=copy)


def params_for(rng, H, n_items):
    """GRU4Rec (one layer of H, constrained embedding) as a flat network, GRU4Rec's init."""
    lay = build_layout(n_items, "id", "concat", "constrained", [H], 0, None, [], rng)
    return {k: lay[k] for k in PARAM_KEYS}


def hyper_for(shape):
    """The hyperparameters of the timed step: the shape's batch, samples and dropout (the very
    values cuda_static.step_ops models)."""
    return hp.hyper(hp.validate(dict(hp.DEFAULTS, batch_size=shape["B"],
                                     n_sample=shape["n_sample"], logq=1.0, learning_rate=0.2,
                                     momentum=0.2, dropout_p_hidden=shape["dropout_p_hidden"],
                                     dropout_p_embed=shape["dropout_p_embed"])))


def bench_shape(dev, cp, shape, steps, warmup, use_graphs=True):
    H, B, ns, N = shape["H"], shape["B"], shape["n_sample"], shape["n_items"]
    rng = np.random.default_rng(0)
    support = rng.integers(1, 1000, N)
    trainer = Trainer(dev, params_for(rng, H, N), hyper_for(shape), support, sum_mode=False,
                      use_graphs=use_graphs)
    total = steps + warmup
    ins = dev.to_device(rng.integers(0, N, (total, B)), np.int32)
    outs = dev.to_device(rng.integers(0, N, (total, B)), np.int32)
    rst = dev.to_device((rng.random((total, B)) < 0.15).astype(np.uint8))
    smp = dev.to_device(rng.integers(0, N, (total, ns)), np.int32)
    src = dev.to_device(np.arange(B), np.int32)  # rows carried as in an epoch: full steps
    # replay the captured CUDA graph when use_graphs (the first full step runs directly)
    for t in range(warmup):
        trainer.step(ins[t], outs[t], rst[t], smp[t], src)
    next_step = iter(range(warmup, total)).__next__

    def one_step():
        t = next_step()
        trainer.step(ins[t], outs[t], rst[t], smp[t], src)

    dev.reset_stats()
    train_s = _timed(cp, one_step, steps)
    host_calls = tuple(dev.stats[k] / steps for k in ("launches", "gemms", "copies"))
    scorer = Scorer(dev, trainer.host_params(), False)
    R = shape["eval_batch"]
    scorer.begin(R)
    rows = np.arange(R)
    items = rng.integers(0, N, R)
    targets = rng.integers(0, N, R)
    new = np.zeros(R, bool)
    scorer.rank(rows, items, new, targets)
    eval_reps = 20
    eval_s = _timed(cp, lambda: scorer.rank(rows, items, new, targets), eval_reps)
    flops = sum(op[2] for op in step_ops(**shape))
    nbytes = sum(op[3] for op in step_ops(**shape))
    step_s = train_s / steps
    return dict(train_events_per_s=B * steps / train_s, step_us=step_s * 1e6,
                graphs_used=trainer.use_graphs,
                eval_predictions_per_s=R * eval_reps / eval_s,
                host_calls_per_step_measured=host_calls,
                host_calls_per_step_model=step_host_calls(**shape),
                model_step_flops=flops, model_step_bytes=nbytes,
                model_flops_per_measured_s=flops / step_s,
                model_bytes_per_measured_s=nbytes / step_s,
                eval_model_flops=sum(op[2] for op in eval_ops(**shape)),
                kinds="train_events_per_s, step_us, eval_predictions_per_s, "
                      "host_calls_per_step_measured: MEASURED; model_*: MODELLED counts "
                      "(model_*_per_measured_s: modelled count / measured time)",
                note="eval timing includes host->device copies of rows/items/targets and the "
                     "device->host copy of the ranks")


def torch_reference(shape, steps):
    try:
        import torch  # noqa: F401  (bench-only comparison)
    except ImportError:
        return {"skipped": "torch not installed"}
    res = subprocess.run([sys.executable, str(ROOT / "bench" / "torch_reference_step.py"),
                          "--hidden", str(shape["H"]), "--batch", str(shape["B"]),
                          "--n-sample", str(shape["n_sample"]), "--n-items", str(shape["n_items"]),
                          "--steps", str(steps)], capture_output=True, text=True)
    if res.returncode != 0:
        return {"failed": res.stderr[-2000:]}
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--out", default=str(ROOT / "bench" / "out" / "cuda_bench.json"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not cuda_available():
        parser.error("no CUDA device visible to CuPy (or CuPy missing): nothing to measure")
    import cupy as cp
    dev = CupyDevice()
    props = cp.cuda.runtime.getDeviceProperties(0)
    ceil = ceilings(cp)
    result = dict(date=datetime.datetime.utcnow().isoformat() + "Z",
                  gpu=props["name"].decode() if isinstance(props["name"], bytes) else props["name"],
                  ceilings=ceil, ceilings_kind="MEASURED", shapes={})
    print(f"GPU: {result['gpu']}; MEASURED SGEMM {ceil['sgemm_flops'] / 1e12:.1f} TFLOP/s, "
          f"MEASURED copy {ceil['copy_bytes_per_s'] / 1e9:.0f} GB/s\n")
    print("Columns: MEASURED = timed with CUDA events (or counted) on this GPU; MODEL = the "
          "FLOPs/bytes of bench/cuda_static.step_ops at the timed configuration divided by the "
          "MEASURED step time (a rate of modelled work, not a hardware counter).\n")
    print("| shape (dropout_p_hidden) | train events/s, graph (MEASURED) | step us (MEASURED) | "
          "no-graph events/s (step us) (MEASURED) | host calls/step no-graph: MEASURED vs MODEL "
          "| model-FLOP rate GFLOP/s (% of measured SGEMM) (MODEL/MEASURED) | model-byte rate "
          "GB/s (% of measured copy) (MODEL/MEASURED) | eval predictions/s (MEASURED) | "
          "torch train events/s (MEASURED) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, shape in SHAPES.items():
        ours = bench_shape(dev, cp, shape, args.steps, args.warmup)
        plain = bench_shape(dev, cp, shape, args.steps, args.warmup, use_graphs=False)
        ref = torch_reference(shape, args.steps)
        result["shapes"][name] = dict(shape=shape, ours=ours, ours_no_graph=plain, torch=ref)
        graph = "" if ours["graphs_used"] else " (capture FAILED: no graph)"
        calls = "/".join(f"{c:g}" for c in plain["host_calls_per_step_measured"])
        model_calls = "/".join(str(c) for c in plain["host_calls_per_step_model"])
        fl, by = ours["model_flops_per_measured_s"], ours["model_bytes_per_measured_s"]
        print(f"| {name} ({shape['dropout_p_hidden']}) | {ours['train_events_per_s']:,.0f}{graph} | "
              f"{ours['step_us']:.1f} | "
              f"{plain['train_events_per_s']:,.0f} ({plain['step_us']:.1f}) | "
              f"{calls} vs {model_calls} | "
              f"{fl / 1e9:,.0f} ({fl / ceil['sgemm_flops']:.1%}) | "
              f"{by / 1e9:,.0f} ({by / ceil['copy_bytes_per_s']:.1%}) | "
              f"{ours['eval_predictions_per_s']:,.0f} | "
              f"{ref.get('events_per_s', float('nan')):,.0f} {'' if 'events_per_s' in ref else str(ref)[:60]} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    logger.info("wrote %s", out)


if __name__ == "__main__":
    main()

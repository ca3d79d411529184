"""Static performance of the CUDA backend: ptxas resources, H100 occupancy, and a roofline MODEL.

Nothing here runs on a GPU. For every ``kernels/*.cu``:

1. ``nvcc -ptx -arch=sm_90 -Werror all-warnings`` must succeed (no warnings);
2. ``nvcc -cubin -arch=sm_90 -Xptxas -v`` gives per kernel registers, spill bytes, stack and
   static shared memory; with the launch configuration ``gru_engine/backends/cuda/`` uses,
   the theoretical occupancy on an H100 (SM 9.0: 65,536 registers, 228 KB shared memory,
   2,048 threads, 32 blocks and 64 warps per SM; registers allocated per warp in units of 256,
   1 KB shared memory reserved per block);
3. at the benchmark shapes (dropout included, as timed by ``bench/cuda_bench.py``), the FLOPs
   and DRAM bytes of every kernel and GEMM of one training step (and of one evaluation batch), and the step time this implies on an H100 SXM under a
   roofline model: time(op) = max(FLOPs / peak, bytes / bandwidth), summed over the ops.
   Peaks are NVIDIA's published H100 SXM figures: FP32 (non-tensor) 67 TFLOP/s, TF32 tensor
   core 494.7 TFLOP/s dense, HBM3 3.35 TB/s. Bytes assume every operand moves once between
   DRAM and the SM (the loss kernel reads its row three times: counted so). This is a MODEL,
   not a measurement, and a LOWER bound on time: it assumes every op reaches the peak, which
   small GEMMs (64 x 300 x 100) and one-block-per-row kernels with 64 rows (64 blocks on 132
   SMs) cannot; it ignores launch latency, which ``--launch-floor-us`` adds as a stated
   ASSUMPTION (a floor per host-issued kernel/GEMM/copy) in a second figure;
4. the same step replayed as a CUDA graph (``backends.cuda.Trainer(use_graphs=True)``, the default on a
   GPU): the host issues 5 staging copies, 1 graph launch and 1 loss-slot kernel per full step
   instead of every kernel, GEMM and copy (counts asserted in
   ``tests/test_cuda_graphs.py::test_host_calls_per_full_step``), so the per-launch floor
   applies to those 7 calls only, plus an ASSUMED ``--graph-node-us`` per node executed inside
   the graph (a CUDA graph removes the host launch cost of its nodes, not their execution).
   Both floors are assumptions, not published or measured figures: a MODEL.

Usage: ``python bench/cuda_static.py [--out bench/out/cuda_static.json]`` (prints Markdown).
"""
from __future__ import annotations

import argparse
import datetime
import json
import logging
import math
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from gru_engine.backends import kernels as K  # noqa: E402

logger = logging.getLogger("gru_engine.bench")

# NVIDIA H100 SXM5 published figures (datasheet / Hopper architecture whitepaper).
PEAK_FP32 = 67e12
PEAK_TF32 = 494.7e12
HBM_BW = 3.35e12
SM90 = dict(regs_per_sm=65536, smem_per_sm=228 * 1024, threads_per_sm=2048, blocks_per_sm=32,
            warps_per_sm=64, reg_alloc_unit=256, smem_reserved_per_block=1024,
            max_regs_per_thread=255)

BLOCK = 256
# Launch configuration per kernel as backends/cuda/ uses it: (threads per block, dynamic smem bytes).
LAUNCH = {name: (BLOCK, 0) for name in K.kernel_index()}
LAUNCH["sparse_combine"] = LAUNCH["sparse_adagrad"] = (128, 0)  # H = 100 rows (min(256, 32*ceil(W/32)))
LAUNCH["topk_rows"] = (BLOCK, 8 * 100)                           # k = 100
LAUNCH["counter_add"] = (1, 0)                                    # one thread

# dropout_p_hidden 0.4 as in the published rsc15 parameters; bench/cuda_bench.py times exactly
# these configurations, so its modelled FLOPs and bytes (step_ops) are those of the timed step.
SHAPES = {
    "H100_B64": dict(H=100, B=64, n_sample=2048, n_items=40000, eval_batch=512,
                     dropout_p_hidden=0.4, dropout_p_embed=0.0),
    "H1000_B256": dict(H=1000, B=256, n_sample=2048, n_items=40000, eval_batch=512,
                       dropout_p_hidden=0.4, dropout_p_embed=0.0),
}


def ptxas_resources(cu: Path) -> dict:
    """{kernel: {registers, spill_stores, spill_loads, stack, smem}} from ``-Xptxas -v``."""
    with tempfile.TemporaryDirectory() as tmp:
        res = subprocess.run(["nvcc", "-cubin", "-arch=sm_90", "-Xptxas", "-v", str(cu),
                              "-o", str(Path(tmp) / "k.cubin")], capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"nvcc -cubin failed for {cu.name}:\n{res.stderr}")
    out, cur = {}, None
    for line in res.stderr.splitlines():
        m = re.search(r"Compiling entry function '(\w+)'", line)
        if m:
            cur = m.group(1)
            out[cur] = dict(registers=0, spill_stores=0, spill_loads=0, stack=0, smem=0)
            continue
        if cur is None:
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            out[cur].update(stack=int(m.group(1)), spill_stores=int(m.group(2)),
                            spill_loads=int(m.group(3)))
        m = re.search(r"Used (\d+) registers", line)
        if m:
            out[cur]["registers"] = int(m.group(1))
            s = re.search(r"(\d+) bytes smem", line)
            out[cur]["smem"] = int(s.group(1)) if s else 0
    return out


def ptx_warnings(cu: Path) -> str:
    """'' when ``nvcc -ptx -arch=sm_90 -Werror all-warnings`` is clean, else the messages."""
    with tempfile.TemporaryDirectory() as tmp:
        res = subprocess.run(["nvcc", "-ptx", "-arch=sm_90", "-Werror", "all-warnings", str(cu),
                              "-o", str(Path(tmp) / "k.ptx")], capture_output=True, text=True)
    return "" if res.returncode == 0 and not res.stderr.strip() else (res.stderr.strip() or "failed")


def occupancy(regs: int, smem_static: int, threads: int, smem_dynamic: int) -> dict:
    """Theoretical occupancy on SM 9.0 for one launch configuration."""
    a = SM90
    warps = math.ceil(threads / 32)
    regs_per_warp = math.ceil(max(regs, 1) * 32 / a["reg_alloc_unit"]) * a["reg_alloc_unit"]
    by_regs = (a["regs_per_sm"] // regs_per_warp) // warps
    smem = smem_static + smem_dynamic + a["smem_reserved_per_block"]
    by_smem = a["smem_per_sm"] // smem
    by_threads = a["threads_per_sm"] // threads
    blocks = min(by_regs, by_smem, by_threads, a["blocks_per_sm"])
    limits = (("registers", by_regs), ("shared memory", by_smem), ("threads", by_threads),
              ("blocks", a["blocks_per_sm"]))
    limiter = "/".join(name for name, v in limits if v == blocks)
    return dict(blocks_per_sm=blocks, active_warps=blocks * warps,
                occupancy=blocks * warps / a["warps_per_sm"], limiter=limiter)


def step_host_calls(dropout_p_hidden=0.0, dropout_p_embed=0.0, **_):
    """(kernels, GEMMs, copies) the host issues for one full training step kernel by kernel: 1
    layer, constrained embedding, logq. Without dropout 21 + 8 + 4 (19 + 8 + 4 without the 2
    logq gathers, counted in tests/test_cuda_graphs.py::test_host_calls_per_full_step); hidden
    dropout adds its dropout_mask, embedding dropout a dropout_mask and two multiply_inplace
    (forward input, backward gradient), any dropout one counter_add."""
    hidden, embed = dropout_p_hidden > 0, dropout_p_embed > 0
    return 21 + hidden + 3 * embed + (hidden or embed), 8, 4


def step_ops(H, B, n_sample, n_items, dropout_p_hidden=0.0, dropout_p_embed=0.0, **_):
    """(name, kind, flops, bytes) of one training step: 1 GRU layer, constrained embedding,
    cross-entropy with logq, with the given dropout (a mask drawn per step on the device; the
    hidden mask is read by the fused GRU cell forward and backward)."""
    C, f = B + n_sample, 4
    G = 3 * H
    mh = B * H if dropout_p_hidden > 0 else 0  # hidden-mask elements read by the cell kernels
    me = B * H if dropout_p_embed > 0 else 0   # embedding-mask elements (input x is (B, H))
    ops = [
        ("dropout_mask embedding", "kernel", 2 * me, f * me),
        ("multiply_inplace x *= mask", "kernel", me, f * 3 * me),
        ("gather_rows x=Wy[in]", "kernel", 0, f * 2 * B * H + 4 * B),
        ("GEMM gx = x@Wx", "gemm", 2 * B * H * G, f * (B * H + H * G + B * G)),
        ("add_bias gx", "kernel", B * G, f * (2 * B * G + G)),
        ("GEMM gh = h@Wh", "gemm", 2 * B * H * G, f * (B * H + H * G + B * G)),
        ("dropout_mask hidden", "kernel", 2 * mh, f * mh),
        ("gru_cell_forward", "kernel", 30 * B * H + mh,
         f * (2 * B * G + H + B * H + 6 * B * H + mh) + B),
        ("copy state", "kernel", 0, f * 2 * B * H),
        ("gather_rows Wy[cols]", "kernel", 0, f * 2 * C * H + 4 * C),
        ("gather_rows By[cols]+logq", "kernel", 0, f * 4 * C + 8 * C),
        ("GEMM S = h@Wy_c^T", "gemm", 2 * B * C * H, f * (B * H + C * H + B * C)),
        ("add_bias S", "kernel", B * C, f * (2 * B * C + C)),
        ("loss_cross_entropy", "kernel", 25 * B * C, f * (3 * B * C + B * C + 3 * C)),
        ("column_sum dBy", "kernel", B * C, f * (B * C + C)),
        ("GEMM dWy_c = dS^T h", "gemm", 2 * B * C * H, f * (B * C + B * H + C * H)),
        ("GEMM dh = dS Wy_c", "gemm", 2 * B * C * H, f * (B * C + C * H + B * H)),
        ("gru_cell_backward", "kernel", 25 * B * H + mh,
         f * (B * H + 4 * B * H + B * H + 2 * B * G + mh)),
        ("GEMM dWh = h^T d_gh", "gemm", 2 * B * H * G, f * (B * H + B * G + H * G)),
        ("column_sum dbx, dbhn", "kernel", B * G + B * H, f * (B * G + B * H + G + H)),
        ("GEMM dWx = x^T d_gx", "gemm", 2 * B * H * G, f * (B * H + B * G + H * G)),
        ("GEMM dx = d_gx Wx^T", "gemm", 2 * B * G * H, f * (B * G + H * G + B * H)),
        ("multiply_inplace dx *= mask", "kernel", me, f * 3 * me),
        ("adagrad_dense (theta: Wx,Wh,bx,bhn)", "kernel", 8 * (2 * H * G + G + H),
         f * 7 * (2 * H * G + G + H)),
        ("sparse_claim/combine/adagrad Wy", "kernel", 8 * (C + B) * H,
         f * ((C + B) * H * 8) + 12 * (C + B)),
        ("sparse_claim/combine/adagrad By", "kernel", 8 * C, f * 8 * C + 12 * C),
        ("counter_add (mask stream)", "kernel", 0, 8 if mh or me else 0),
    ]
    return [op for op in ops if op[2] or op[3]]


def eval_ops(H, n_items, eval_batch, **_):
    """One evaluation batch of ``eval_batch`` events: GRU step, full score GEMM, bias, rank."""
    R, N, f, G = eval_batch, n_items, 4, 3 * H
    return [
        ("GRU step (gathers, 2 GEMMs, cell)", "gemm", 2 * 2 * R * H * G,
         f * (2 * H * G + 4 * R * G + 8 * R * H)),
        ("GEMM S = h@Wy^T (all items)", "gemm", 2 * R * N * H, f * (R * H + N * H + R * N)),
        ("add_bias S", "kernel", R * N, f * (2 * R * N + N)),
        ("rank_targets", "kernel", 2 * R * N, f * R * N + 8 * R),
    ]


def roofline(ops, n_events, launch_floor_s, n_launches, graph=None):
    """graph: None, or (host calls per step, graph nodes, node floor in s) for the graph MODEL."""
    rows, t32, ttf = [], 0.0, 0.0
    for name, kind, flops, nbytes in ops:
        t_mem = nbytes / HBM_BW
        a = max(flops / PEAK_FP32, t_mem)
        b = max(flops / (PEAK_TF32 if kind == "gemm" else PEAK_FP32), t_mem)
        t32 += a
        ttf += b
        rows.append(dict(op=name, kind=kind, flops=flops, bytes=nbytes, time_fp32_us=a * 1e6,
                         time_tf32_us=b * 1e6,
                         bound="memory" if t_mem >= flops / PEAK_FP32 else "compute"))
    floor = n_launches * launch_floor_s
    out = dict(ops=rows, time_fp32_us=t32 * 1e6, time_tf32_us=ttf * 1e6,
               events_per_s_fp32=n_events / t32, events_per_s_tf32=n_events / ttf,
               launches=n_launches, time_with_launch_floor_us=(t32 + floor) * 1e6,
               events_per_s_with_launch_floor=n_events / (t32 + floor))
    if graph is not None:
        host_calls, nodes, node_s = graph
        g = host_calls * launch_floor_s + nodes * node_s
        out.update(graph_host_calls=host_calls, graph_nodes=nodes,
                   time_with_graph_us=(t32 + g) * 1e6, events_per_s_with_graph=n_events / (t32 + g))
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(ROOT / "bench" / "out" / "cuda_static.json"))
    parser.add_argument("--launch-floor-us", type=float, default=3.0,
                        help="ASSUMED minimum GPU time per kernel/GEMM launch (not a published figure)")
    parser.add_argument("--graph-node-us", type=float, default=1.0,
                        help="ASSUMED minimum GPU time per node inside a CUDA graph (not a "
                             "published figure)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if shutil.which("nvcc") is None:
        parser.error("nvcc not found: the static analysis needs the CUDA toolkit")
    version = subprocess.run(["nvcc", "--version"], capture_output=True, text=True).stdout
    kernels, problems = {}, []
    for filename in K.KERNEL_FILES:
        cu = K.source_path(filename)
        warn = ptx_warnings(cu)
        if warn:
            problems.append(f"{filename}: {warn}")
        for name, res in ptxas_resources(cu).items():
            threads, dyn = LAUNCH[name]
            occ = occupancy(res["registers"], res["smem"], threads, dyn)
            kernels[name] = dict(file=filename, **res, block=threads, dynamic_smem=dyn, **occ)
            if res["spill_stores"] or res["spill_loads"]:
                problems.append(f"{name}: spills {res['spill_stores']}/{res['spill_loads']} bytes")
    models = {}
    for shape_name, shape in SHAPES.items():
        # A full step of an epoch (rows carried from the previous step): step_host_calls. As a
        # graph: 7 host calls (5 staging copies, 1 graph launch, 1 kernel) and one graph node
        # per kernel-by-kernel host call plus the loss-slot reset.
        # evaluation: 6 kernels + 3 GEMMs per batch (backends.cuda.Scorer.rank)
        calls = sum(step_host_calls(**shape))
        step = roofline(step_ops(**shape), shape["B"], args.launch_floor_us * 1e-6, calls,
                        graph=(7, calls + 1, args.graph_node_us * 1e-6))
        ev = roofline(eval_ops(**shape), shape["eval_batch"], args.launch_floor_us * 1e-6, 6 + 3)
        models[shape_name] = dict(shape=shape, train_step=step, eval_batch=ev)

    print("## CUDA kernels: ptxas (sm_90, measured by compiling) and theoretical H100 occupancy "
          "(computed from them, MODEL)\n")
    print("| kernel | file | regs | spill st/ld B | stack B | smem B (static+dyn) | block | blocks/SM | occupancy | limiter |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, k in kernels.items():
        print(f"| {name} | {k['file']} | {k['registers']} | {k['spill_stores']}/{k['spill_loads']} | "
              f"{k['stack']} | {k['smem']}+{k['dynamic_smem']} | {k['block']} | {k['blocks_per_sm']} | "
              f"{k['occupancy']:.0%} | {k['limiter']} |")
    print(f"\nnvcc -ptx -arch=sm_90 -Werror all-warnings: "
          f"{'clean for every file' if not problems else 'PROBLEMS: ' + '; '.join(problems)}\n")
    print("## Roofline MODEL of an H100 SXM (not a measurement)\n")
    print("Peaks (NVIDIA published): FP32 67 TFLOP/s, TF32 tensor 494.7 TFLOP/s dense, HBM3 3.35 TB/s. "
          f"'+floor' adds an ASSUMED {args.launch_floor_us} us per launch; 'graph' adds that floor for "
          f"the 7 host calls of a graph-replayed step plus an ASSUMED {args.graph_node_us} us per graph "
          "node. A roofline is a lower bound "
          "on time: small GEMMs and 64-row kernels (64 blocks on 132 SMs) do not reach the peaks.\n")
    for shape_name, m in models.items():
        s, st, ev = m["shape"], m["train_step"], m["eval_batch"]
        print(f"### {shape_name}: hidden {s['H']}, batch {s['B']}, n_sample {s['n_sample']}, "
              f"{s['n_items']} items, dropout_p_hidden {s['dropout_p_hidden']}, "
              f"dropout_p_embed {s['dropout_p_embed']} (MODEL)\n")
        print("| op (training step) | FLOPs | bytes | bound | model us (FP32) | model us (TF32 GEMM) |")
        print("|---|---|---|---|---|---|")
        for op in st["ops"]:
            print(f"| {op['op']} | {op['flops']:.3g} | {op['bytes']:.3g} | {op['bound']} | "
                  f"{op['time_fp32_us']:.2f} | {op['time_tf32_us']:.2f} |")
        print(f"\nTraining step (MODEL): {st['time_fp32_us']:.1f} us FP32 -> {st['events_per_s_fp32']:,.0f} events/s; "
              f"TF32 GEMMs {st['time_tf32_us']:.1f} us -> {st['events_per_s_tf32']:,.0f} events/s; "
              f"+floor ({st['launches']} launches) {st['time_with_launch_floor_us']:.1f} us -> "
              f"{st['events_per_s_with_launch_floor']:,.0f} events/s; graph ({st['graph_host_calls']} "
              f"host calls, {st['graph_nodes']} nodes) {st['time_with_graph_us']:.1f} us -> "
              f"{st['events_per_s_with_graph']:,.0f} events/s.")
        print(f"Evaluation batch of {s['eval_batch']} (MODEL): {ev['time_fp32_us']:.1f} us FP32 -> "
              f"{ev['events_per_s_fp32']:,.0f} predictions/s; +floor {ev['time_with_launch_floor_us']:.1f} us -> "
              f"{ev['events_per_s_with_launch_floor']:,.0f} predictions/s (host transfer of scores "
              f"excluded: the device-side rank is used).\n")
    result = dict(kind="static model, not a measurement", date=datetime.datetime.utcnow().isoformat() + "Z",
                  machine=platform.node(), nvcc=version.strip().splitlines()[-1],
                  peaks=dict(fp32=PEAK_FP32, tf32=PEAK_TF32, hbm_bw=HBM_BW, source="NVIDIA H100 SXM published"),
                  launch_floor_us_assumed=args.launch_floor_us,
                  graph_node_us_assumed=args.graph_node_us, sm90_limits=SM90, kernels=kernels,
                  ptx_problems=problems, models=models)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    logger.info("wrote %s", out)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

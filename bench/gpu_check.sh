#!/usr/bin/env bash
# Everything checkable about the CUDA backend, in one call:
#   1. static analysis (nvcc -ptx/-cubin for sm_90, registers/spills/occupancy, roofline MODEL)
#   2. the kernels, the training step, SessionGRU(device='cuda') and FeatureSessionGRU(device=
#      'cuda') through the CPU emulator (pytest -m cuda_emulated: tests/test_cuda_emulated.py,
#      tests/test_cuda_trainer.py, tests/test_cuda_model.py, tests/test_cuda_graphs.py,
#      tests/test_feature_cuda.py, tests/test_user_cuda.py (the user-level GRU),
#      tests/test_output_features_cuda.py, tests/test_context_cuda.py (the context-aware GRU),
#      tests/test_emulator_modes.py; the emulator's race detector,
#      barrier check, shuffled blocks, poisoned and guarded buffers on)
#   3. on a machine with an NVIDIA GPU and CuPy: the GPU parity tests (pytest -m cuda: kernels,
#      training step, SessionGRU and FeatureSessionGRU device='cuda' fits/evaluation against the
#      CPU path), the
#      end-to-end model check on the bundled sample (bench/cuda_model_check.py: SessionGRU
#      device='cuda' vs 'cpu', Recall@20/MRR@20, training events/s, evaluation predictions/s),
#      the user-level GRU's device='cuda' vs 'cpu' fits (bench/user_cuda_check.py)
#      and the GPU benchmark (bench/cuda_bench.py: events/s, FLOP/s and bytes/s vs measured
#      ceilings, PyTorch reference step when torch is installed)
# Whatever cannot run here is reported as SKIPPED with the reason. Exit status: 0 when every
# part that ran passed.
set -u
cd "$(dirname "$0")/.."
status=0
skipped=()

echo "== 1/3 static analysis (nvcc, sm_90)"
if command -v nvcc >/dev/null 2>&1; then
    python bench/cuda_static.py || status=1
else
    skipped+=("static analysis: nvcc not found (install the CUDA toolkit)")
fi

echo "== 2/3 CUDA kernels through the CPU emulator"
if command -v "${CXX:-g++}" >/dev/null 2>&1; then
    python -m pytest -q -m cuda_emulated tests/test_cuda_emulated.py tests/test_cuda_trainer.py \
        tests/test_cuda_model.py tests/test_cuda_graphs.py tests/test_feature_cuda.py \
        tests/test_user_cuda.py tests/test_output_features_cuda.py tests/test_context_cuda.py \
        tests/test_emulator_modes.py || status=1
else
    skipped+=("emulated kernel tests: no C++ compiler (${CXX:-g++})")
fi

echo "== 3/3 real GPU"
reason=$(python - <<'PY'
try:
    import cupy
except ImportError:
    print("CuPy is not installed (pip install cupy-cuda12x)")
else:
    try:
        n = cupy.cuda.runtime.getDeviceCount()
        print("" if n > 0 else "CuPy sees no CUDA device")
    except Exception as e:  # no driver
        print(f"CuPy cannot reach a CUDA device ({type(e).__name__}: {e})")
PY
)
if [ -z "$reason" ]; then
    python -m pytest -q -m cuda tests/test_cuda_gpu.py tests/test_feature_cuda_gpu.py \
        tests/test_output_features_cuda_gpu.py tests/test_context_cuda_gpu.py \
        tests/test_emulator_modes.py || status=1  # the last: CupyDevice(guards=True) overrun
    python bench/cuda_model_check.py || status=1
    python bench/cuda_model_check.py --context full --epochs 1 || status=1
    python bench/user_cuda_check.py || status=1
    python bench/cuda_bench.py || status=1
else
    skipped+=("GPU parity tests (pytest -m cuda, incl. SessionGRU(device='cuda') fits), SessionGRU device='cuda' vs 'cpu' on the sample (bench/cuda_model_check.py) and GPU benchmarks (bench/cuda_bench.py): $reason")
fi

echo
if [ ${#skipped[@]} -gt 0 ]; then
    for s in "${skipped[@]}"; do echo "SKIPPED: $s"; done
fi
if [ $status -eq 0 ]; then echo "gpu_check: every part that ran passed"; else echo "gpu_check: FAILURES above"; fi
exit $status

#!/usr/bin/env bash
# The prepared GPU check, for a GPU machine with or without TensorRT, in under 8 minutes:
#   1. the environment (GPU, driver, CUDA, PyTorch, TensorRT if any) and the GPU facts and cache key
#      `compositor engines` would use there (the CUDA driver query of compositor/export/engine_cache.py)
#      -> $OUT/gpu-environment.json, written first, whatever else fails;
#   2. benchmarks/gpu.sh: eager FP32 vs FP16 autocast vs torch.compile for each network and the
#      chain (and TensorRT engines when TensorRT is there), its JSON rewritten after every row, so a
#      timeout keeps the finished rows -> $OUT/gpu.json, $OUT/nvidia-smi.txt.
#
#   benchmarks/gpu-check.sh                        # -> benchmarks/results/
#   OUT=/tmp/check benchmarks/gpu-check.sh --budget-s 360
# Extra arguments go to benchmarks/gpu.sh (python3 -m compositor bench-gpu --help).
# The commands for a GPU host with NVIDIA's Triton 24.10 container (TensorRT, the engines, serving,
# perf_analyzer) are in the README's GPU section.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
python="${PYTHON:-python3}"
out_dir="${OUT:-benchmarks/results}"
mkdir -p "$out_dir"
PYTHONPATH="$PWD" "$python" -m compositor.bench.gpu_environment --out "$out_dir/gpu-environment.json" >/dev/null \
  || echo "benchmarks/gpu-check.sh: the environment record failed (see above); going on" >&2
OUT="$out_dir" exec benchmarks/gpu.sh "$@"

#!/usr/bin/env bash
# The GPU benchmark: eager FP32 vs eager FP16 (autocast) vs torch.compile on CUDA, each network alone
# and the network chain, 512x512, batches 1 and 8; TensorRT engines too when TensorRT is installed
# (otherwise recorded as skipped, with the reason). One JSON file; under 8 minutes on one H100.
#
# Needs python3 with torch (a CUDA build), numpy and safetensors (the trained weights in weights/ are
# safetensors files); this script checks them first and names what is missing. The tensorrt mode
# also needs TensorRT >= 10, polygraphy, onnx, onnxruntime, onnxscript, scikit-image and pillow (it
# runs the export's checks); without them it is recorded as skipped, with the reason. Nothing is
# downloaded or installed: the package runs from this checkout (PYTHONPATH), so copying the
# repository is enough.
#
#   benchmarks/gpu.sh                                   # -> benchmarks/results/gpu.json
#   OUT=/tmp/results benchmarks/gpu.sh --batches 1,4,8  # extra arguments: python3 -m compositor bench-gpu --help
#   PYTHON=.venv/bin/python OUT=/tmp/g benchmarks/gpu.sh --device cpu --resolution 64 --batches 1 --iterations 2  # dry run
#
# With the project's device tool, which copies this working tree to the GPU machine and brings back
# what the command writes under $OUT: run `benchmarks/gpu.sh` with a timeout of about 540 s. Then
# commit $OUT/gpu.json as benchmarks/results/gpu-<gpu-name>.json (e.g. gpu-h100.json) and
# $OUT/nvidia-smi.txt as benchmarks/results/nvidia-smi-<gpu-name>.txt.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
python="${PYTHON:-python3}"

# Exit status 2 (as for bad options) when a required package is missing, before anything runs.
if ! missing="$("$python" - <<'PY'
import importlib.util
required = {"torch": "torch (a CUDA build)", "numpy": "numpy", "safetensors": "safetensors"}
missing = [package for module, package in required.items() if importlib.util.find_spec(module) is None]
print(", ".join(missing))
raise SystemExit(1 if missing else 0)
PY
)"; then
  echo "benchmarks/gpu.sh: $python lacks $missing; install what is missing (e.g. $python -m pip install safetensors) and run again" >&2
  exit 2
fi

out_dir="${OUT:-benchmarks/results}"
mkdir -p "$out_dir"
if command -v nvidia-smi >/dev/null 2>&1; then
  # The driver, clocks and other processes on the GPU at the time of the run, next to the results.
  nvidia-smi >"$out_dir/nvidia-smi.txt" 2>&1 || echo "nvidia-smi failed (see $out_dir/nvidia-smi.txt)" >&2
fi
PYTHONPATH="$PWD" exec "$python" -m compositor bench-gpu --out "$out_dir/gpu.json" "$@"

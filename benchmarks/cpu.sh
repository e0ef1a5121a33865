#!/usr/bin/env bash
# The CPU benchmark behind the README's performance table: eager PyTorch vs in-process ONNX Runtime
# vs the Triton ensemble (python flavour), full chain at concurrency 1,2,4,8 and each network alone,
# 512x512, batch 1. Run it on a quiet machine (nothing else busy); about 10-15 minutes on 2 cores.
# Writes benchmarks/results/cpu.{json,md,png} and regenerates the README's performance section.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
compositor bench --json benchmarks/results/cpu.json --markdown benchmarks/results/cpu.md \
  --plot benchmarks/results/cpu.png --readme README.md "$@"

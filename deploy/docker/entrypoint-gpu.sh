#!/usr/bin/env bash
# GPU image entry point: engines for this GPU (built once per GPU model and TensorRT version, kept
# in the cache volume), the tensorrt repository generated from them, then the image's own Triton
# (/opt/tritonserver) run by `compositor serve --triton-root`, so the container gets what
# `compositor serve` gives everywhere: the same tritonserver flags (every model loaded at start and
# no model control, strict readiness, exit on a model error, configs never auto-completed, the
# shared-memory/trace/logging APIs locked behind a secret shown to no one), a watch on the model
# processes (Triton 2.51 keeps answering ready after one died: serve stops it and exits 2, so the
# container restarts), Triton's log on stdout (--print-log) and a clean stop on SIGTERM.
# Extra arguments go to `compositor serve` (e.g. --triton-arg=--log-verbose=1).
set -euo pipefail

export_dir=${COMPOSITOR_EXPORT:-/opt/compositor/export}
cache=${COMPOSITOR_ENGINE_CACHE:-/var/cache/compositor/engines}
repository=${COMPOSITOR_REPOSITORY:-/tmp/compositor/model_repository}
instances=${COMPOSITOR_INSTANCES:-1}
# preprocess/postprocess instances (CPU): empty = half the cores (compositor repository's default for
# the GPU flavours), so the CPU stages keep the GPU's batcher fed.
stage_instances=${COMPOSITOR_STAGE_INSTANCES:-}
# Triton's CUDA memory pool holds the tensors handed between the engines of the ensemble; its
# default (64 MB) overflows at batch 8 of the widest bucket (each 3-channel FP32 tensor of 8x512x896
# is 44 MB), and then every hand-off goes through host memory. The pinned pool stages the copies to
# and from the CPU stages.
cuda_pool=${COMPOSITOR_CUDA_MEMORY_POOL_BYTES:-1073741824}
pinned_pool=${COMPOSITOR_PINNED_MEMORY_POOL_BYTES:-536870912}

# The whole engine build log (Polygraphy prints TensorRT's parser and builder messages to stdout)
# goes to stderr, where `docker logs` / `kubectl logs` show it, and into the cache folder; the
# folder of ready engines comes back through --path-file. A failure (exit 2, or 3 without a GPU or
# TensorRT) ends the container (set -o pipefail keeps its status through tee).
mkdir -p "$cache" /tmp/compositor
rm -f /tmp/compositor/engines.path  # a container restarted in the same pod keeps /tmp
build_log="$cache/engines-build-$(date -u +%Y%m%dT%H%M%SZ).log"
compositor engines --onnx "$export_dir" --cache "$cache" --path-file /tmp/compositor/engines.path 2>&1 \
  | tee -a "$build_log" >&2
engines=$(cat /tmp/compositor/engines.path)
compositor repository --onnx "$engines" --flavor tensorrt --instances "$instances" \
  ${stage_instances:+--stage-instances "$stage_instances"} --out "$repository"

exec compositor serve \
  --host 0.0.0.0 \
  --triton-root "${COMPOSITOR_TRITON_ROOT:-/opt/tritonserver}" \
  --repository "$repository" \
  --http-port "${COMPOSITOR_HTTP_PORT:-8000}" \
  --grpc-port "${COMPOSITOR_GRPC_PORT:-8001}" \
  --metrics-port "${COMPOSITOR_METRICS_PORT:-8002}" \
  --log-file "${COMPOSITOR_LOG_FILE:-/tmp/compositor-triton.log}" --print-log \
  --triton-arg="--cuda-memory-pool-byte-size=0:$cuda_pool" \
  --triton-arg="--pinned-memory-pool-byte-size=$pinned_pool" \
  "$@"

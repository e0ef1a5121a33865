#!/usr/bin/env bash
# GPU image entry point: engines for this GPU (built once per GPU model and TensorRT version, kept
# in the cache volume), the tensorrt repository generated from them, then tritonserver.
#
# tritonserver gets the flags `compositor serve` gives it (compositor/serving/server.py,
# TritonServer._argv), checked against it by tests/test_deploy_docker.py:
#   --model-control-mode=none           every model loaded at start, no load/unload over the API
#   --strict-readiness=true             /v2/health/ready only once all models are ready
#   --exit-on-error=true                a model that fails to load stops the server (and the pod)
#   --disable-auto-complete-config      the generated configs are complete; never guessed
#   --http-restricted-api / --grpc-restricted-protocol: shared-memory, trace and logging answer
#     only requests with a header whose value is a random secret made here and shown to no one.
# Triton's own defaults bind all interfaces, as a container should. Extra arguments go to tritonserver.
set -euo pipefail

export_dir=${COMPOSITOR_EXPORT:-/opt/compositor/export}
cache=${COMPOSITOR_ENGINE_CACHE:-/var/cache/compositor/engines}
repository=${COMPOSITOR_REPOSITORY:-/tmp/compositor/model_repository}
instances=${COMPOSITOR_INSTANCES:-1}

# The last line `compositor engines` prints is the cache folder; a failure (exit 2, or 3 without a
# GPU or TensorRT) ends the container with the reason on stderr.
engines=$(compositor engines --onnx "$export_dir" --cache "$cache" | tail -n 1)
compositor repository --onnx "$engines" --flavor tensorrt --instances "$instances" --out "$repository"

secret=$(python3 -c 'import secrets; print(secrets.token_hex(32))')
restricted="shared-memory,trace,logging:compositor-admin-key=${secret}"

exec tritonserver \
  --model-repository="$repository" \
  --http-port="${COMPOSITOR_HTTP_PORT:-8000}" \
  --grpc-port="${COMPOSITOR_GRPC_PORT:-8001}" \
  --metrics-port="${COMPOSITOR_METRICS_PORT:-8002}" \
  --model-control-mode=none \
  --strict-readiness=true \
  --exit-on-error=true \
  --disable-auto-complete-config \
  --http-restricted-api="$restricted" \
  --grpc-restricted-protocol="$restricted" \
  "$@"

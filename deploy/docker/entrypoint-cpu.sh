#!/usr/bin/env bash
# CPU image entry point: serve the baked-in model repository (python flavour) on all interfaces.
# `compositor serve` applies the server's hardening (restricted shared-memory/trace/logging APIs,
# strict readiness, no model control, exit on a model error) and stops Triton cleanly on SIGTERM;
# `exec` makes it PID 1's process so the signal from `docker stop` / Kubernetes reaches it.
# Extra arguments go to `compositor serve` (e.g. --startup-timeout-s 300).
set -euo pipefail

exec compositor serve \
  --host 0.0.0.0 \
  --repository "${COMPOSITOR_REPOSITORY:-/opt/compositor/model_repository}" \
  --http-port "${COMPOSITOR_HTTP_PORT:-8000}" \
  --grpc-port "${COMPOSITOR_GRPC_PORT:-8001}" \
  --metrics-port "${COMPOSITOR_METRICS_PORT:-8002}" \
  --log-file "${COMPOSITOR_LOG_FILE:-/tmp/compositor-triton.log}" --print-log \
  "$@"

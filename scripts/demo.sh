#!/usr/bin/env bash
# The demo, end to end on a fresh machine (no GPU needed):
#   set-up -> export ONNX -> generate the Triton model repository (python flavour) -> start the
#   Triton server (127.0.0.1) -> composite scikit-image's astronaut onto a rocket launch pad through
#   the gRPC client -> outputs + comparison image -> stop the server.
# Weights: the trained blending and harmonization nets in weights/. MODNet's published checkpoint is
# yours to bring (MODNET_CHECKPOINT=path/modnet_photographic_portrait_matting.ckpt): with it the demo
# runs the full `composite` ensemble; without it the matte comes from a classical segmentation of a
# box around the astronaut (no learned weights) and goes through `composite_with_alpha`.
# Ports: COMPOSITOR_HTTP_PORT / COMPOSITOR_GRPC_PORT / COMPOSITOR_METRICS_PORT (default 8000/8001/8002).
# Resolution: COMPOSITOR_RESOLUTION (default 512). Working folder: COMPOSITOR_WORKDIR (default artifacts).
set -euo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)

scripts/setup.sh
# The Triton Python-backend stub imports whatever numpy comes first on PATH: the venv's, here.
export PATH="$PWD/.venv/bin:$PATH"

resolution=${COMPOSITOR_RESOLUTION:-512}
http_port=${COMPOSITOR_HTTP_PORT:-8000}
grpc_port=${COMPOSITOR_GRPC_PORT:-8001}
metrics_port=${COMPOSITOR_METRICS_PORT:-8002}
workdir=${COMPOSITOR_WORKDIR:-artifacts}
work=$workdir/demo
mkdir -p "$work/inputs"

echo "== sample photos (shipped with scikit-image)"
python - "$work/inputs" <<'PY'
import sys
from pathlib import Path

import skimage.data

from compositor.imaging import write_image

folder = Path(sys.argv[1])
print(write_image(folder / "astronaut.png", skimage.data.astronaut()))
print(write_image(folder / "rocket.png", skimage.data.rocket()))
PY

if [ -n "${MODNET_CHECKPOINT:-}" ]; then
  echo "== matte: MODNet with the published checkpoint $MODNET_CHECKPOINT (full composite ensemble)"
  alpha_args=()
else
  echo "== matte: MODNET_CHECKPOINT is not set, so MODNet has no weights; the matte comes from a classical"
  echo "   segmentation of a box around the astronaut (no learned weights), sent through composite_with_alpha"
  python - "$work/inputs" <<'PY'
import sys
from pathlib import Path

import skimage.data

from compositor.classical_matte import ASTRONAUT_BOX, box_matte
from compositor.imaging import write_image

print(write_image(Path(sys.argv[1]) / "astronaut_matte.png", box_matte(skimage.data.astronaut(), ASTRONAUT_BOX)))
PY
  alpha_args=(--alpha "$work/inputs/astronaut_matte.png")
fi

echo "== export (ONNX FP32 + FP16, parity checked)"
compositor export --out "$workdir/export" --resolution "$resolution"

echo "== model repository (python flavour)"
# The committed model_repository/ is the 512x512 python flavour; other resolutions get their own.
if [ "$resolution" = 512 ]; then repository=model_repository; else repository=$work/model_repository; fi
compositor repository --onnx "$workdir/export" --out "$repository" --flavor python --resolution "$resolution"

echo "== Triton server on 127.0.0.1 (gRPC $grpc_port, HTTP $http_port)"
compositor serve --repository "$repository" --grpc-port "$grpc_port" --http-port "$http_port" \
  --metrics-port "$metrics_port" --log-file "$work/triton.log" &
server=$!
trap 'kill -INT $server 2>/dev/null; wait $server 2>/dev/null || true' EXIT
python - "$http_port" "$server" <<'PY'
import os, sys, time, urllib.request
port, pid = sys.argv[1], int(sys.argv[2])
deadline = time.time() + 300
while time.time() < deadline:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        sys.exit("the server exited before it was ready (see the messages above)")
    try:
        if urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2).status == 200:
            sys.exit(0)
    except OSError:
        pass
    time.sleep(0.5)
sys.exit("the server was not ready within 300 s")
PY

echo "== composite over gRPC"
compositor composite --url "127.0.0.1:$grpc_port" --source "$work/inputs/astronaut.png" \
  --background "$work/inputs/rocket.png" "${alpha_args[@]}" --out "$work/output"

echo "== ensemble latency through the gRPC client, concurrency 1 (warm server; full table: $work/latency.json)"
# The benchmark's table header and the one row it measured.
compositor bench --modes triton --url "127.0.0.1:$grpc_port" --resolution "$resolution" --no-networks \
  --concurrency 1 --quick --json "$work/latency.json" | grep -E '^\| (mode|triton) \||^\|---'

kill -INT $server; wait $server || true
trap - EXIT
echo "== done in $(( $(date +%s) - started )) s: open $work/output/comparison.png"

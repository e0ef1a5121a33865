#!/usr/bin/env bash
# Create .venv and install the pinned dependencies plus this package (editable).
# Idempotent: when requirements.lock and pyproject.toml are unchanged it returns in about a second.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=.venv
STAMP=$VENV/.setup-stamp
want=$(cat requirements.lock pyproject.toml | sha256sum | cut -d' ' -f1)

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && "$VENV/bin/python" -c "import compositor" 2>/dev/null; then
  echo "setup: .venv is up to date"
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
echo "setup: done ($VENV)"

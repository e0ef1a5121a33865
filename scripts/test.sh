#!/usr/bin/env bash
# Set up .venv (scripts/setup.sh) and run the whole test suite, Triton integration tests included.
# Extra arguments go to pytest, e.g. scripts/test.sh -k modnet -x
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# The Triton Python-backend stub imports whatever numpy it finds first: keep the venv first on PATH.
export PATH="$PWD/.venv/bin:$PATH"
exec .venv/bin/python -m pytest "$@"

#!/usr/bin/env bash
# Set up .venv (scripts/setup.sh) and run the whole test suite, Triton integration tests included
# (what CI and the README run; about 10 minutes on 2 cores).
#   scripts/test.sh --quick   the unit tier while working: no Triton server, no whole-network export,
#                             no command in a subprocess (pytest -m "not triton and not slow")
# Other arguments go to pytest, e.g. scripts/test.sh -k modnet -x, scripts/test.sh --quick -x
set -euo pipefail
cd "$(dirname "$0")/.."
tier=()
if [[ "${1:-}" == "--quick" ]]; then
  shift
  tier=(-m "not triton and not slow")
fi
scripts/setup.sh
# The Triton Python-backend stub imports whatever numpy it finds first: keep the venv first on PATH.
export PATH="$PWD/.venv/bin:$PATH"
exec .venv/bin/python -m pytest "${tier[@]}" "$@"

#!/usr/bin/env bash
# Install diffrep into a virtual environment: the active one if any, else ./.venv.
#   scripts/setup.sh          the package (what `diffrep` needs)
#   scripts/setup.sh --test   plus the test tools and the documentation tools (the docs are built by a test)
# PyTorch comes first: an environment that already has torch (a CUDA build, say) keeps it; otherwise
# torch==2.13.0 is installed (on the development machines this is a CPU build from local disk). The
# package itself asks only for a range, so it never replaces the torch you have.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${VIRTUAL_ENV:-}" ]; then
  [ -x .venv/bin/python ] || python3 -m venv .venv
  PY=.venv/bin/python
else
  PY="$VIRTUAL_ENV/bin/python"
fi
if ! "$PY" -c "import torch" 2>/dev/null; then
  "$PY" -m pip install -q "torch==${DIFFREP_TORCH_VERSION:-2.13.0}"
fi
extras=""
[ "${1:-}" = "--test" ] && extras="[test,docs]"
"$PY" -m pip install -q -e ".${extras}"
"$PY" -c "import torch, diffrep; print(f'diffrep {diffrep.__version__} installed (torch {torch.__version__})')"

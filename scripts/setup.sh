#!/usr/bin/env bash
# Creates .venv and installs the package with its test and training extras.
# torch is installed first and pinned: on a machine without CUDA, `pip install torch==2.13.0` takes the
# CPU build (never several GB of CUDA wheels); with torch already installed, nothing is replaced.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[dev,train]"
echo "mu2slam-hf installed in $(pwd)/.venv"

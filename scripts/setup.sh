#!/usr/bin/env bash
# Set up a virtual environment in .venv with rope_behavior and its dev tools.
#
#   bash scripts/setup.sh                 # CPU machine: installs the CPU build of PyTorch
#   TORCH_SPEC="torch" bash scripts/setup.sh   # GPU machine: let pip pick the CUDA build
#   TORCH_SPEC=skip bash scripts/setup.sh      # keep a PyTorch you installed yourself
#
# PyTorch is installed first, so the later `pip install -e .[dev]` finds the requirement
# satisfied and does not pull a multi-GB CUDA build onto a CPU-only machine.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
"$PY" -m venv "$VENV"
# shellcheck disable=SC1091
. "$VENV/bin/activate"
python -m pip install -q --upgrade pip
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
if [ "$TORCH_SPEC" != "skip" ]; then
  python -m pip install -q $TORCH_SPEC
fi
# The main environment is TransformerLens 4.x (the Bridge); scripts/ci_matrix.sh builds the
# 2.x / 3.9 / SAE-Lens hosts (HookedTransformer) in environments of their own.
TL_SPEC=${TL_SPEC:-transformer-lens>=4.3,<5}
python -m pip install -q "$TL_SPEC" -e ".[dev,ray]"
python -c "import torch, transformer_lens, rope_behavior; print('rope_behavior', rope_behavior.__version__, '| torch', torch.__version__, '| transformer_lens', transformer_lens.__version__ if hasattr(transformer_lens, '__version__') else '')"

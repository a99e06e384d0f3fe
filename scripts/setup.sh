#!/usr/bin/env bash
# Create .venv (if absent) and install the requirements and this package into it.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c "import torch, torchvision, yaml, tqdm, matplotlib, ifm" 2>/dev/null; then
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  "$VENV/bin/python" -m pip install --quiet -r requirements.txt
  "$VENV/bin/python" -m pip install --quiet --no-deps -e .
fi
# torch and torchvision must be builds for each other (a CPU torch beside a CUDA torchvision fails only later,
# with "operator torchvision::nms does not exist"): check a torchvision operator now
if ! problem=$("$VENV/bin/python" -c "import torch, torchvision; torchvision.ops.nms(torch.zeros(1, 4), torch.zeros(1), 0.5)" 2>&1); then
  echo "error: torchvision does not work with this torch ($(echo "$problem" | tail -n 1)); reinstall both from one" \
       "index, e.g. $VENV/bin/python -m pip install --force-reinstall torch torchvision" >&2
  exit 1
fi

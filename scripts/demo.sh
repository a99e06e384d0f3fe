#!/usr/bin/env bash
# Command 1 of the README: set up .venv if needed, then train a small VGG11 on CIFAR-10, run IFM over
# a beta grid, print the table and write demo_output/demo.png. Arguments go to scripts/demo.py.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python scripts/demo.py "$@"

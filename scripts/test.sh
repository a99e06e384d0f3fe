#!/usr/bin/env bash
# The README's test command: the whole test suite inside the project's virtual environment.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "no virtual environment at $VENV: run 'bash scripts/demo.sh' (or 'bash scripts/setup.sh') first" >&2
  exit 2
fi
# one worker per core (pytest-xdist; IFM_TEST_WORKERS=0 runs in this process, as plain pytest does); a file's
# tests stay on one worker, in their order (the documented commands of tests/test_docs.py build on each other)
exec "$VENV/bin/python" -m pytest -n "${IFM_TEST_WORKERS:-auto}" --dist loadfile "$@"

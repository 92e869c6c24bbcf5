#!/usr/bin/env bash
# The Python that the prepare_*.sh wrappers use: $PYTHON if set, else the project's .venv, else `python3`.
# The project must be importable (it is, once `make setup` installed it editable), so we also put its root on
# PYTHONPATH for a plain `python3` with the dependencies installed.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x "$ROOT/.venv/bin/python" ]; then PY="$ROOT/.venv/bin/python"; else PY=python3; fi
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" "$@"

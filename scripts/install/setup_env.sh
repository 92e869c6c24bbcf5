#!/usr/bin/env bash
# Create .venv with torch 2.13.0 (CPU), fairseq 0.12.2 patched for Python 3.11 / torch >= 2.6, and this project.
# Idempotent: re-running reuses the venv and only installs what is missing. See docs/contributing.md, "Install".
set -euo pipefail
cd "$(dirname "$0")/../.."

PYTHON=${PYTHON:-python3.11}
VENV=${VENV:-.venv}
command -v "$PYTHON" >/dev/null || PYTHON=python3
"$PYTHON" -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version' \
  || { echo "setup: Python 3.11 is required (found $("$PYTHON" --version 2>&1)); set PYTHON=..." >&2; exit 1; }

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
# pip's own warnings about missing local index folders are noise on this machine; real errors still fail the step.
filter() { grep -v "is ignored: it is neither a file nor a directory" || true; }

# torch first and alone, so nothing later can pull a CUDA build; the constraints file pins it in every call.
"${PIP[@]}" install -c constraints.txt torch==2.13.0 2>&1 | filter
"${PIP[@]}" install -c constraints.txt -r requirements.txt 2>&1 | filter
# fairseq's sdist builds its Cython/libbleu extensions in an isolated build env (keep isolation on: without it
# the build fails on a file missing from the sdist). --no-deps: its pins cannot be honoured on Python 3.11.
"$VENV/bin/python" -c 'import fairseq.version' 2>/dev/null \
  || "${PIP[@]}" install -c constraints.txt --no-deps fairseq==0.12.2 2>&1 | filter
"$VENV/bin/python" -m sage_toolkit.install.patch_fairseq
# The project itself (fairseq_plugins, data_prep, sage_toolkit), editable so the checkout is what runs.
"${PIP[@]}" install --no-deps --no-build-isolation -e . 2>&1 | filter
"$VENV/bin/python" -m sage_toolkit.install.verify

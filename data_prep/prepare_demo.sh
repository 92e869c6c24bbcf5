#!/usr/bin/env bash
# Thin wrapper over `python -m data_prep.demo` (see its --help and docs/data.md).
exec "$(dirname "$0")/_python.sh" -m data_prep.demo "$@"

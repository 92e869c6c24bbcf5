#!/usr/bin/env bash
# Multi30k En-De -> fairseq data-bin. Thin wrapper over `python -m data_prep.multi30k`; options: --help.
# Example (no network): data_prep/prepare_multi30k.sh --local-dir ../shared/data/multi30k --segmentation spm
exec "$(dirname "$0")/_python.sh" -m data_prep.multi30k "$@"

#!/usr/bin/env bash
# Our BPE step vs the real IWSLT'14 files: `python -m data_prep.check_iwslt14_bpe [--shared-dir DIR]`.
exec "$(dirname "$0")/_python.sh" -m data_prep.check_iwslt14_bpe "$@"

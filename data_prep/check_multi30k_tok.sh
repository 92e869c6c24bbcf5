#!/usr/bin/env bash
# Our Multi30k tokenisation vs the dataset's tok/ files: `python -m data_prep.check_multi30k_tok [--shared-dir DIR]`.
exec "$(dirname "$0")/_python.sh" -m data_prep.check_multi30k_tok "$@"

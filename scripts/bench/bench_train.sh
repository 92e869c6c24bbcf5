#!/usr/bin/env bash
# fairseq-train words/s with --optimizer adam_sage versus adam: same model, data and seed; runs interleaved (the order
# alternates every repetition); prints each run's median words/s and the ratio adam_sage / adam.
#
#   bash scripts/bench/bench_train.sh            # 3 repetitions of 40 updates each, 1 thread
#   REPS=5 UPDATES=60 THREADS=2 bash scripts/bench/bench_train.sh
#
# Model: transformer 2+2 layers, d256, ffn 1024, 4 heads (about 5M parameters) on a generated corpus (4000-word
# vocabulary, 12k sentence pairs) in fp32 on the CPU, max 1024 tokens per batch, THREADS torch threads (default 1:
# on a shared machine a busy core stalls every multi-threaded op; one thread per run measures more steadily).
# Words/s is fairseq's own `wps` of the train_inner log lines (target tokens per second, over each interval of 10
# updates); the first interval (start-up) is dropped and the median of the rest is the run's figure.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
REPS=${REPS:-3}
UPDATES=${UPDATES:-40}
export OMP_NUM_THREADS=${THREADS:-1} MKL_NUM_THREADS=${THREADS:-1}
WORK=${WORK:-/tmp/fairseq_sage_bench_train}
mkdir -p "$WORK"

if [ ! -f "$WORK/data-bin/dict.src.txt" ]; then
  "$PY" - "$WORK/raw" <<'EOF'
import random, sys
from pathlib import Path
raw = Path(sys.argv[1]); raw.mkdir(parents=True, exist_ok=True)
rng = random.Random(0)
for split, n in (("train", 12000), ("valid", 200)):
    src, tgt = [], []
    for _ in range(n):
        ids = [min(int(rng.paretovariate(1.1)) - 1, 3999) for _ in range(rng.randint(5, 30))]
        src.append(" ".join(f"a{i}" for i in ids))
        tgt.append(" ".join(f"b{(i * 7) % 4000}" for i in reversed(ids)))
    (raw / f"{split}.src").write_text("\n".join(src) + "\n")
    (raw / f"{split}.tgt").write_text("\n".join(tgt) + "\n")
EOF
  "$PY" -m fairseq_cli.preprocess --source-lang src --target-lang tgt --trainpref "$WORK/raw/train" \
    --validpref "$WORK/raw/valid" --destdir "$WORK/data-bin" --workers 2 > "$WORK/preprocess.log" 2>&1
fi

run() {  # $1 = optimizer, $2 = repetition
  local log="$WORK/train_$1_$2.log"
  "$PY" -m fairseq_cli.train "$WORK/data-bin" --user-dir fairseq_plugins --task translation \
    --arch transformer --encoder-layers 2 --decoder-layers 2 --encoder-embed-dim 256 --decoder-embed-dim 256 \
    --encoder-ffn-embed-dim 1024 --decoder-ffn-embed-dim 1024 --encoder-attention-heads 4 \
    --decoder-attention-heads 4 --share-decoder-input-output-embed \
    --optimizer "$1" --adam-betas '(0.9, 0.98)' --weight-decay 0.0001 --clip-norm 0.0 \
    --lr 5e-4 --lr-scheduler inverse_sqrt --warmup-updates 100 \
    --criterion label_smoothed_cross_entropy --label-smoothing 0.1 --dropout 0.1 \
    --max-tokens 1024 --max-update "$UPDATES" --seed 1 --cpu --num-workers 0 \
    --save-dir "$WORK/ckpt_$1" --no-save --disable-validation \
    --no-progress-bar --log-format json --log-interval 10 > "$log" 2>&1
  "$PY" - "$log" <<'EOF'
import json, statistics, sys
wps = []
for line in open(sys.argv[1]):
    if "| train_inner |" in line:
        wps.append(float(json.loads(line.split("| train_inner | ", 1)[1])["wps"]))
print(f"{statistics.median(wps[1:]):.0f}")
EOF
}

declare -a ADAM SAGE
echo "rep  adam_wps  adam_sage_wps  ratio"
for rep in $(seq 1 "$REPS"); do
  if (( rep % 2 )); then a=$(run adam "$rep"); s=$(run adam_sage "$rep"); else s=$(run adam_sage "$rep"); a=$(run adam "$rep"); fi
  ADAM+=("$a"); SAGE+=("$s")
  echo "$rep  $a  $s  $(awk -v s="$s" -v a="$a" 'BEGIN { printf "%.3f", s / a }')"
done
"$PY" - "${ADAM[*]}" "${SAGE[*]}" <<'EOF'
import statistics, sys
adam = [float(x) for x in sys.argv[1].split()]
sage = [float(x) for x in sys.argv[2].split()]
ratios = [s / a for a, s in zip(adam, sage)]
print(f"median words/s: adam {statistics.median(adam):.0f}, adam_sage {statistics.median(sage):.0f}")
print(f"ratio adam_sage / adam: median of per-repetition ratios {statistics.median(ratios):.3f} "
      f"(min {min(ratios):.3f}, max {max(ratios):.3f}); ratio of medians "
      f"{statistics.median(sage) / statistics.median(adam):.3f}; target >= 0.97")
EOF

#!/usr/bin/env bash
# Pretrain (phase 1 + phase 2), then fine-tune the result on SQuAD v1.1 and on a GLUE task.
#
#   ./scripts/pretrain_and_finetune.sh base|large [GLUE task, default mrpc]
#
# Paths as in pretrain.sh (DATA_128, DATA_384, VOCAB, SAVE_PATH), fine_tune_squad.sh (SQUAD_DIR)
# and fine_tune_glue.sh (GLUE_DIR).
set -euo pipefail
cd "$(dirname "$0")/.."

size=${1:-}
if [[ ! "$size" =~ ^(base|large)$ ]]; then
  echo "usage: $0 base|large [GLUE task]" >&2
  exit 64
fi
task=${2:-mrpc}
SAVE_PATH=${SAVE_PATH:-checkpoint}
VOCAB=${VOCAB:-data/vocab.txt}
export SAVE_PATH VOCAB

./scripts/pretrain.sh "$size"
phase2_run=$(ls -td "$SAVE_PATH"/phase2/pretraining_* | head -n 1)
echo "fine-tuning from $phase2_run"
INIT_CHECKPOINT=$phase2_run ./scripts/fine_tune_squad.sh "$size" v1
INIT_CHECKPOINT=$phase2_run ./scripts/fine_tune_glue.sh "$size" "$task"

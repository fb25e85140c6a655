#!/usr/bin/env bash
# Fine-tune GroupBERT on one GLUE task and evaluate on its dev set.
#
#   ./scripts/fine_tune_GroupBERT_glue.sh base|large TASK [extra run_classifier.py flags]
#
# STS-B uses the regression config (configs/groupbert/glue_<size>_regression.json), every other task
# configs/groupbert/glue_<size>.json. INIT_CHECKPOINT: a GroupBERT checkpoint of that size (ours, or
# converted with `convert_ckpt.py research2apps`); GLUE_DIR: the folder of the task folders.
set -euo pipefail
cd "$(dirname "$0")/.."

size=${1:-}
task=${2:-}
if [ -z "$task" ] || [[ ! "$size" =~ ^(base|large)$ ]]; then
  echo "usage: $0 base|large TASK [run_classifier.py flags]" >&2
  exit 64
fi
shift 2
: "${INIT_CHECKPOINT:?set INIT_CHECKPOINT to the pretrained GroupBERT checkpoint}"
GLUE_DIR=${GLUE_DIR:-data/glue}
config="configs/groupbert/glue_${size}.json"
[ "$task" = stsb ] && config="configs/groupbert/glue_${size}_regression.json"
vocab=()
[ -n "${VOCAB:-}" ] && vocab=(--vocab-file "$VOCAB")

python3 run_classifier.py --config "$config" --task-name "$task" --data-dir "$GLUE_DIR" \
  --init-checkpoint "$INIT_CHECKPOINT" "${vocab[@]+"${vocab[@]}"}" --do-training --do-evaluation "$@"

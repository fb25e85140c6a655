#!/usr/bin/env bash
# Fine-tune on one GLUE task and evaluate on its dev set (and predict its test set).
#
#   ./scripts/fine_tune_glue.sh base|large|tiny TASK [extra run_classifier.py flags]
#
# TASK: cola, sst2, mrpc, stsb, qqp, mnli, mnli-mm, qnli, rte, wnli (ax: predict with an MNLI
# model). GLUE_DIR is the folder of the task folders (CoLA, SST-2, MRPC, ...). INIT_CHECKPOINT is
# required for base/large; tiny trains a tiny model from scratch (a smoke test).
set -euo pipefail
cd "$(dirname "$0")/.."

size=${1:-}
task=${2:-}
if [ -z "$task" ] || [[ ! "$size" =~ ^(base|large|tiny)$ ]]; then
  echo "usage: $0 base|large|tiny TASK [run_classifier.py flags]" >&2
  exit 64
fi
shift 2
GLUE_DIR=${GLUE_DIR:-data/glue}
init=()
if [ "$size" != tiny ]; then
  : "${INIT_CHECKPOINT:?set INIT_CHECKPOINT to the pretrained checkpoint (folder or prefix)}"
  init=(--init-checkpoint "$INIT_CHECKPOINT")
elif [ -n "${INIT_CHECKPOINT:-}" ]; then
  init=(--init-checkpoint "$INIT_CHECKPOINT")
fi
vocab=()
[ -n "${VOCAB:-}" ] && vocab=(--vocab-file "$VOCAB")
phases=(--do-training --do-evaluation)
[ "$task" = ax ] && phases=(--do-predict)

python3 run_classifier.py --config "configs/glue_${size}.json" --task-name "$task" \
  --data-dir "$GLUE_DIR" "${init[@]+"${init[@]}"}" "${vocab[@]+"${vocab[@]}"}" "${phases[@]}" "$@"

#!/usr/bin/env bash
# Fine-tune on SQuAD, predict on the dev set and score it with the official metrics.
#
#   ./scripts/fine_tune_squad.sh base|large v1|v2 [extra run_squad.py flags]
#
# INIT_CHECKPOINT: a native, Google or Hugging Face BERT checkpoint of the matching size (its
# folder's vocab.txt is used unless VOCAB is set). SQUAD_DIR holds train-v1.1.json/dev-v1.1.json
# (v1) or train-v2.0.json/dev-v2.0.json (v2).
set -euo pipefail
cd "$(dirname "$0")/.."

size=${1:-}
version=${2:-}
case "$size/$version" in
  base/v1) config=configs/squad_base.json ;;
  large/v1) config=configs/squad_large.json ;;
  large/v2) config=configs/squad_large_V2.json ;;
  base/v2) config=configs/squad_base.json; extra=(--version-2-with-negative) ;;
  *)
    echo "usage: $0 base|large v1|v2 [run_squad.py flags]" >&2
    exit 64
    ;;
esac
shift 2
: "${INIT_CHECKPOINT:?set INIT_CHECKPOINT to the pretrained checkpoint (folder or prefix)}"
SQUAD_DIR=${SQUAD_DIR:-data/squad}
if [ "$version" = v1 ]; then
  files=(--train-file "$SQUAD_DIR/train-v1.1.json" --predict-file "$SQUAD_DIR/dev-v1.1.json")
else
  files=(--train-file "$SQUAD_DIR/train-v2.0.json" --predict-file "$SQUAD_DIR/dev-v2.0.json")
fi
vocab=()
[ -n "${VOCAB:-}" ] && vocab=(--vocab-file "$VOCAB")

python3 run_squad.py --config "$config" --init-checkpoint "$INIT_CHECKPOINT" "${files[@]}" \
  "${vocab[@]}" "${extra[@]+"${extra[@]}"}" --do-training --do-predict --do-evaluation "$@"

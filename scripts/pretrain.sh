#!/usr/bin/env bash
# BERT pretraining, phase 1 (seq 128) then phase 2 (seq 384) initialised from phase 1's last checkpoint.
#
#   ./scripts/pretrain.sh base|large|tiny [extra run_pretraining.py flags, given to both phases]
#
# Paths are the variables below (override them from the environment). RUNNER is the command that
# runs each phase's script (default python3; scripts/pretrain_distributed.sh sets a launcher). Data comes from
# scripts/create_wikipedia_dataset.sh; the configs hold the recipes (see README, "Pretraining").
# PHASE1_RUN is the run directory phase 2 starts from (default: the newest $SAVE_PATH/phase1 run;
# pretrain_distributed.sh --hosts, which only prints the commands, sets a placeholder).
set -euo pipefail
cd "$(dirname "$0")/.."

DATA_128=${DATA_128:-data/tf_wikipedia/tokenised_128_dup5_mask20/*.tfrecord}
DATA_384=${DATA_384:-data/tf_wikipedia/tokenised_384_dup5_mask56/*.tfrecord}
VOCAB=${VOCAB:-data/vocab.txt}
SAVE_PATH=${SAVE_PATH:-checkpoint}
read -r -a runner <<< "${RUNNER:-python3}"

size=${1:-}
case "$size" in
  base | large)
    phase1=(--config "configs/pretrain_${size}_128_phase1.json")
    phase2=(--config "configs/pretrain_${size}_384_phase2.json")
    ;;
  tiny)
    phase1=(--config configs/pretrain_tiny_128_lamb.json)
    phase2=(--config configs/pretrain_tiny_128_lamb.json --seq-length 384 --max-predictions-per-seq 56)
    ;;
  *)
    echo "usage: $0 base|large|tiny [run_pretraining.py flags]" >&2
    exit 64
    ;;
esac
shift

vocab=()
[ -f "$VOCAB" ] && vocab=(--vocab-file "$VOCAB")

echo "# phase 1"
"${runner[@]}" run_pretraining.py "${phase1[@]}" --train-file "$DATA_128" "${vocab[@]}" \
  --save-path "$SAVE_PATH/phase1" "$@"
phase1_run=${PHASE1_RUN:-$(ls -td "$SAVE_PATH"/phase1/pretraining_* | head -n 1)}
echo "# phase 2 starts from the last checkpoint of $phase1_run"
"${runner[@]}" run_pretraining.py "${phase2[@]}" --train-file "$DATA_384" "${vocab[@]}" \
  --init-checkpoint "$phase1_run" --save-path "$SAVE_PATH/phase2" "$@"

#!/usr/bin/env bash
# BERT pretraining on several workers: phase 1 then phase 2, as scripts/pretrain.sh, each phase run
# by every worker (MultiWorkerMirroredStrategy; README, "Several machines").
#
#   ./scripts/pretrain_distributed.sh --local N base|large|tiny [run_pretraining.py flags]
#       N workers on this machine (free localhost ports), output prefixed [worker K]
#   ./scripts/pretrain_distributed.sh --hosts host0,host1,... base|large|tiny [flags]
#       prints phase 1's command with its TF_CONFIG for each host (run one per host, from a shared
#       directory); phase 2 is the same with phase 2's config and --init-checkpoint PHASE1_RUN_DIR
set -euo pipefail
cd "$(dirname "$0")/.."

usage="usage: $0 --local N | --hosts HOST,HOST,... base|large|tiny [run_pretraining.py flags]"
mode=${1:-}
value=${2:-}
if [ -z "$value" ]; then
  echo "$usage" >&2
  exit 64
fi
shift 2
case "$mode" in
  --local)
    RUNNER="python3 scripts/launch_workers.py --local $value -- python3" exec ./scripts/pretrain.sh "$@"
    ;;
  --hosts)
    size=${1:-}
    case "$size" in
      base | large) config="configs/pretrain_${size}_128_phase1.json" ;;
      tiny) config=configs/pretrain_tiny_128_lamb.json ;;
      *)
        echo "$usage" >&2
        exit 64
        ;;
    esac
    shift
    exec python3 scripts/launch_workers.py --print-only "$value" -- python3 run_pretraining.py \
      --config "$config" --train-file "${DATA_128:-data/tf_wikipedia/tokenised_128_dup5_mask20/*.tfrecord}" \
      --save-path "${SAVE_PATH:-checkpoint}/phase1" "$@"
    ;;
  *)
    echo "$usage" >&2
    exit 64
    ;;
esac

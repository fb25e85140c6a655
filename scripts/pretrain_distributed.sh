#!/usr/bin/env bash
# BERT pretraining on several workers: phase 1 then phase 2, as scripts/pretrain.sh, each phase run
# by every worker (MultiWorkerMirroredStrategy; README, "Several machines").
#
#   ./scripts/pretrain_distributed.sh --local N base|large|tiny [run_pretraining.py flags]
#       N workers on this machine (free localhost ports), output prefixed [worker K]
#   ./scripts/pretrain_distributed.sh --hosts host0,host1,... base|large|tiny [flags]
#       prints each phase's command with its TF_CONFIG for each host (run one per host, from a
#       shared directory; phase 2 once phase 1 has finished): phase 2's --init-checkpoint finds
#       phase 1's newest run directory when it starts, as pretrain.sh does
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
    # pretrain.sh's two phases, printed instead of run; the placeholder of phase 1's run directory
    # becomes the command that finds it (phase 1 does not exist yet)
    newest="\"\$(ls -td $(printf %q "${SAVE_PATH:-checkpoint}")/phase1/pretraining_* | head -n 1)\""
    RUNNER="python3 scripts/launch_workers.py --print-only $value -- python3" \
      PHASE1_RUN=@PHASE1_RUN@ ./scripts/pretrain.sh "$@" | while IFS= read -r line; do
      printf '%s\n' "${line//@PHASE1_RUN@/"$newest"}"
    done
    ;;
  *)
    echo "$usage" >&2
    exit 64
    ;;
esac

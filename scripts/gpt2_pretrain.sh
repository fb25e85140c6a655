#!/usr/bin/env bash
# GPT-2 pretraining: the reference's run/pretraining_{small,medium,large,large_512,test}.sh recipes.
#
#   ./scripts/gpt2_pretrain.sh small|medium|large|large_512|test [extra train_gpt2.py flags]
#
# The reference ran these on 16 IPUs with generated data, as throughput benchmarks. Here the same
# flags run on CPUs/GPUs: the IPU-only ones (--layers-per-ipu, --matmul-proportion,
# --ipus-per-replica, --enable-half-partials, --remap-logit, --replicated-tensor-sharding) are
# accepted and warn once; --replication-factor is the number of devices (REPLICAS below, default 1
# so that one machine runs it: the global batch then shrinks by the reference's factor, say
# --gradient-accumulation to keep it). Set DATA_PREFIX to a Megatron .bin/.idx prefix (from
# gpt2_data/preprocess_data.py) to train on real data instead of generated ids.
set -euo pipefail
cd "$(dirname "$0")/.."

DATA_PREFIX=${DATA_PREFIX:-}
OUTPUT_DIR=${OUTPUT_DIR:-checkpoints/gpt2}
REPLICAS=${REPLICAS:-1}

size=${1:-}
common=(--optimizer AdamW --learning-rate 1.5e-4 --lr-schedule cosine --lr-warmup 0.01
  --batch-size 1 --max-len 1024 --recompute-checkpoint-every-layer True
  --enable-half-partials True --enable-sequence-serialized True --remap-logit True
  --epochs 20 --device-iterations 8 --replication-factor "$REPLICAS")
case "$size" in
  small)
    flags=(--model gpt2 "${common[@]}" --layers-per-ipu 0 4 4 4 --matmul-proportion 0.15 0.15 0.15 0.15
      --ipus-per-replica 4 --gradient-accumulation 2048 --embedding-serialization-factor 4
      --replicated-tensor-sharding True) ;;
  medium)
    flags=(--model gpt2-medium "${common[@]}" --layers-per-ipu 0 3 3 3 3 4 4 4
      --matmul-proportion 0.30 0.15 0.15 0.15 0.15 0.15 0.15 0.15 --ipus-per-replica 8
      --gradient-accumulation 4096 --embedding-serialization-factor 4 --replicated-tensor-sharding True) ;;
  large)
    flags=(--model gpt2-large "${common[@]}" --layers-per-ipu 0 2 2 2 2 2 2 2 2 3 3 3 3 3 3 2
      --matmul-proportion 0.2 0.15 0.2 0.2 0.2 0.15 0.15 0.2 0.2 0.15 0.2 0.2 0.2 0.15 0.15 0.2
      --ipus-per-replica 16 --gradient-accumulation 8192 --embedding-serialization-factor 4) ;;
  large_512)
    flags=(--model gpt2-large "${common[@]}" --max-len 512 --layers-per-ipu 1 5 5 5 5 5 5 5
      --matmul-proportion 0.15 0.12 0.15 0.15 0.15 0.15 0.15 0.15 --ipus-per-replica 8
      --gradient-accumulation 4096 --embedding-serialization-factor 8 --replicated-tensor-sharding True) ;;
  test)
    flags=(--model gpt2-test --max-len 128 --layers-per-ipu 0 4 --matmul-proportion 0.20 0.20
      --ipus-per-replica 2 --replication-factor "$REPLICAS" --epochs 3 --gradient-accumulation 32
      --device-iterations 1 --batch-size 1 --enable-sequence-serialized False
      --embedding-serialization-factor 8 --recompute-checkpoint-every-layer True
      --enable-half-partials True) ;;
  *)
    echo "usage: $0 small|medium|large|large_512|test [train_gpt2.py flags]" >&2
    exit 64 ;;
esac
shift

data=(--dataset generated)
[ -n "$DATA_PREFIX" ] && data=(--dataset mmap --input-files "$DATA_PREFIX")
python3 train_gpt2.py "${flags[@]}" "${data[@]}" --checkpoint-output-dir "$OUTPUT_DIR" "$@"

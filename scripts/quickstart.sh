#!/usr/bin/env bash
# Quick start: vocab + pretraining data from bert_data/sample.txt, then pretrain the tiny BERT on CPU and
# print its MLM/NSP accuracy on that data (the sample is small enough to memorise).
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-quickstart}
STEPS=${STEPS:-600}
mkdir -p "$OUT"

python3 -m bert_data.create_vocab --input-file bert_data/sample.txt --output-file "$OUT/vocab.txt" \
  --vocab-size 1000 --do-lower-case
python3 bert_data/create_pretraining_data.py --input-file bert_data/sample.txt \
  --output-file "$OUT/sample.tfrecord" --vocab-file "$OUT/vocab.txt" --do-lower-case \
  --sequence-length 128 --mask-tokens 20 --duplication-factor 10 --remask --quiet
python3 -m bert_data.inspect_records "$OUT/sample.tfrecord" --vocab-file "$OUT/vocab.txt" -n 1
# The tiny config is the reference's; to memorise the sample in a few hundred steps the Quick start uses a
# larger batch and learning rate and no dropout.
python3 run_pretraining.py --config configs/pretrain_tiny_128_lamb.json \
  --train-file "$OUT/sample.tfrecord" --eval-file "$OUT/sample.tfrecord" --vocab-file "$OUT/vocab.txt" \
  --num-train-steps "$STEPS" --micro-batch-size 32 --global-batch-size 32 --base-learning-rate 0.03 \
  --warmup 0.05 --hidden-dropout-prob 0 --duplicate-factor 10 --steps-per-logs 50 --steps-per-ckpts 200 \
  --save-path "$OUT/checkpoints" "$@"

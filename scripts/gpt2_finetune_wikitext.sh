#!/usr/bin/env bash
# Fine-tune a pretrained GPT-2 on WikiText (optimum-graphcore's run_clm recipe: GPT-2 small on
# WikiText-2, 30 epochs, lr 1e-5 linear with 10% warm-up, weight decay 0.01, blocks of 1024 tokens,
# global batch 128), then report the validation perplexity.
#
#   HF_GPT2=path/to/gpt2 ./scripts/gpt2_finetune_wikitext.sh [extra train_gpt2.py flags]
#
# HF_GPT2 is a Hugging Face GPT-2 folder (config.json, model.safetensors, vocab.json, merges.txt),
# e.g. transformers' `GPT2LMHeadModel.from_pretrained("gpt2").save_pretrained(dir)` on a machine
# with internet. The recipe's "activation_function=gelu" override was an IPU speed trick; the
# checkpoint's gelu_new is kept here. Differences from transformers' Trainer: our AdamW has no bias
# correction (the GPT-2 reference's) and eps 1e-6.
set -euo pipefail
cd "$(dirname "$0")/.."

HF_GPT2=${HF_GPT2:?set HF_GPT2 to a Hugging Face GPT-2 folder}
TRAIN=${TRAIN:-../shared/data/wikitext-2/wiki.train.raw}
VALID=${VALID:-../shared/data/wikitext-2/wiki.valid.raw}
OUTPUT_DIR=${OUTPUT_DIR:-checkpoints/gpt2_wikitext}

python3 train_gpt2.py --checkpoint-input-dir "$HF_GPT2" --dataset text --input-files "$TRAIN" \
  --eval-files "$VALID" --vocab-file "$HF_GPT2/vocab.json" --merges-file "$HF_GPT2/merges.txt" \
  --max-len 1024 --batch-size 1 --gradient-accumulation 128 --device-iterations 1 --epochs 30 \
  --optimizer AdamW --learning-rate 1e-5 --lr-schedule linear --lr-warmup 0.1 --weight-decay 0.01 \
  --recompute-checkpoint-every-layer True --checkpoint-output-dir "$OUTPUT_DIR" "$@"

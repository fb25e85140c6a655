#!/usr/bin/env bash
# GPT-2 small from scratch on a text corpus (the Flax run_clm recipe: blocks of 512 tokens, global
# batch 512, lr 5e-3 linear with 1000 warm-up steps, 20 epochs, no dropout), held-out perplexity at
# the end.
#
#   CORPUS=train.txt HELDOUT=valid.txt ./scripts/gpt2_from_scratch.sh [extra train_gpt2.py flags]
#
# Tokenizer: GPT-2's BPE (VOCAB/MERGES; the recipe trained its own byte-level BPE for Norwegian,
# whose 50265 ids did not fit its 50257-row model). Large corpora: preprocess them once with
# gpt2_data/preprocess_data.py and train with --dataset mmap instead of text. The global batch is
# BATCH x ACCUMULATION x replicas; the default keeps the recipe's 512 on one device.
set -euo pipefail
cd "$(dirname "$0")/.."

CORPUS=${CORPUS:?set CORPUS to the training text file(s), comma-separated}
HELDOUT=${HELDOUT:?set HELDOUT to held-out text file(s)}
VOCAB=${VOCAB:-../shared/data/vocab/gpt2/encoder.json}
MERGES=${MERGES:-../shared/data/vocab/gpt2/vocab.bpe}
BATCH=${BATCH:-8}
ACCUMULATION=${ACCUMULATION:-64}
OUTPUT_DIR=${OUTPUT_DIR:-checkpoints/gpt2_scratch}

config=$(mktemp --suffix=.json)
trap 'rm -f "$config"' EXIT
python3 - "$config" <<'PY'
import json, sys
cfg = json.load(open("configs/gpt2/gpt2.json"))
cfg.update(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
json.dump(cfg, open(sys.argv[1], "w"))
PY
python3 train_gpt2.py --model-config "$config" --dataset text --input-files "$CORPUS" \
  --eval-files "$HELDOUT" --vocab-file "$VOCAB" --merges-file "$MERGES" --max-len 512 \
  --batch-size "$BATCH" --gradient-accumulation "$ACCUMULATION" --device-iterations 1 --epochs 20 \
  --optimizer AdamW --learning-rate 5e-3 --lr-schedule linear --lr-warmup-steps 1000 \
  --precision bf16 --checkpoint-output-dir "$OUTPUT_DIR" "$@"

#!/usr/bin/env bash
# The reference's tasks/run_evaluate.sh (its README's name; the file was run_evaluate_medium.sh):
#   CHECKPOINT_PATH=MODEL_DIR tasks/run_evaluate.sh wiki|lmbd [more flags]
# wiki: WikiText-103 test perplexity, windows of 1024 every 32 tokens; lmbd: LAMBADA accuracy, last
# BPE token (add --strict-lambada for the last whole word). MODEL_DIR is a Hugging Face GPT-2
# folder (with vocab.json/merges.txt), a train_gpt2.py run directory or a checkpoint prefix.
# Data paths: WIKI_DATA (default data/wikitext-103/wiki.test.tokens), LAMBADA_DATA (default
# data/lambada_test.jsonl). Extra arguments are passed on, e.g. --batch-size 8, --vocab-file F
# --merges-file F, --seq-length 128 for a smaller model. The reference's IPU flags (--layers-per-ipu,
# --matmul-proportion, --device-iterations, --executable-cache-dir) are left out (no effect here)
# and so is its --fp16 (pass --fp16 or --bf16 for half-precision compute, e.g. on GPUs; float16 is
# slow on CPUs). Runs from any directory.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
case "${1:-}" in
    wiki)
        shift
        exec python3 "$HERE/evaluate_wiki.py" \
            --valid-data "${WIKI_DATA:-data/wikitext-103/wiki.test.tokens}" \
            --pretrained-checkpoint "${CHECKPOINT_PATH:?set CHECKPOINT_PATH to the model}" \
            --seq-length 1024 --tokenizer-type 1 "$@"
        ;;
    lmbd)
        shift
        exec python3 "$HERE/evaluate_lambada.py" \
            --valid-data "${LAMBADA_DATA:-data/lambada_test.jsonl}" \
            --pretrained-checkpoint "${CHECKPOINT_PATH:?set CHECKPOINT_PATH to the model}" \
            --seq-length 1024 --tokenizer-type 1 --strict-lambada false "$@"
        ;;
    *)
        echo "Dataset should be 'wiki' or 'lmbd'" >&2
        exit 1
        ;;
esac

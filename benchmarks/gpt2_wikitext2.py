"""A tiny GPT-2 trained from scratch on WikiText-2 `wiki.valid.raw`, scored on `wiki.test.raw`.

    python3 benchmarks/gpt2_wikitext2.py [--epochs 3] [--out runs/wikitext2] [-- extra flags]

It runs train_gpt2.py (`--dataset text`, GPT-2's BPE, a 4-block 128-wide model with GPT-2's
50257-token vocabulary, 128 positions, AdamW 2e-3 cosine with 5% warm-up, batch 8) and reports
the held-out token perplexity of the final weights (every target of wiki.test.raw cut into
128-position blocks) beside two baselines on exactly the same targets: the uniform distribution
over the vocabulary and a unigram model of the training tokens (add-one smoothed counts). A model
that learnt anything beyond token frequencies is well below the unigram perplexity.

Data: ../shared/data (WikiText-2 raw and the GPT-2 vocab), or --data DIR.
"""

import argparse
import os
import re
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

MODEL = {"model_type": "gpt2", "vocab_size": 50257, "n_positions": 128, "n_embd": 128,
         "n_layer": 4, "n_head": 4, "activation_function": "gelu_new", "resid_pdrop": 0.1,
         "embd_pdrop": 0.1, "attn_pdrop": 0.1}  # fmt: skip
SEQ = 128


def unigram_baselines(train_ids, eval_blocks, vocab_size):
    """(uniform ppl, add-one unigram ppl) of the targets of eval_blocks [N, SEQ + 1]."""
    counts = np.bincount(train_ids, minlength=vocab_size).astype(np.float64) + 1.0
    log_p = np.log(counts / counts.sum())
    targets = eval_blocks[:, 1:].reshape(-1)
    return float(vocab_size), float(np.exp(-log_p[targets].mean()))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=os.path.join(os.path.dirname(ROOT), "shared", "data"))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--out", default="runs/wikitext2")
    parser.add_argument("extra", nargs="*", help="more train_gpt2.py flags (after --)")
    args = parser.parse_args(argv)
    import json

    import train_gpt2
    from gpt2_data import readers, tokenizer

    vocab = os.path.join(args.data, "vocab", "gpt2", "encoder.json")
    merges = os.path.join(args.data, "vocab", "gpt2", "vocab.bpe")
    train = os.path.join(args.data, "wikitext-2", "wiki.valid.raw")
    test = os.path.join(args.data, "wikitext-2", "wiki.test.raw")
    os.makedirs(args.out, exist_ok=True)
    config = os.path.join(args.out, "model_config.json")
    with open(config, "w") as f:
        json.dump(MODEL, f)
    flags = ["--model-config", config, "--max-len", SEQ, "--dataset", "text",
             "--input-files", train, "--eval-files", test, "--vocab-file", vocab,
             "--merges-file", merges, "--batch-size", 8, "--device-iterations", 8,
             "--epochs", args.epochs, "--optimizer", "AdamW", "--learning-rate", 2e-3,
             "--weight-decay", 0.01, "--lr-schedule", "cosine", "--lr-warmup", 0.05,
             "--log-steps", 4, "--seed", 1234, "--checkpoint-output-dir", args.out,
             *args.extra]  # fmt: skip
    print("python3 train_gpt2.py " + " ".join(map(str, flags)), flush=True)
    import contextlib
    import io

    buffer = io.StringIO()
    with contextlib.redirect_stdout(_Tee(sys.stdout, buffer)):
        code = train_gpt2.main([str(f) for f in flags])
    if code:
        return code
    found = re.findall(r"final: eval_loss: ([\d.]+), eval_ppl: ([\d.]+)", buffer.getvalue())
    loss, ppl = map(float, found[-1])
    tok = tokenizer.load(vocab, merges)
    train_ids = readers.text_blocks([train], tok, SEQ)
    eval_blocks = readers.text_blocks([test], tok, SEQ)
    train_tokens = np.concatenate([train_ids[:, :-1].reshape(-1), train_ids[-1, -1:]])
    uniform, unigram = unigram_baselines(train_tokens, eval_blocks, MODEL["vocab_size"])
    print(
        f"wiki.test.raw, {eval_blocks[:, 1:].size:,} target tokens: tiny GPT-2 ppl {ppl:.1f} "
        f"(loss {loss:.3f}); unigram ppl {unigram:.1f}; uniform ppl {uniform:.0f}; "
        f"ratio to unigram {ppl / unigram:.3f}"
    )
    return 0


class _Tee:
    """Writes to several streams (the console and a buffer)."""

    def __init__(self, *streams):
        self.streams = streams

    def write(self, text):
        for s in self.streams:
            s.write(text)
        return len(text)

    def flush(self):
        for s in self.streams:
            s.flush()


if __name__ == "__main__":
    sys.exit(main())

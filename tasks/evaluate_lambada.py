#!/usr/bin/env python3
"""LAMBADA cloze accuracy and target perplexity of a GPT-2 (the reference's tasks/evaluate_lambada.py).

    python3 tasks/evaluate_lambada.py --valid-data lambada_test.jsonl --checkpoint-input-dir MODEL \
        --seq-length 1024 [--strict-lambada] [--batch-size 8]

One passage per JSON line ({"text": ...}). Default (the reference's `--strict-lambada false`): the
target is the passage's last BPE token, predicted from all the tokens before it. --strict-lambada:
the target is the last whole word, encoded as " " + word (one or more tokens) after the encoded
text before it; a passage is correct when every target token is the argmax given the true prefix
(teacher forcing). accuracy = correct / passages scored. ppl = exp(mean NLL per target token) over
all scored passages (non-strict: one token per passage); word_ppl = exp(mean over passages of the
target's summed NLL), per target word, the GPT-2 paper's kind of LAMBADA perplexity (equal to ppl
when not strict).

A passage whose context + target exceed --seq-length + 1 tokens is skipped, not truncated (the
reference cut the tail off, which changes the target): one line gives the count and the first line
number, and the JSON line holds "skipped". Passages without context tokens are skipped likewise.
Prints `number correct: ..., total examples: ..., avg accuracy: ...` and a final JSON line.
"""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import math

from common.errors import UserError, cli_main
from gpt2_data import evaluation
from tasks import evaluate_common

SCRIPT = "tasks/evaluate_lambada.py"


def _why(reason, args):
    if reason == "too_long":
        return f"longer than --seq-length {args.seq_length} + 1 tokens (not truncated)"
    return "without context or target tokens"


@cli_main
def main(argv=None):
    args = evaluate_common.parse(argv, "LAMBADA", SCRIPT, __doc__.split("\n\n")[0])
    path = args.valid_data
    passages = evaluation.read_lambada(path)
    name = args.detokenizer or "none"
    mode = "strict (last word)" if args.strict_lambada else "last BPE token"
    print(f"data: {path}, {len(passages)} passages, target: {mode}, detokenizer: {name}")
    model, tok, dtype = evaluate_common.load(args)
    detokenize = evaluation.DETOKENIZERS[name]
    passages = [(number, detokenize(text)) for number, text in passages]
    ids, mask, skipped = evaluation.lambada_items(
        passages, tok.encode, args.seq_length, args.strict_lambada, tok.eod
    )
    for reason, lines in skipped.items():
        if lines:
            print(f"skipped {len(lines)} passage(s) {_why(reason, args)}; first: {path}:{lines[0]}")
    if not len(ids):
        raise UserError(f"{path}: no passage fits --seq-length {args.seq_length}; nothing to score")

    def progress(iteration, got):
        correct = int((got["hits"] == got["count"]).sum())
        return f"> working on iteration: {iteration}, correct: {correct}/{len(got['ce'])}"

    scores = evaluate_common.score(model, ids, mask, args, dtype, progress)
    correct = int((scores["hits"] == scores["count"]).sum())
    total = len(ids)
    nll = float(scores["ce"].sum())  # float64, on the host
    accuracy = correct / total
    print(
        f"number correct: {correct:.4E}, total examples: {total:.4E}, avg accuracy: {accuracy:.4E}"
    )
    figures = {
        "task": "LAMBADA",
        "correct": correct,
        "total": total,
        "accuracy": accuracy,
        "ppl": math.exp(nll / int(scores["count"].sum())),
        "word_ppl": math.exp(nll / total),
        "skipped": sum(map(len, skipped.values())),
    }
    evaluate_common.report(figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())

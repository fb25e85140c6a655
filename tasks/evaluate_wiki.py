#!/usr/bin/env python3
"""WikiText perplexity of a GPT-2 (the reference's tasks/evaluate_wiki.py, Megatron's algorithm).

    python3 tasks/evaluate_wiki.py --valid-data wiki.test.raw --checkpoint-input-dir MODEL \
        --seq-length 1024 [--overlapping-eval 32] [--batch-size 8]

The whole file is read (UTF-8), its words counted as the reference does (`split(" ")` of the raw
text), detokenized (--detokenizer; default by path), encoded with GPT-2's BPE and cut into windows
of seq-length + 1 tokens every --overlapping-eval tokens; each target token is scored exactly once
(later windows score only their last o targets). Every window is scored: the last batch is padded
and the padding discarded (the reference dropped a last partial batch but kept its targets in the
denominator). Prints ` > number of original tokens: ...`, a progress line every --log-interval
batches, `avg loss: ..., ppl: ..., adjusted ppl: ..., token ratio: ...` and a final JSON line.
ppl is per BPE token; adjusted ppl = exp(avg loss x token ratio) is per original word, the figure
comparable with the GPT-2 paper's WikiText columns.
"""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from common.errors import UserError, cli_main
from gpt2_data import evaluation
from tasks import evaluate_common

SCRIPT = "tasks/evaluate_wiki.py"


@cli_main
def main(argv=None):
    args = evaluate_common.parse(argv, "WIKITEXT103", SCRIPT, __doc__.split("\n\n")[0])
    path = args.valid_data
    text = evaluation.read_wiki_text(path)
    name = args.detokenizer or evaluation.detokenizer_for_path(path)
    if name is None:
        raise UserError(
            f"{path}: the path names no detokenizer (none of ptb, wiki, lambada in it); pass "
            "--detokenizer wikitext|ptb|lambada|none"
        )
    how = "--detokenizer" if args.detokenizer else "chosen by the path"
    print(f"data: {path}, detokenizer: {name} ({how})")
    model, tok, dtype = evaluate_common.load(args)
    num_original = evaluation.num_original_tokens(text)
    tokens = tok.encode(evaluation.DETOKENIZERS[name](text))
    print(
        f" > number of original tokens: {num_original}, number of detokenized tokens: {len(tokens)}"
    )
    if len(tokens) < 2:
        raise UserError(f"{path}: {len(tokens)} token(s); perplexity needs at least 2")
    ids, mask = evaluation.wiki_windows(tokens, args.seq_length, args.overlapping_eval, tok.eod)
    print(
        f"{len(ids)} windows of {args.seq_length} positions, stride {args.overlapping_eval}, "
        f"batch {args.batch_size}: {int(mask.sum())} target tokens"
    )

    def progress(iteration, got):
        return f"> working on iteration: {iteration}, loss: {got['ce'].mean()}"

    scores = evaluate_common.score(model, ids, mask, args, dtype, progress)
    total = float(scores["ce"].sum())  # float64, on the host
    figures = evaluation.wiki_figures(total, len(tokens), num_original)
    print(
        "avg loss: {:.4E}, ppl: {:.4E}, adjusted ppl: {:.4E}, token ratio: {}".format(
            figures["avg_loss"], figures["ppl"], figures["adjusted_ppl"], figures["token_ratio"]
        )
    )
    evaluate_common.report(
        {
            "task": "WIKITEXT103",
            **figures,
            "num_original_tokens": num_original,
            "num_tokenized_tokens": len(tokens),
        }
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

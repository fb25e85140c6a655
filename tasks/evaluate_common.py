"""What evaluate_wiki.py and evaluate_lambada.py share: their flags (defined once), the checks, the
model and tokenizer, and the batched scoring loop with its progress bar.

The flags are the reference's (REFERENCE_GPT2.md §6.1), with its spellings and defaults; booleans
take `--flag`, `--flag true|false`, `--no-flag`. Both checkpoint flags work
(`--checkpoint-input-dir` and the older `--pretrained-checkpoint`; the reference accepted only one
of them in each script). IPU-only flags are accepted with one warning line. TensorFlow is imported
only once the command line and the data file are known to be good, so `--help` and input errors
are quick.
"""

import dataclasses
import json
import sys
import types

import options_gpt2  # noqa: F401  (registers the "int_list" option kind)
from common.cli import EX_USAGE, Option, build_parser
from common.errors import UserError
from gpt2_data import evaluation

TASKS = ("WIKITEXT103", "LAMBADA")
O = Option  # noqa: E741
OPTIONS = [
    O("task", "str", None, "the evaluation; each script runs its own (null: the script's)",
      choices=TASKS, group="Evaluation"),
    O("valid_data", "str", None, "the data file (exactly one): WikiText text "
      "(wiki.test.tokens, wiki.test.raw) or LAMBADA JSON lines (lambada_test.jsonl)",
      nargs="*", group="Evaluation"),
    O("checkpoint_input_dir", "str", None, "the GPT-2 to evaluate: a Hugging Face GPT-2 folder, "
      "a train_gpt2.py run directory or a checkpoint prefix; required",
      extra_flags=("--pretrained-checkpoint",), group="Evaluation"),
    O("seq_length", "int", 128, "positions per window/passage (at most the model's n_positions)",
      group="Evaluation"),
    O("overlapping_eval", "int", 32, "WikiText: window stride o in tokens (1..seq-length); "
      "windows after the first score only their last o targets", group="Evaluation"),
    O("strict_lambada", "bool", False, "LAMBADA: the target is the last whole word (all of its "
      "tokens must be the argmax, teacher-forced), not the last BPE token", group="Evaluation"),
    O("batch_size", "int", 1, "windows or passages per forward pass (results do not depend on "
      "it)", group="Evaluation"),
    O("fp16", "bool", False, "float16 compute (float32 weights, logits and loss)",
      group="Evaluation"),
    O("bf16", "bool", False, "bfloat16 compute (float32 weights, logits and loss)",
      group="Evaluation"),
    O("log_interval", "int", 10, "a progress line every this many batches", group="Evaluation"),
    O("tokenizer_type", "str", "0", "0 or 1: both are GPT-2's byte-level BPE here, read from "
      "--vocab-file/--merges-file or the model folder (the reference's 0 downloaded Hugging "
      "Face's gpt2 tokenizer, 1 used bundled files; nothing is downloaded here)",
      choices=("0", "1"), group="Tokenizer"),
    O("vocab_file", "str", None, "GPT-2 vocab.json / encoder.json (null: the model folder's)",
      group="Tokenizer"),
    O("merges_file", "str", None, "GPT-2 merges.txt / vocab.bpe (null: the model folder's)",
      group="Tokenizer"),
    O("detokenizer", "str", None, "applied to the text before encoding: wikitext, ptb, lambada "
      "(identity) or none. WikiText default: the reference's choice by path, the first of ptb, "
      "wiki, lambada found in --valid-data; LAMBADA default: none (the reference applies none)",
      choices=tuple(evaluation.DETOKENIZERS), group="Tokenizer"),
    O("eod_mask_loss", "bool", False, "accepted; no effect (unused in the reference too)",
      unused=True, group="Tokenizer"),
    O("layers_per_ipu", "int_list", 3, "blocks per IPU", nargs="+", ipu_only=True,
      group="IPU only (accepted, no effect on CPU/GPU)"),
    O("device_iterations", "int", 4, "batches per IPU call", ipu_only=True,
      group="IPU only (accepted, no effect on CPU/GPU)"),
    O("matmul_proportion", "floats", None, "per-IPU matmul memory proportion", nargs="+",
      ipu_only=True, group="IPU only (accepted, no effect on CPU/GPU)"),
    O("executable_cache_dir", "str", None, "Poplar executable cache", ipu_only=True,
      group="IPU only (accepted, no effect on CPU/GPU)"),
]  # fmt: skip
# Flags of one script that the other one uses: accepted (the reference defines the same flags in
# both), with the "no effect here" warning.
_OTHER_TASK = {"WIKITEXT103": ("strict_lambada",), "LAMBADA": ("overlapping_eval",)}


def _fail(message):
    raise UserError(message, EX_USAGE)


def parse(argv, task, script, description):
    """The checked settings of one evaluation script.

    Args:
      argv: the arguments (None: sys.argv[1:]); task: "WIKITEXT103" or "LAMBADA";
      script: the program name for usage lines; description: --help text.
    Returns:
      types.SimpleNamespace with every option key; valid_data is one path.
    Raises:
      UserError: one line, exit 64: an unknown flag, a bad value or combination.
    """
    schema = [
        dataclasses.replace(o, unused=True) if o.key in _OTHER_TASK[task] else o for o in OPTIONS
    ]
    parser = build_parser(schema, script, description, require_config=None)
    given = vars(parser.parse_args(sys.argv[1:] if argv is None else list(argv)))
    v = {o.key: o.default for o in schema}
    v.update(given)
    if v["task"] not in (None, task):
        other = "evaluate_lambada.py" if task == "WIKITEXT103" else "evaluate_wiki.py"
        _fail(f"{script} evaluates {task}; --task {v['task']} is {other}'s")
    v["task"] = task
    if not v["valid_data"] or len(v["valid_data"]) != 1:
        _fail(f"give exactly one --valid-data FILE, got {len(v['valid_data'] or [])}")
    v["valid_data"] = v["valid_data"][0]
    if not v["checkpoint_input_dir"]:
        _fail("give the model: --checkpoint-input-dir (or --pretrained-checkpoint) DIR")
    for key in ("seq_length", "batch_size", "log_interval", "overlapping_eval"):
        if v[key] < 1:
            _fail(f"--{key.replace('_', '-')} must be >= 1, got {v[key]}")
    if task == "WIKITEXT103" and v["overlapping_eval"] > v["seq_length"]:
        _fail(
            f"--overlapping-eval {v['overlapping_eval']} exceeds --seq-length {v['seq_length']}: "
            "targets between windows would never be scored"
        )
    if v["fp16"] and v["bf16"]:
        _fail("choose one of --fp16 and --bf16")
    options_gpt2.warn_ignored(v, given, schema)
    return types.SimpleNamespace(**v)


def load(args):
    """(model, tokenizer, compute dtype) for `args`; prints the load notes.

    Raises:
      UserError: a path that is not a GPT-2 checkpoint, missing tokenizer files, --seq-length
        beyond the model's n_positions.
    """
    import tensorflow as tf

    import interop_gpt2
    from gpt2_data import tokenizer

    model, notes = interop_gpt2.load_model(args.checkpoint_input_dir)
    tok = tokenizer.for_checkpoint(args.checkpoint_input_dir, args.vocab_file, args.merges_file)
    n_positions = model.config.n_positions
    if args.seq_length > n_positions:
        raise UserError(
            f"--seq-length {args.seq_length} exceeds the model's n_positions {n_positions} "
            f"({args.checkpoint_input_dir}); use --seq-length {n_positions} or less",
            EX_USAGE,
        )
    if tok.vocab_size > model.config.vocab_size:
        raise UserError(
            f"the tokenizer ({tok.vocab_file}) has {tok.vocab_size} entries, the model's "
            f"vocab_size is {model.config.vocab_size}: not this model's tokenizer"
        )
    for note in notes:
        print(f"model: {note}")
    dtype = tf.float16 if args.fp16 else tf.bfloat16 if args.bf16 else tf.float32
    return model, tok, dtype


def score(model, ids, mask, args, dtype, progress_line):
    """Scores every row (`objectives.causal_lm.score_sequences`) with a tqdm bar on stderr and,
    every --log-interval batches, the line `progress_line(iteration, batch_results)`.

    Returns:
      {"ce": float64 [N], "hits": int [N], "count": int [N]} per row.
    """
    import numpy as np
    from tqdm import tqdm

    from objectives import causal_lm

    n = len(ids)
    parts = []
    batches = causal_lm.score_sequences(model, ids, mask, args.batch_size, dtype)
    bar = tqdm(total=n, unit="seq", file=sys.stderr, disable=None, leave=False)
    with bar:
        for iteration, got in enumerate(batches):
            parts.append(got)
            bar.update(len(got["ce"]))
            if iteration % args.log_interval == 0:
                bar.write(progress_line(iteration, got), file=sys.stdout)
    return {k: np.concatenate([p[k] for p in parts]) for k in ("ce", "hits", "count")}


def report(figures):
    """Prints the final line: the figures as JSON."""
    print(json.dumps(figures), flush=True)

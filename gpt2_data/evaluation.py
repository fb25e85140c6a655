"""Zero-shot evaluation data (REFERENCE_GPT2.md §6.2, §6.3): detokenizers, WikiText windows, LAMBADA items.

Pure data code (NumPy, no model): `tasks/evaluate_wiki.py` and `tasks/evaluate_lambada.py` turn a
file into rows of `seq_len + 1` token ids and a [seq_len] 0/1 mask over the targets ids[1:]; the
model scores the targets where the mask is 1 (`objectives.causal_lm.score_sequences`).

- WikiText (Megatron's algorithm): the whole file is read, detokenized and encoded; windows of
  `seq_len + 1` ids start every `overlapping_eval` (o) tokens. The first window scores all its
  targets; each later window only its last o (when o != seq_len), so every target is scored exactly
  once with at least seq_len - o + 1 tokens of context.
- LAMBADA: one passage per JSON line; context = all but the target, target = the last BPE token
  (default) or, `strict`, the last whole word encoded as " " + word (possibly several tokens).
"""

import contextlib
import json
import math
import os
import re

import numpy as np

from common.errors import UserError

# ----------------------------------------------------------------------------- detokenizers


def wikitext_detokenizer(text):
    """Megatron's WikiText detokenizer: its rules in its order (REFERENCE_GPT2.md §6.2 step 3)."""
    text = text.replace("s '", "s'")
    text = re.sub(r"/' [0-9]/", r"/'[0-9]/", text)  # literal slashes: a no-op kept as written
    for old, new in ((" @-@ ", "-"), (" @,@ ", ","), (" @.@ ", ".")):
        text = text.replace(old, new)
    for mark in ":;.!?,":
        text = text.replace(f" {mark} ", f"{mark} ")
    # Inner spaces of bracket and quote pairs (non-greedy, no closing character inside).
    text = re.sub(r"\(\s*([^\)]*?)\s*\)", r"(\1)", text)
    text = re.sub(r"\[\s*([^\]]*?)\s*\]", r"[\1]", text)
    text = re.sub(r"{\s*([^}]*?)\s*}", r"{\1}", text)
    text = re.sub(r"\"\s*([^\"]*?)\s*\"", r'"\1"', text)
    text = re.sub(r"'\s*([^']*?)\s*'", r"'\1'", text)
    for old, new in (("= = = =", "===="), ("= = =", "==="), ("= =", "==")):
        text = text.replace(old, new)
    text = text.replace(" \N{DEGREE SIGN} ", "\N{DEGREE SIGN}")
    text = text.replace(" \n", "\n").replace("\n ", "\n")
    text = text.replace(" N ", " 1 ")
    return text.replace(" 's", "'s")


def ptb_detokenizer(text):
    """Megatron's Penn Treebank detokenizer (REFERENCE_GPT2.md §6.2 step 3)."""
    for old, new in ((" '", "'"), (" \n", "\n"), ("\n ", "\n"), (" n't", "n't"), (" N ", "1 "),
                     ("$ 1", "$1"), ("# 1", "#1")):  # fmt: skip
        text = text.replace(old, new)
    return text


def identity_detokenizer(text):
    """Megatron's LAMBADA detokenizer (the identity), also `--detokenizer none`."""
    return text


DETOKENIZERS = {
    "wikitext": wikitext_detokenizer,
    "ptb": ptb_detokenizer,
    "lambada": identity_detokenizer,
    "none": identity_detokenizer,
}
# Megatron's choice by path: the first of these substrings found in the path names the detokenizer.
_BY_PATH = (("ptb", "ptb"), ("wiki", "wikitext"), ("lambada", "lambada"))


def detokenizer_for_path(path):
    """The `DETOKENIZERS` name that the reference picks for `path` (the first of "ptb", "wiki",
    "lambada" found anywhere in the path as given), or None when the path names none."""
    for key, name in _BY_PATH:
        if key in path:
            return name
    return None


# ----------------------------------------------------------------------------- files


def read_text(path, what):
    """The UTF-8 text of `path`; one-line UserError when missing, unreadable, not UTF-8 or empty."""
    if not os.path.isfile(path):
        raise UserError(f"{what} {path}: no such file")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as err:
        raise UserError(f"cannot read {what} {path}: {err.strerror}") from None
    except UnicodeDecodeError as err:
        raise UserError(
            f"{what} {path} is not UTF-8 text ({err.reason} at byte {err.start})"
        ) from None
    if not text.strip():
        raise UserError(f"{what} {path} is empty")
    return text


def read_wiki_text(path):
    """A WikiText file's text (`read_text`), refusing JSON lines (e.g. LAMBADA's file) by extension
    or by a first line that is a JSON object."""
    text = read_text(path, "WikiText file")
    first = text.lstrip().split("\n", 1)[0].strip()
    looks_json = False
    if first.startswith("{"):
        with contextlib.suppress(ValueError):
            looks_json = isinstance(json.loads(first), dict)
    if looks_json or path.endswith((".jsonl", ".json")):
        raise UserError(
            f"{path} is JSON lines, not WikiText: evaluate_wiki.py reads plain text "
            "(wiki.test.tokens, wiki.test.raw); LAMBADA's JSON lines go to evaluate_lambada.py"
        )
    return text


def read_lambada(path):
    """[(line number, passage text)] of a LAMBADA JSON-lines file ({"text": ...} per line; blank
    lines are skipped). One-line UserError naming the line for anything else."""
    text = read_text(path, "LAMBADA file")
    passages = []
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except ValueError:
            raise UserError(
                f'{path}:{number} is not JSON: LAMBADA is JSON lines with a "text" key per line '
                "(e.g. lambada_test.jsonl)"
            ) from None
        if not isinstance(item, dict) or not isinstance(item.get("text"), str):
            raise UserError(f'{path}:{number}: expected a JSON object with a string "text" key')
        passages.append((number, item["text"]))
    return passages


# ----------------------------------------------------------------------------- WikiText


def num_original_tokens(text):
    """The reference's word count: `len(text.strip().split(" "))`, single spaces only (newlines do
    not separate, and double spaces count an empty word)."""
    return len(text.strip().split(" "))


def num_windows(num_tokens, overlapping_eval):
    """Megatron's window count: max(ceil(max(targets - o, 0) / o) + 1, 1), targets = tokens - 1."""
    targets, o = num_tokens - 1, overlapping_eval
    return max(math.ceil(max(targets - o, 0) / o) + 1, 1)


def wiki_windows(tokens, seq_len, overlapping_eval, pad_id):
    """Megatron's `_LMDataset` windows over a whole tokenized text.

    Args:
      tokens: sequence of int ids (the whole file).
      seq_len: model positions per window (windows hold seq_len + 1 ids).
      overlapping_eval: the stride o, 1 <= o <= seq_len.
      pad_id: the id that fills the last windows (GPT-2's `<|endoftext|>`, 50256).
    Returns:
      (ids int32 [N, seq_len + 1], mask float32 [N, seq_len]): mask[i, t] is 1 where the target
      ids[i, t + 1] is scored. The masks sum to len(tokens) - 1: each target exactly once.
    """
    if not 1 <= overlapping_eval <= seq_len:
        raise UserError(
            f"--overlapping-eval must be in [1, --seq-length {seq_len}], got {overlapping_eval}"
        )
    tokens = np.asarray(tokens, np.int64)
    n = num_windows(len(tokens), overlapping_eval)
    ids = np.full((n, seq_len + 1), pad_id, np.int32)
    real = np.zeros((n, seq_len + 1), np.float32)
    for i in range(n):
        window = tokens[i * overlapping_eval : i * overlapping_eval + seq_len + 1]
        ids[i, : len(window)] = window
        real[i, : len(window)] = 1.0
    mask = real[:, 1:].copy()  # [N, seq_len]: aligned with the targets
    if overlapping_eval != seq_len:
        mask[1:, : seq_len - overlapping_eval] = 0.0  # later windows: only their last o targets
    return ids, mask


def wiki_figures(total_loss, num_tokenized, num_original):
    """The reference's figures from the summed target cross-entropy (nats).

    Returns:
      {"avg_loss", "ppl", "adjusted_ppl", "token_ratio"}: avg_loss = total / (tokenized - 1),
      ppl = exp(min(20, avg_loss)) (per BPE token), token_ratio = (tokenized - 1) /
      (original - 1), adjusted_ppl = exp(min(20, avg_loss * token_ratio)) (per original word).
    """
    avg = total_loss / (num_tokenized - 1)
    ratio = (num_tokenized - 1) / (num_original - 1) if num_original > 1 else float("nan")
    return {
        "avg_loss": avg,
        "ppl": math.exp(min(20.0, avg)),
        "adjusted_ppl": math.exp(min(20.0, avg * ratio)),
        "token_ratio": ratio,
    }


# ----------------------------------------------------------------------------- LAMBADA


def lambada_split(text, encode, strict):
    """(context ids, target ids) of one passage.

    Non-strict (the reference's default): the whole passage's tokens; target = the last token.
    Strict: target = encode(" " + last word) with the word `text.split()[-1]`, context =
    encode(text before the word's last occurrence, stripped).
    Either may be empty (an empty or one-token passage): the caller skips those.
    """
    if not strict:
        tokens = list(encode(text))
        return tokens[:-1], tokens[-1:]
    words = text.split()
    if not words:
        return [], []
    last = words[-1]
    start = text.rfind(last)
    return list(encode(text[:start].strip())), list(encode(" " + last))


def lambada_items(passages, encode, seq_len, strict, pad_id):
    """Rows for the model, one per usable passage.

    A passage is usable when its context and target are non-empty and context + target fit in a
    row of seq_len + 1 ids; the others are skipped and reported (the reference truncated long
    non-strict passages, changing their target, and dropped long strict ones silently).

    Args:
      passages: [(line number, text)] (`read_lambada`).
      encode: text -> list of ids.
    Returns:
      (ids int32 [N, seq_len + 1] padded with pad_id, mask float32 [N, seq_len]: 1 on exactly the
      target tokens' positions among ids[:, 1:], skipped: {"too_long": [line numbers],
      "no_context": [line numbers]}).
    """
    rows, masks = [], []
    skipped = {"too_long": [], "no_context": []}
    for number, text in passages:
        context, target = lambada_split(text, encode, strict)
        if not context or not target:
            skipped["no_context"].append(number)
            continue
        if len(context) + len(target) > seq_len + 1:
            skipped["too_long"].append(number)
            continue
        row = np.full(seq_len + 1, pad_id, np.int32)
        row[: len(context) + len(target)] = context + target
        mask = np.zeros(seq_len + 1, np.float32)
        mask[len(context) : len(context) + len(target)] = 1.0
        rows.append(row)
        masks.append(mask[1:])
    ids = np.stack(rows) if rows else np.zeros((0, seq_len + 1), np.int32)
    mask = np.stack(masks) if masks else np.zeros((0, seq_len), np.float32)
    return ids, mask, skipped

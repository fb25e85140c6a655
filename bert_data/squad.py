#!/usr/bin/env python3
"""SQuAD v1.1 / v2.0 for BERT: reading, sliding-window features (with a cache) and n-best decoding.

The algorithms are those of google-research/bert's `run_squad.py`, which the reference app uses
unchanged: the whitespace reader, query truncation, document windows with the "max context" rule,
`_improve_answer_span`, and the n-best decoding with `get_final_text`. Outputs differ from the
reference app on purpose: `predictions.json` is the official format (id -> text, "" for no answer in
v2) and the n-best file is Google's `nbest_predictions.json`.

Small tools for making evaluation sets from a v1.1 file:

    python3 -m bert_data.squad split dev-v1.1.json train20.json --last 20 --first-answer-only
    python3 -m bert_data.squad split dev-v1.1.json last8.json --first -8
    python3 -m bert_data.squad make-v2 dev-v1.1.json dev-fake-v2.json --fraction 0.33 --seed 0
"""

import os
import sys

if __package__ in (None, ""):  # run as a file: import from the repository root, not bert_data/
    sys.path[0] = os.path.dirname(os.path.abspath(sys.path[0]))

import argparse
import bisect
import copy
import dataclasses
import hashlib
import json
import math
import random
import re
import tempfile
import zipfile

import numpy as np

from bert_data import tokenization
from common.errors import UserError, cli_main
from common.fileio import atomic_write_json, ensure_output_dir, read_json

# Google's reader splits contexts on these characters only (U+202F: narrow no-break space).
_WORD = re.compile("[^ \t\r\n\u202f]+")
FIRST_UNIQUE_ID = 1_000_000_000
# Bump when the feature algorithm or the cache layout changes: old caches then miss.
CACHE_FORMAT = 1


@dataclasses.dataclass
class SquadExample:
    """One question. Positions are word indices into `doc_tokens` (training only, -1 if impossible)."""

    qas_id: str
    question_text: str
    doc_tokens: list
    orig_answer_text: str | None = None
    start_position: int | None = None
    end_position: int | None = None
    is_impossible: bool = False


class ExampleList(list):
    """A list of SquadExample that also says how many training questions were skipped."""

    num_skipped = 0


# ------------------------------------------------------------------------------------- reading


def _articles(data, path):
    """The article list of SQuAD JSON `data`, with its structure checked (one-line errors)."""
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise UserError(
            f"{path} is not SQuAD JSON: expected an object with a 'data' list of articles"
        )
    for a, article in enumerate(data["data"]):
        if not isinstance(article, dict) or not isinstance(article.get("paragraphs"), list):
            raise UserError(f"{path} is not SQuAD JSON: article {a} has no 'paragraphs' list")
        for p, para in enumerate(article["paragraphs"]):
            if not (isinstance(para, dict) and isinstance(para.get("context"), str)):
                raise UserError(
                    f"{path} is not SQuAD JSON: article {a} paragraph {p} has no 'context'"
                )
            for qa in para.get("qas", ()):
                if not (
                    isinstance(qa, dict) and "id" in qa and isinstance(qa.get("question"), str)
                ):
                    raise UserError(
                        f"{path} is not SQuAD JSON: a question in article {a} paragraph {p} "
                        "lacks 'id' or 'question'"
                    )
    return data["data"]


def _all_qas(articles):
    for article in articles:
        for para in article["paragraphs"]:
            yield from para.get("qas", ())


def _check_version(articles, path, version_2_with_negative):
    """Refuses SQuAD 2.0 data without the v2 flag and the flag on 1.1 data (USER_NEEDS #4)."""
    flags = [qa["is_impossible"] for qa in _all_qas(articles) if "is_impossible" in qa]
    if any(flags) and not version_2_with_negative:
        raise UserError(
            f"{path} is SQuAD 2.0 data ({sum(map(bool, flags))} unanswerable questions) but "
            "version_2_with_negative is off; set --version-2-with-negative"
        )
    if version_2_with_negative and not flags:
        raise UserError(
            f"{path} is SQuAD 1.1 data (no question has an is_impossible field) but "
            "version_2_with_negative is on; drop --version-2-with-negative"
        )


def read_squad_examples(path, is_training, version_2_with_negative):
    """Reads a SQuAD JSON file into examples, as Google's reader does.

    Contexts are split into words on space, tab, CR, LF and U+202F; answer character offsets become
    word indices. Training questions need exactly one answer (unless impossible); those whose answer
    text is not found at its offset are skipped and counted. Evaluation examples keep no positions.

    Args:
      path: SQuAD JSON file.
      is_training: compute answer positions (and require one answer per question).
      version_2_with_negative: the data is SQuAD 2.0 (must match the file, see `_check_version`).

    Returns:
      ExampleList of SquadExample in file order; `.num_skipped` counts skipped training questions.
    """
    articles = _articles(read_json(path, "SQuAD file"), path)
    _check_version(articles, path, version_2_with_negative)
    examples, skipped = ExampleList(), []
    for article in articles:
        for para in article["paragraphs"]:
            context = para["context"]
            matches = list(_WORD.finditer(context))
            doc_tokens = [m.group() for m in matches]  # shared by the paragraph's questions
            word_starts = [m.start() for m in matches]
            for qa in para.get("qas", ()):
                example = SquadExample(str(qa["id"]), qa["question"], doc_tokens)
                if version_2_with_negative:
                    example.is_impossible = bool(qa.get("is_impossible", False))
                if is_training and not _set_training_answer(
                    example, qa, context, word_starts, path
                ):
                    skipped.append(example.qas_id)
                    continue
                examples.append(example)
    examples.num_skipped = len(skipped)
    if skipped:
        print(
            f"{path}: skipped {len(skipped)} training question(s) whose answer text is not at its "
            f"offset (first: {', '.join(skipped[:3])})",
            file=sys.stderr,
        )
    return examples


def _set_training_answer(example, qa, context, word_starts, path):
    """Sets the answer word span of a training example; False if its answer cannot be recovered."""
    answers = qa.get("answers")
    if example.is_impossible:
        example.start_position = example.end_position = -1
        example.orig_answer_text = ""
        return True
    if not isinstance(answers, list) or len(answers) != 1:
        count = len(answers) if isinstance(answers, list) else "no"
        raise UserError(
            f"{path}: training question {example.qas_id} has {count} answers; training needs "
            "exactly 1 (an evaluation file? `python3 -m bert_data.squad split "
            "--first-answer-only` makes a training copy)"
        )
    answer = answers[0] if isinstance(answers[0], dict) else {}
    text, offset = answer.get("text"), answer.get("answer_start")
    if not isinstance(text, str) or not isinstance(offset, int):
        raise UserError(f"{path}: the answer of question {example.qas_id} lacks text/answer_start")
    if not text or offset < 0 or offset + len(text) > len(context):
        return False
    # A character's word is the last word starting at or before it (whitespace joins the word before).
    start = bisect.bisect_right(word_starts, offset) - 1
    end = bisect.bisect_right(word_starts, offset + len(text) - 1) - 1
    if (
        start < 0
        or " ".join(example.doc_tokens[start : end + 1]).find(" ".join(text.split())) == -1
    ):
        return False
    example.orig_answer_text = text
    example.start_position, example.end_position = start, end
    return True


# ------------------------------------------------------------------------------------ features

# name -> dtype of the arrays a Features holds (and the cache stores).
ARRAY_FIELDS = {
    "unique_ids": np.int64,
    "input_ids": np.int32,
    "input_mask": np.int32,
    "segment_ids": np.int32,
    "start_positions": np.int32,
    "end_positions": np.int32,
    "is_impossible": np.int32,
    "example_index": np.int32,
    "doc_span_index": np.int32,
    "token_to_orig_map": np.int32,
    "token_is_max_context": np.bool_,
}
_MATRIX_FIELDS = (
    "input_ids",
    "input_mask",
    "segment_ids",
    "token_to_orig_map",
    "token_is_max_context",
)
MODEL_FIELDS = ("unique_ids", "input_ids", "input_mask", "segment_ids")
TRAIN_FIELDS = ("start_positions", "end_positions", "is_impossible")


@dataclasses.dataclass
class Features:
    """Model inputs and decoding metadata of N windows, as NumPy arrays (S = max_seq_length).

    Attributes:
      unique_ids: int64 [N], from 1,000,000,000 in order.
      input_ids, input_mask, segment_ids: int32 [N, S]: `[CLS] query [SEP] doc [SEP]`, zero-padded;
        segment 0 up to the first [SEP], 1 after it.
      start_positions, end_positions: int32 [N], answer token span in the window (training; 0 when
        the answer is outside the window or the question is impossible; 0 for evaluation).
      is_impossible: int32 [N], 1 for SQuAD 2.0 unanswerable questions.
      example_index: int32 [N], index of the window's example in the example list.
      doc_span_index: int32 [N], index of the window within its example.
      token_to_orig_map: int32 [N, S], word index in `example.doc_tokens` of each document token,
        -1 for [CLS], query, [SEP] and padding (Google's `token_to_orig_map` dict, made dense).
      token_is_max_context: bool [N, S], the document token has its most context in this window.
      id_to_token: list of str, the vocab (id -> WordPiece), to recover `tokens(i)`.
    """

    unique_ids: np.ndarray
    input_ids: np.ndarray
    input_mask: np.ndarray
    segment_ids: np.ndarray
    start_positions: np.ndarray
    end_positions: np.ndarray
    is_impossible: np.ndarray
    example_index: np.ndarray
    doc_span_index: np.ndarray
    token_to_orig_map: np.ndarray
    token_is_max_context: np.ndarray
    id_to_token: list = dataclasses.field(repr=False, default_factory=list)

    def __len__(self):
        return len(self.unique_ids)

    def tokens(self, i):
        """The WordPiece strings of window i, [CLS] to the last [SEP] (Google's `feature.tokens`)."""
        length = int(self.input_mask[i].sum())
        return [self.id_to_token[t] for t in self.input_ids[i, :length]]

    def arrays(self, names=MODEL_FIELDS + TRAIN_FIELDS):
        """{name: array} of the model inputs (and training targets) for a tf.data pipeline."""
        return {name: getattr(self, name) for name in names}


def _check_window_settings(max_seq_length, doc_stride, max_query_length):
    if doc_stride < 1 or max_query_length < 1:
        raise UserError(f"doc_stride ({doc_stride}) and max_query_length must be >= 1")
    if max_seq_length - max_query_length - 3 < 1:
        raise UserError(
            f"max_seq_length {max_seq_length} leaves no room for the document after a "
            f"{max_query_length}-token query and 3 special tokens; raise --seq-length or lower "
            "--max-query-length"
        )


def _doc_spans(num_tokens, max_tokens_for_doc, doc_stride):
    """(starts, lengths) of Google's sliding windows over `num_tokens` document tokens."""
    starts, lengths, start = [], [], 0
    while start < num_tokens:
        length = min(num_tokens - start, max_tokens_for_doc)
        starts.append(start)
        lengths.append(length)
        if start + length == num_tokens:
            break
        start += min(length, doc_stride)
    return starts, lengths


def _max_context_span(starts, lengths, num_tokens):
    """int [num_tokens]: for each document token, the window where it has the most context.

    Score = min(left, right context) + 0.01 * window length; the first window wins ties (Google's
    `_check_is_max_context`).
    """
    starts, lengths = np.asarray(starts)[:, None], np.asarray(lengths)[:, None]
    pos = np.arange(num_tokens)[None, :]
    inside = (pos >= starts) & (pos < starts + lengths)
    score = np.minimum(pos - starts, starts + lengths - 1 - pos) + 0.01 * lengths
    return np.argmax(np.where(inside, score, -np.inf), axis=0)


def _improve_answer_span(doc_ids, start, end, answer_ids):
    """The sub-span of [start, end] whose tokens equal the tokenised answer, else [start, end]."""
    for new_start in range(start, end + 1):
        for new_end in range(end, new_start - 1, -1):
            if doc_ids[new_start : new_end + 1] == answer_ids:
                return new_start, new_end
    return start, end


class _TokenisedDocs:
    """WordPiece ids of each context, tokenised word by word (as Google does) in one batch."""

    def __init__(self, examples, tokenizer):
        self.index, docs = {}, []
        for example in examples:
            if id(example.doc_tokens) not in self.index:
                self.index[id(example.doc_tokens)] = len(docs)
                docs.append(example.doc_tokens)
        words = list({w: None for doc in docs for w in doc})
        pieces = dict(zip(words, tokenizer.encode_batch(words)))
        self.ids, self.tok_to_orig, self.orig_to_tok = [], [], []
        for doc in docs:
            word_pieces = [pieces[w] for w in doc]
            counts = np.fromiter(map(len, word_pieces), np.int64, len(doc))
            self.ids.append([t for p in word_pieces for t in p])
            self.tok_to_orig.append(np.repeat(np.arange(len(doc), dtype=np.int32), counts))
            self.orig_to_tok.append(np.cumsum(counts) - counts)

    def of(self, example):
        i = self.index[id(example.doc_tokens)]
        return self.ids[i], self.tok_to_orig[i], self.orig_to_tok[i]


def _answer_token_span(example, doc_ids, orig_to_tok, answer_ids):
    """Inclusive WordPiece span of a training answer in its whole document."""
    start = int(orig_to_tok[example.start_position])
    if example.end_position < len(example.doc_tokens) - 1:
        end = int(orig_to_tok[example.end_position + 1]) - 1
    else:
        end = len(doc_ids) - 1
    return _improve_answer_span(doc_ids, start, end, answer_ids)


def convert_examples_to_features(
    examples, tokenizer, max_seq_length, doc_stride, max_query_length, is_training
):
    """Google's SQuAD windows: one feature per document window of every example.

    The query keeps its first `max_query_length` tokens; the document is cut into windows of
    `max_seq_length - len(query) - 3` tokens that start `min(window, doc_stride)` apart.

    Args:
      examples: list of SquadExample (from `read_squad_examples`).
      tokenizer: `tokenization.FullTokenizer` (uses `encode_batch`, `vocab`, `inv_vocab`).
      max_seq_length, doc_stride, max_query_length: int window settings.
      is_training: compute answer positions (examples must come from a training read).

    Returns:
      Features (see its docstring for every array's dtype and shape).
    """
    _check_window_settings(max_seq_length, doc_stride, max_query_length)
    tokenization.check_special_tokens(
        tokenizer.vocab, tokenizer.vocab_file, tokenization.TASK_SPECIAL_TOKENS
    )
    cls_id, sep_id = tokenizer.vocab["[CLS]"], tokenizer.vocab["[SEP]"]
    docs = _TokenisedDocs(examples, tokenizer)
    queries = tokenizer.encode_batch([e.question_text for e in examples])
    answers = [None] * len(examples)
    if is_training:
        has_answer = [i for i, e in enumerate(examples) if not e.is_impossible]
        encoded = tokenizer.encode_batch([examples[i].orig_answer_text for i in has_answer])
        for i, ids in zip(has_answer, encoded):
            answers[i] = ids
    rows = {name: [] for name in ARRAY_FIELDS if name not in ("unique_ids", "input_mask")}
    num_tokens = []  # real tokens per window
    for example_index, example in enumerate(examples):
        query = queries[example_index][:max_query_length]
        doc_ids, tok_to_orig, orig_to_tok = docs.of(example)
        answer = None
        if answers[example_index] is not None:
            answer = _answer_token_span(example, doc_ids, orig_to_tok, answers[example_index])
        starts, lengths = _doc_spans(len(doc_ids), max_seq_length - len(query) - 3, doc_stride)
        best_span = _max_context_span(starts, lengths, len(doc_ids)) if starts else None
        offset = len(query) + 2  # [CLS] query [SEP]
        for span_index, (start, length) in enumerate(zip(starts, lengths)):
            tokens = [cls_id, *query, sep_id, *doc_ids[start : start + length], sep_id]
            input_ids = np.zeros(max_seq_length, np.int32)
            input_ids[: len(tokens)] = tokens
            segment_ids = np.zeros(max_seq_length, np.int32)
            segment_ids[offset : len(tokens)] = 1
            to_orig = np.full(max_seq_length, -1, np.int32)
            to_orig[offset : offset + length] = tok_to_orig[start : start + length]
            max_context = np.zeros(max_seq_length, np.bool_)
            max_context[offset : offset + length] = best_span[start : start + length] == span_index
            start_position = end_position = 0
            if answer is not None and start <= answer[0] and answer[1] < start + length:
                start_position, end_position = (
                    answer[0] - start + offset,
                    answer[1] - start + offset,
                )
            rows["input_ids"].append(input_ids)
            num_tokens.append(len(tokens))
            rows["segment_ids"].append(segment_ids)
            rows["token_to_orig_map"].append(to_orig)
            rows["token_is_max_context"].append(max_context)
            rows["start_positions"].append(start_position)
            rows["end_positions"].append(end_position)
            rows["is_impossible"].append(int(example.is_impossible))
            rows["example_index"].append(example_index)
            rows["doc_span_index"].append(span_index)
    num = len(num_tokens)
    rows["unique_ids"] = range(FIRST_UNIQUE_ID, FIRST_UNIQUE_ID + num)
    # [N, S]: 1 on the real tokens.
    rows["input_mask"] = np.arange(max_seq_length)[None, :] < np.asarray(num_tokens)[:, None]
    arrays = {name: np.asarray(rows[name], dtype) for name, dtype in ARRAY_FIELDS.items()}
    for name in _MATRIX_FIELDS:  # [N, S] even when N = 0
        arrays[name] = arrays[name].reshape(num, max_seq_length)
    return Features(**arrays, id_to_token=_id_to_token(tokenizer.inv_vocab))


def _id_to_token(inv_vocab):
    table = [""] * (max(inv_vocab) + 1)
    for i, token in inv_vocab.items():
        table[i] = token
    return table


# --------------------------------------------------------------------------------------- cache


def _sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _atomic_save_npz(path, arrays):
    """np.savez to a temporary file beside `path`, then rename (a crash leaves no half cache)."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".squad.", suffix=".npz.tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


# On disk, 0/1 matrices take one byte and word indices two when they fit (the training set's
# [88k, 384] matrices would otherwise take 136 MB each).
_DISK_DTYPES = {"input_mask": np.uint8, "segment_ids": np.uint8, "token_is_max_context": np.uint8}


def _save_cache(npz_path, json_path, features, settings, input_file):
    arrays = {}
    for name in ARRAY_FIELDS:
        array = getattr(features, name)
        dtype = _DISK_DTYPES.get(name)
        if name == "token_to_orig_map" and (array.size == 0 or array.max() < 2**15):
            dtype = np.int16
        arrays[name] = array.astype(dtype) if dtype else array
    _atomic_save_npz(npz_path, arrays)
    # The sidecar is written last: a cache counts only when both files agree.
    sidecar = {**settings, "input_file": os.path.abspath(input_file), "num_features": len(features)}
    atomic_write_json(json_path, sidecar)


def _load_cache(npz_path, json_path, settings, num_examples, id_to_token):
    """The cached Features, or None with the reason why it cannot be used."""
    present = os.path.exists(npz_path) + os.path.exists(json_path)
    if present < 2:
        return None, "one of its two files is missing" if present else None
    try:
        with open(json_path, encoding="utf-8") as f:
            sidecar = json.load(f)
        num = sidecar.pop("num_features")
        sidecar.pop("input_file")
        if sidecar != settings:
            return None, "it was made with other settings"
        with np.load(npz_path) as npz:
            arrays = {name: npz[name].astype(dtype) for name, dtype in ARRAY_FIELDS.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError, zipfile.BadZipFile) as err:
        return None, f"it is unreadable ({type(err).__name__}: {err})"
    seq = settings["max_seq_length"]
    for name, array in arrays.items():
        shape = (num, seq) if name in _MATRIX_FIELDS else (num,)
        if array.shape != shape:
            return None, f"array {name} has shape {array.shape}, expected {shape}"
    if num and arrays["example_index"].max() >= num_examples:
        return None, "it refers to more examples than the input file has"
    return Features(**arrays, id_to_token=id_to_token), None


def load_or_build_features(
    input_file,
    tokenizer,
    vocab_file,
    do_lower_case,
    max_seq_length,
    doc_stride,
    max_query_length,
    is_training,
    version_2_with_negative,
    cache_dir=None,
):
    """Reads `input_file` and returns its features, from a cache in `cache_dir` when valid.

    The cache is `{seq}_{stride}_{qlen}_SQuAD{11|20}_{train|eval}_{key}.npz` plus a `.json` sidecar
    with the settings; `key` hashes everything the features depend on (input and vocab file
    contents, casing, the window settings, training/eval, version, the algorithm version). A cache
    whose sidecar or arrays do not match is rebuilt, never trusted. Both files are written
    atomically.

    Args:
      input_file: SQuAD JSON.
      tokenizer: FullTokenizer over `vocab_file`, or None to build one only if features are built.
      vocab_file, do_lower_case: the vocab and casing (hashed into the cache key).
      max_seq_length, doc_stride, max_query_length, is_training, version_2_with_negative: as in
        `read_squad_examples` and `convert_examples_to_features`.
      cache_dir: directory of the cache, or None for no cache.

    Returns:
      (examples: ExampleList of SquadExample, features: Features).
    """
    _check_window_settings(max_seq_length, doc_stride, max_query_length)
    if tokenizer is not None and tokenizer.do_lower_case != do_lower_case:
        raise ValueError("tokenizer.do_lower_case differs from do_lower_case")
    examples = read_squad_examples(input_file, is_training, version_2_with_negative)

    def build():
        tok = tokenizer or tokenization.FullTokenizer(vocab_file, do_lower_case)
        return convert_examples_to_features(
            examples, tok, max_seq_length, doc_stride, max_query_length, is_training
        )

    if cache_dir is None:
        return examples, build()
    if not os.path.isfile(vocab_file):
        raise UserError(f"vocab file not found: {vocab_file}")
    settings = {
        "cache_format": CACHE_FORMAT,
        "input_sha256": _sha256_file(input_file),
        "vocab_sha256": _sha256_file(vocab_file),
        "do_lower_case": bool(do_lower_case),
        "max_seq_length": int(max_seq_length),
        "doc_stride": int(doc_stride),
        "max_query_length": int(max_query_length),
        "is_training": bool(is_training),
        "version_2_with_negative": bool(version_2_with_negative),
    }
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    version = "SQuAD20" if version_2_with_negative else "SQuAD11"
    split = "train" if is_training else "eval"
    base = f"{max_seq_length}_{doc_stride}_{max_query_length}_{version}_{split}_{key}"
    npz_path = os.path.join(cache_dir, base + ".npz")
    json_path = os.path.join(cache_dir, base + ".json")
    ensure_output_dir(npz_path)
    if tokenizer is not None:
        id_to_token = _id_to_token(tokenizer.inv_vocab)
    else:
        id_to_token = _id_to_token({i: t for t, i in tokenization.load_vocab(vocab_file).items()})
    features, problem = _load_cache(npz_path, json_path, settings, len(examples), id_to_token)
    if features is not None:
        print(f"SQuAD features: {len(features)} windows from cache {npz_path}", file=sys.stderr)
        return examples, features
    if problem:
        print(
            f"SQuAD feature cache {npz_path} is not usable ({problem}); rebuilding", file=sys.stderr
        )
    features = build()
    _save_cache(npz_path, json_path, features, settings, input_file)
    print(f"SQuAD features: {len(features)} windows written to {npz_path}", file=sys.stderr)
    return examples, features


# --------------------------------------------------------------------------------- predictions


def get_final_text(pred_text, orig_text, do_lower_case, verbose=False):
    """Projects a detokenised prediction back onto the original words (Google's `get_final_text`).

    `pred_text` is normalised (lower-cased, punctuation split) while `orig_text` is the original span
    of whole words, so e.g. "Steve Smith's" with prediction "steve smith" becomes "Steve Smith". The
    original text is aligned character by character with its basic-tokenised form, ignoring spaces;
    when the alignment fails, the whole original span is returned (with `verbose`, saying why on
    stderr, as Google's verbose_logging).
    """
    tok_text = " ".join(tokenization.basic_tokenize(orig_text, do_lower_case))
    start = tok_text.find(pred_text)
    end = start + len(pred_text) - 1
    if not pred_text or start == -1 or tok_text[start] == " " or tok_text[end] == " ":
        if verbose:
            print(f"unable to find {pred_text!r} in {orig_text!r}", file=sys.stderr)
        return orig_text
    orig_kept = [i for i, ch in enumerate(orig_text) if ch != " "]  # non-space index -> index
    if len(orig_kept) != len(tok_text) - tok_text.count(" "):
        if verbose:
            print(
                f"length not equal after stripping spaces: {orig_text!r} vs {tok_text!r}",
                file=sys.stderr,
            )
        return orig_text
    # Position among the non-space characters = position minus the spaces before it.
    ns_start = start - tok_text.count(" ", 0, start)
    ns_end = end - tok_text.count(" ", 0, end)
    return orig_text[orig_kept[ns_start] : orig_kept[ns_end] + 1]


def _softmax(scores):
    if not scores:
        return []
    top = max(scores)
    exps = [math.exp(s - top) for s in scores]
    total = sum(exps)
    return [e / total for e in exps]


def _detokenize(tokens):
    text = " ".join(tokens).replace(" ##", "").replace("##", "")
    return " ".join(text.strip().split())


def _top_indexes(logits, n):
    """Indexes of the n largest logits, largest first; ties keep index order (stable)."""
    return np.argsort(-logits, kind="stable")[:n]


def compute_predictions(
    examples,
    features,
    results,
    n_best_size,
    max_answer_length,
    do_lower_case,
    version_2_with_negative,
    null_score_diff_threshold,
    verbose=False,
):
    """Google's n-best decoding of span logits into answer texts (no files; see write_predictions).

    Args:
      examples: the examples the features were made from.
      features: Features.
      results: {unique_id: (start_logits, end_logits)}, float arrays [S]. Unknown ids (e.g. padding
        windows with id -1) are ignored; an example without any result gets no prediction.
      n_best_size: candidates kept per example; max_answer_length: longest span in tokens.
      do_lower_case: casing of the model (for `get_final_text`).
      version_2_with_negative: add the null answer (min over windows of start[0] + end[0]).
      null_score_diff_threshold: v2 predicts "" when null score - best span score exceeds it.
      verbose: report on stderr each answer that cannot be mapped back onto the original text.

    Returns:
      (predictions {id: text}, nbest {id: [{text, probability, start_logit, end_logit}]},
       null_odds {id: null score - best non-null score} (v2, else empty)). When no span is valid,
      the n-best list holds Google's placeholder "empty" but the prediction is "" (Google predicts
      the word "empty").
    """
    unique_ids = features.unique_ids.tolist()
    windows = {}  # example index -> its windows that have results
    for f, (uid, ex) in enumerate(zip(unique_ids, features.example_index.tolist())):
        if uid in results:
            windows.setdefault(ex, []).append(f)
    predictions, nbest_json, null_odds = {}, {}, {}
    for example_index, feature_indexes in windows.items():
        example = examples[example_index]
        prelim, null = [], None  # null: (score, feature, start logit, end logit)
        for f in feature_indexes:
            start_logits, end_logits = (np.asarray(x, np.float64) for x in results[unique_ids[f]])
            if version_2_with_negative:
                score = start_logits[0] + end_logits[0]
                if null is None or score < null[0]:
                    null = (score, f, start_logits[0], end_logits[0])
            starts = _top_indexes(start_logits, n_best_size)
            ends = _top_indexes(end_logits, n_best_size)
            to_orig, max_context = features.token_to_orig_map[f], features.token_is_max_context[f]
            s, e = starts[:, None], ends[None, :]  # [n, 1], [1, n]: every start with every end
            valid = (to_orig[s] >= 0) & (to_orig[e] >= 0) & max_context[s] & (e >= s)
            valid &= e - s + 1 <= max_answer_length
            for i, j in zip(*np.nonzero(valid)):
                start, end = int(starts[i]), int(ends[j])
                prelim.append((f, start, end, float(start_logits[start]), float(end_logits[end])))
        if null is not None:
            prelim.append((null[1], 0, 0, float(null[2]), float(null[3])))
        prelim.sort(key=lambda p: p[3] + p[4], reverse=True)  # stable, as Google's sorted()
        nbest, seen = [], set()
        for f, start, end, start_logit, end_logit in prelim:
            if len(nbest) >= n_best_size:
                break
            text = ""
            if start > 0:
                orig_start = features.token_to_orig_map[f, start]
                orig_end = features.token_to_orig_map[f, end]
                pieces = [features.id_to_token[t] for t in features.input_ids[f, start : end + 1]]
                orig_text = " ".join(example.doc_tokens[orig_start : orig_end + 1])
                text = get_final_text(_detokenize(pieces), orig_text, do_lower_case, verbose)
            if text in seen:
                continue
            seen.add(text)
            nbest.append((text, start_logit, end_logit, True))
        # Google's placeholder "empty" (logits 0) when no span survives. Unlike Google, it is never
        # predicted: the answer is then "" (no answer), and in v2 it only sets the null odds.
        placeholder = ("empty", 0.0, 0.0, False)
        if version_2_with_negative:
            if "" not in seen:
                nbest.append(("", float(null[2]), float(null[3]), True))
            if len(nbest) == 1:
                nbest.insert(0, placeholder)
        if not nbest:
            nbest.append(placeholder)
        probs = _softmax([s + e for _, s, e, _ in nbest])
        qid = example.qas_id
        nbest_json[qid] = [
            {"text": t, "probability": p, "start_logit": s, "end_logit": e}
            for (t, s, e, _), p in zip(nbest, probs)
        ]
        if not version_2_with_negative:
            predictions[qid] = nbest[0][0] if nbest[0][3] else ""
            continue
        best = next(entry for entry in nbest if entry[0])
        null_odds[qid] = float(null[0]) - best[1] - best[2]
        no_answer = null_odds[qid] > null_score_diff_threshold or not best[3]
        predictions[qid] = "" if no_answer else best[0]
    return predictions, nbest_json, null_odds


def write_predictions(
    examples,
    features,
    results,
    n_best_size,
    max_answer_length,
    do_lower_case,
    version_2_with_negative,
    null_score_diff_threshold,
    output_dir,
    verbose=False,
):
    """Decodes answers (see compute_predictions) and writes them to `output_dir` atomically.

    Returns:
      {"predictions": path of predictions.json (id -> text, "" = no answer),
       "nbest": path of nbest_predictions.json, and for v2 "null_odds": path of null_odds.json
       (id -> null score minus best non-null score; the `--na-prob-file` of the v2 evaluation)}.
    """
    predictions, nbest, null_odds = compute_predictions(
        examples,
        features,
        results,
        n_best_size,
        max_answer_length,
        do_lower_case,
        version_2_with_negative,
        null_score_diff_threshold,
        verbose,
    )
    outputs = {"predictions": predictions, "nbest": nbest}
    if version_2_with_negative:
        outputs["null_odds"] = null_odds
    names = {
        "predictions": "predictions.json",
        "nbest": "nbest_predictions.json",
        "null_odds": "null_odds.json",
    }
    paths = {}
    for key, data in outputs.items():
        paths[key] = os.path.join(output_dir, names[key])
        ensure_output_dir(paths[key])
        atomic_write_json(paths[key], data)
    return paths


# --------------------------------------------------------------------------- evaluation sets


def split_articles(data, first, last):
    """A copy of SQuAD JSON `data` holding only articles[first:last] (Python slice semantics)."""
    articles = _articles(data, "SQuAD data")
    picked = articles[first:last]
    if not picked:
        raise UserError(f"articles [{first}:{last}] select nothing from {len(articles)} articles")
    return {**data, "data": copy.deepcopy(picked)}


def keep_first_answers(data):
    """A copy of SQuAD JSON `data` where each question keeps only its first answer.

    Evaluation files list several gold answers per question; Google's training reader needs one.
    """
    out = copy.deepcopy(data)
    for qa in _all_qas(_articles(out, "SQuAD data")):
        if isinstance(qa.get("answers"), list):
            qa["answers"] = qa["answers"][:1]
    return out


def make_v2_from_v1(data, fraction, seed):
    """A SQuAD 2.0-style copy of v1.1 `data`: some questions moved to another article's paragraph.

    Each question is chosen with probability `fraction`; a chosen one is appended to a random
    paragraph of a different article with `is_impossible: true`, `"answers": []` and
    `"plausible_answers": []` (its context cannot answer it). Every other question gets
    `is_impossible: false`. The same seed gives the same file.

    Args:
      data: SQuAD v1.1 JSON (dict with "data"); not modified.
      fraction: float in [0, 1], share of questions made unanswerable.
      seed: int.

    Returns:
      the new JSON dict (version "v2.0").
    """
    if not 0.0 <= fraction <= 1.0:
        raise UserError(f"fraction must be in [0, 1], got {fraction}")
    articles = copy.deepcopy(_articles(data, "SQuAD data"))
    if len(articles) < 2:
        raise UserError("make_v2_from_v1 needs at least 2 articles (questions move between them)")
    rng = random.Random(seed)
    moved = []  # (target article, question)
    for a, article in enumerate(articles):
        for para in article["paragraphs"]:
            kept = []
            for qa in para.get("qas", ()):
                if rng.random() < fraction:
                    target = rng.randrange(len(articles) - 1)
                    moved.append((target + (target >= a), qa))
                else:
                    kept.append({**qa, "is_impossible": False})
            para["qas"] = kept
    for target, qa in moved:
        paragraphs = articles[target]["paragraphs"]
        para = paragraphs[rng.randrange(len(paragraphs))]
        para.setdefault("qas", []).append(
            {**qa, "answers": [], "plausible_answers": [], "is_impossible": True}
        )
    return {**data, "version": "v2.0", "data": articles}


def _parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python3 -m bert_data.squad",
        description="Make SQuAD evaluation sets: a slice of articles, or a v2-style file from v1.1.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    split = sub.add_parser("split", help="keep articles [first:last] (Python slice)")
    split.add_argument("--first", type=int, default=0)
    split.add_argument("--last", type=int, default=None)
    split.add_argument(
        "--first-answer-only", action="store_true", help="keep one answer per question (training)"
    )
    make = sub.add_parser("make-v2", help="move a fraction of questions to other articles")
    make.add_argument("--fraction", type=float, default=1 / 3)
    make.add_argument("--seed", type=int, default=12345)
    for p in (split, make):
        p.add_argument("input_file")
        p.add_argument("output_file")
    return parser.parse_args(argv)


@cli_main
def main(argv=None):
    args = _parse_args(argv)
    data = read_json(args.input_file, "SQuAD file")
    if args.command == "split":
        out = split_articles(data, args.first, args.last)
        if args.first_answer_only:
            out = keep_first_answers(out)
    else:
        out = make_v2_from_v1(data, args.fraction, args.seed)
    ensure_output_dir(args.output_file)
    atomic_write_json(args.output_file, out)
    questions = sum(1 for _ in _all_qas(out["data"]))
    print(f"wrote {args.output_file}: {len(out['data'])} articles, {questions} questions")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Text -> BERT pretraining TFRecords (MLM + NSP), Google's algorithm, streamed and parallel.

Input: one sentence per line, a blank line between documents. The input files are cut, at blank lines,
into chunks of about `--chunk-size-mb` (byte ranges; the main process reads only around the cuts). Each
chunk is an independent unit of work with its own seed derived from (`--seed`, chunk index): one worker
reads it, tokenises it, turns it into A/B instances `--duplication-factor` times (random "next" segments
are drawn from the same chunk), masks, shuffles and serialises them. Chunks are written in input order,
instances round-robin across the output files, so the output bytes depend only on the inputs and the flags,
never on `--num-workers`.

Differences from Google's script, all deliberate: random next segments and the final shuffle are within a
chunk rather than the whole corpus (that is what bounds memory); the reference app's `num_to_predict` rule
(at least `len - seq + mask` predictions, so remasked sequences fit); truncation draws the number of tokens
cut at the front from the same binomial law as Google's token-by-token coin flips; the masked positions are
a uniform random subset drawn directly (Floyd's algorithm) rather than a prefix of a shuffled list.
"""

import os
import sys

if __package__ in (None, ""):  # run as a file: import from the repository root, not bert_data/
    sys.path[0] = os.path.dirname(os.path.abspath(sys.path[0]))

import codecs
import contextlib
import ctypes
import gc
import glob
import itertools
import multiprocessing
import multiprocessing.connection
import random
import re
import signal
import tempfile
import time
import types

import numpy as np
from numpy.random import SeedSequence, default_rng  # imported once here, not in every worker

from bert_data import packing, records
from bert_data.tokenization import FullTokenizer, check_casing, check_special_tokens
from common import cli, fingerprint
from common.cli import Option
from common.errors import UserError, cli_main
from common.fileio import atomic_outputs, ensure_output_dir
from common.shards import check_shard, contiguous_share, part_path

TOOL_VERSION = 1  # raise when the same flags start writing different records

STAT_KEYS = (
    "documents",
    "instances",
    "input_tokens",
    "real_tokens",
    "masked",
    "mask_token",
    "kept",
    "random_token",
    "random_next",
    "replaced_bytes",
    "packs",
    "build_seconds",
    "packing_seconds",
)

# ---------------------------------------------------------------------------------------------
# Reading


class _ReplacementCounter:
    """Codec error handler that replaces undecodable bytes with U+FFFD and counts them."""

    count = 0

    @classmethod
    def handler(cls, err):
        cls.count += err.end - err.start
        return "\ufffd", err.end


codecs.register_error("bert_data_count", _ReplacementCounter.handler)


def expand_inputs(spec):
    """Comma-separated glob patterns -> sorted, de-duplicated file list (one-line error if none)."""
    files = []
    for pattern in [p.strip() for p in spec.split(",") if p.strip()]:
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        matches = [m for m in matches if os.path.isfile(m)]
        if not matches:
            raise UserError(f"input file not found: {pattern}")
        files += [m for m in matches if m not in files]
    if not files:
        raise UserError("no input files given (--input-file)")
    return files


def read_chunks(files, chunk_bytes):
    """Yields lists of documents (each a list of non-empty stripped lines), ~chunk_bytes of text each."""
    chunk, size, document = [], 0, []
    for path in files:
        with open(path, encoding="utf-8", errors="bert_data_count") as f:
            for line in f:
                line = line.strip()
                if line:
                    document.append(line)
                    size += len(line) + 1
                    continue
                if document:
                    chunk.append(document)
                    document = []
                if size >= chunk_bytes:
                    yield chunk
                    chunk, size = [], 0
        # A file's end ends its last document (Google starts a new one per blank line only).
        if document:
            chunk.append(document)
            document = []
    if chunk:
        yield chunk


# A line of ASCII whitespace between two newlines: a document boundary where the input may be cut.
_BLANK_LINE = re.compile(rb"\n[ \t\r\f\v]*\n")


def plan_chunks(files, chunk_bytes):
    """Cuts the input into chunks of about `chunk_bytes` bytes, at blank lines, without reading it all.

    Yields:
      lists of (path, start, end) byte ranges; each range ends with a blank line or with its file, so it
      holds whole documents (see `read_documents`). The cuts depend only on the files and chunk_bytes.
    """
    ranges, size = [], 0
    for path in files:
        file_size = os.path.getsize(path)
        start = 0
        with open(path, "rb") as f:
            while start < file_size:
                end = _after_blank_line(f, start + chunk_bytes - size, file_size)
                ranges.append((path, start, end))
                size += end - start
                start = end
                if size >= chunk_bytes:
                    yield ranges
                    ranges, size = [], 0
    if ranges:
        yield ranges


def _after_blank_line(f, position, file_size):
    """Offset just past the first blank line found from `position` on, or the file's size."""
    if position >= file_size:
        return file_size
    f.seek(position)
    buffer = b""
    while True:
        block = f.read(1 << 16)
        if not block:
            return file_size
        buffer += block
        match = _BLANK_LINE.search(buffer)
        if match:
            return position + match.end()
        # A blank line can only begin at the last newline read: keep the buffer from there on.
        newline = buffer.rfind(b"\n")
        keep_from = newline if newline >= 0 else len(buffer)
        position += keep_from
        buffer = buffer[keep_from:]


def read_documents(ranges):
    """The documents of a chunk from `plan_chunks`, read as `read_chunks` reads text.

    Returns:
      (non-empty stripped lines, list of str; number of lines of each document, list of int;
      number of undecodable bytes replaced by U+FFFD).
    """
    lines, doc_lines = [], []
    replaced = _ReplacementCounter.count
    for path, start, end in ranges:
        with open(path, "rb") as f:
            f.seek(start)
            text = f.read(end - start).decode("utf-8", errors="bert_data_count")
        if "\r" in text:  # universal newlines, as text-mode files read them
            text = text.replace("\r\n", "\n").replace("\r", "\n")
        count = 0
        for line in map(str.strip, text.split("\n")):
            if line:
                lines.append(line)
                count += 1
            elif count:
                doc_lines.append(count)
                count = 0
        if count:  # a file's end ends its last document
            doc_lines.append(count)
    return lines, doc_lines, _ReplacementCounter.count - replaced


# ---------------------------------------------------------------------------------------------
# Instances (per chunk, in a worker)


def _segment_pairs(doc_spans, sent_len, sent_start, seq_length, short_seq_prob, rng):
    """Google's A/B procedure on sentence lengths; segments are contiguous token ranges.

    Args:
      doc_spans: list of (first sentence index, number of sentences) per document.
      sent_len: token count of each sentence (documents' sentences are consecutive), a list.
      sent_start: prefix sums of sent_len (first token of each sentence), a list.
      rng: random.Random of the chunk.
    Returns:
      list of (a_first_sentence, a_end_sentence, b_first_sentence, b_end_sentence, is_random_next).
    """
    max_num_tokens = seq_length - 3
    pairs = []
    n_docs = len(doc_spans)
    random = rng.random  # uniform integers below are int(random() * n): same law as randint
    for doc_index, (first, count) in enumerate(doc_spans):
        target = max_num_tokens
        if random() < short_seq_prob:
            target = 2 + int(random() * (max_num_tokens - 1))
        chunk_start, chunk_len, length, i = first, 0, 0, 0
        while i < count:
            chunk_len += 1
            length += sent_len[first + i]
            if i == count - 1 or length >= target:
                a_end = 1 if chunk_len < 2 else 1 + int(random() * (chunk_len - 1))
                a_lo, a_hi = chunk_start, chunk_start + a_end
                if chunk_len == 1 or random() < 0.5:
                    target_b = target - (sent_start[a_hi] - sent_start[a_lo])
                    other = doc_index
                    for _ in range(10):
                        other = int(random() * n_docs)
                        if other != doc_index:
                            break
                    o_first, o_count = doc_spans[other]
                    b_lo = o_first + int(random() * o_count)
                    b_hi, got = b_lo, 0
                    while b_hi < o_first + o_count:
                        got += sent_len[b_hi]
                        b_hi += 1
                        if got >= target_b:
                            break
                    pairs.append((a_lo, a_hi, b_lo, b_hi, True))
                    i -= chunk_len - a_end  # the unused sentences are put back
                else:
                    pairs.append((a_lo, a_hi, a_hi, chunk_start + chunk_len, False))
                chunk_start, chunk_len, length = first + i + 1, 0, 0
            i += 1
    return pairs


def _truncation_cuts(la, lb, max_num_tokens):
    """Tokens Google's `truncate_seq_pair` removes from A and from B (it always trims the longer side)."""
    excess = np.maximum(la + lb - max_num_tokens, 0)
    a_longer = la > lb
    # A strictly longer: A alone loses up to la-lb, then they alternate starting with B.
    # Otherwise B loses up to lb-la+1 (ties trim B), then they alternate starting with A.
    first = np.where(a_longer, np.minimum(la - lb, excess), np.minimum(lb - la + 1, excess))
    rest = excess - first
    cut_a = np.where(a_longer, first + rest // 2, (rest + 1) // 2)
    cut_b = np.where(a_longer, (rest + 1) // 2, first + rest // 2)
    return cut_a, cut_b


def _whole_word_choice(original, length, cand, k, is_continuation, rng):
    """Google's whole-word masking for one instance: positions chosen, in selection order."""
    groups = []
    for j in range(length):
        if not cand[j]:
            continue
        if groups and is_continuation[original[j]]:
            groups[-1].append(j)
        else:
            groups.append([j])
    rng.shuffle(groups)
    chosen = []
    for group in groups:
        if len(chosen) >= k:
            break
        if len(chosen) + len(group) > k:
            continue
        chosen += group
    return chosen


def build_chunk(chunk_index, ranges, cfg):
    """Reads, tokenises, builds, masks and serialises one chunk (byte ranges from `plan_chunks`).

    Records are written grouped by their index modulo cfg["num_shards"] (the instances with index
    0, S, 2S, ... first, then 1, S+1, ...; S = number of output files), so that each output file's
    share of the chunk is one contiguous byte range (see `_write_chunk`).

    Returns:
      (framed TFRecord bytes uint8 [total], per-record framed byte lengths int64 [n] in written order,
      stats dict).
    """
    started = time.perf_counter()
    py_seed, np_seed = SeedSequence([cfg["seed"], chunk_index]).generate_state(2)
    rng = random.Random(int(py_seed))
    gen = default_rng(int(np_seed))
    stats = dict.fromkeys(STAT_KEYS, 0)
    lines, doc_lines, stats["replaced_bytes"] = read_documents(ranges)
    flat, line_len = _worker_tokenizer(cfg).encode_flat(lines)  # the chunk's tokens, in order
    stats["input_tokens"] = int(flat.size)
    # Sentences that tokenise to nothing are dropped (Google keeps only non-empty ones).
    kept = line_len > 0
    kept_before = np.concatenate([[0], np.cumsum(kept)])[np.cumsum(doc_lines, dtype=np.int64)]
    doc_spans, sentence = [], 0
    for count in np.diff(kept_before, prepend=0).tolist():
        if count:
            doc_spans.append((sentence, count))
            sentence += count
    stats["documents"] = len(doc_spans)
    sent_len = line_len[kept]
    sent_start = np.concatenate([[0], np.cumsum(sent_len)])
    sent_lengths, sent_starts = sent_len.tolist(), sent_start.tolist()
    seq, short = cfg["sequence_length"], cfg["short_seq_prob"]
    pairs = []
    for _ in range(cfg["duplication_factor"] if doc_spans else 0):
        pairs += _segment_pairs(doc_spans, sent_lengths, sent_starts, seq, short, rng)
    if not pairs:
        return np.zeros(0, np.uint8), np.zeros(0, np.int64), stats
    # The final shuffle, applied to the pair list: every [n, seq] matrix is built in final order.
    pairs = np.asarray(pairs, np.int64)[gen.permutation(len(pairs))]
    features = _instances(
        flat, sent_start[pairs[:, :4]], pairs[:, 4].astype(bool), cfg, rng, gen, stats
    )
    n = len(pairs)
    if cfg["packing"]:
        features, n = packing.pack_chunk(features, cfg, gen, stats)
    shards = cfg["num_shards"]
    if shards > 1:  # written grouped by output file (the same records as with one output)
        order = np.concatenate([np.arange(r, n, shards) for r in range(shards)])
        features = [(name, v[order], None if c is None else c[order]) for name, v, c in features]
    data, lengths = records.encode_records(features, n)
    stats["build_seconds"] = time.perf_counter() - started
    return data, lengths, stats


def _instances(flat, bounds, is_random, cfg, rng, gen, stats):
    """Truncated, masked instances as TFRecord features (see `records.encode_records`).

    Args:
      flat: the chunk's token ids, int32 [tokens].
      bounds: token offsets [n, 4] of A's start and end, then B's start and end.
      is_random: bool [n], B is a random segment (the NSP label).
      stats: dict, instance counts are added to it.
    Returns:
      list of (feature name, values [n, width], row lengths or None).
    """
    seq, P = cfg["sequence_length"], cfg["mask_tokens"]
    n = len(bounds)
    a_lo, b_lo = bounds[:, 0], bounds[:, 2]
    la, lb = bounds[:, 1] - a_lo, bounds[:, 3] - b_lo
    cut_a, cut_b = _truncation_cuts(la, lb, seq - 3)
    front_a, front_b = gen.binomial(cut_a, 0.5), gen.binomial(cut_b, 0.5)
    # int32 from here on: the [n, seq] matrices are the bulk of the work (half the memory traffic).
    a_lo, b_lo = (a_lo + front_a).astype(np.int32), (b_lo + front_b).astype(np.int32)
    la, lb = (la - cut_a).astype(np.int32), (lb - cut_b).astype(np.int32)
    length = la + lb + 3

    # Token matrix [n, seq]: [CLS] A [SEP] B [SEP] then padding, gathered from the chunk's tokens
    # (index flat.size is a 0 appended for padding; the three special slots are set afterwards).
    j = np.arange(seq, dtype=np.int32)[None, :]
    real = j < length[:, None]
    src = np.where(j <= la[:, None], (a_lo - 1)[:, None], (b_lo - la - 2)[:, None]) + j
    original = np.concatenate([flat, np.zeros(1, flat.dtype)])[np.where(real, src, flat.size)]
    rows = np.arange(n)
    original[:, 0] = cfg["cls_id"]
    original[rows, la + 1] = cfg["sep_id"]
    original[rows, length - 1] = cfg["sep_id"]
    segment = (j >= (la + 2)[:, None]) & real

    # Masking: which positions, then the 80/10/10 replacement.
    k = np.minimum(P, np.maximum(1, np.rint(length * cfg["mlm_prob"]).astype(np.int32)))
    k = np.minimum(np.maximum(k, length - seq + P), length - 3)
    if cfg["whole_word_masking"]:
        sep = (j == la[:, None] + 1) | (j == length[:, None] - 1)
        cand = real & (j >= 1) & ~sep
        positions = np.full((n, P), seq, np.int32)
        for r in range(n):
            picks = _whole_word_choice(original[r], length[r], cand[r], k[r], cfg["is_cont"], rng)
            positions[r, : len(picks)] = picks
        k = (positions < seq).sum(axis=1)
    else:
        # A uniform k-subset of the la + lb candidates (Floyd's algorithm, vectorised over rows),
        # mapped to positions: candidate q is position q + 1 in A, q + 2 in B (after the first [SEP]).
        chosen = _random_subsets(la + lb, k, P, gen)
        positions = np.where(chosen < la[:, None], chosen + 1, chosen + 2)
        positions = np.where(np.arange(P)[None, :] < k[:, None], positions, seq)
    positions = np.sort(positions, axis=1)  # real positions first, ascending; empty slots = seq
    valid = positions < seq
    labels = np.where(valid, np.take_along_axis(original, np.where(valid, positions, 0), axis=1), 0)
    draw = gen.random((n, P))
    random_ids = gen.integers(0, cfg["vocab_size"], (n, P), dtype=np.int32)
    replacement = np.where(draw < 0.8, cfg["mask_id"], np.where(draw < 0.9, labels, random_ids))
    input_ids = original.copy()
    input_ids[rows[:, None].repeat(P, axis=1)[valid], positions[valid]] = replacement[valid]

    stats["instances"] = n
    stats["real_tokens"] = int(length.sum())
    stats["masked"] = int(valid.sum())
    stats["mask_token"] = int(((draw < 0.8) & valid).sum())
    stats["kept"] = int(((draw >= 0.8) & (draw < 0.9) & valid).sum())
    stats["random_token"] = stats["masked"] - stats["mask_token"] - stats["kept"]
    stats["random_next"] = int(is_random.sum())

    weights = valid.astype(np.float32)
    if cfg["remask"]:
        features = _remask_features(input_ids, segment, real, positions, valid, labels, k, cfg)
        features += [("masked_lm_weights", weights, None)]
    else:
        features = [
            ("input_ids", input_ids, None),
            ("input_mask", real, None),
            ("segment_ids", segment, None),
            ("masked_lm_positions", np.where(valid, positions, 0), None),
            ("masked_lm_ids", labels, None),
            ("masked_lm_weights", weights, None),
        ]
    return features + [("next_sentence_labels", is_random[:, None], None)]


def _random_subsets(count, k, width, gen):
    """Uniform random k-subsets of range(count), one per row (Floyd's algorithm, vectorised over rows).

    Args:
      count: int [n], the size of each row's set (count >= k).
      k: int [n], how many to choose in each row (k <= width).
      width: columns of the result.
      gen: np.random.Generator.
    Returns:
      int32 [n, width]: row r holds its k[r] distinct choices first (in no particular order), then
      count[r] (never a choice).
    """
    # Step i draws uniformly from range(bound_i + 1), bound_i = count - k + i; a value already taken
    # is replaced by bound_i itself, which no earlier step could take.
    n = count.shape[0]
    bound = (count - k)[:, None] + np.arange(width, dtype=np.int32)  # [n, width]
    chosen = (gen.random(bound.shape) * (bound + 1)).astype(np.int32)
    taken = np.zeros((n, int(bound.max()) + 1), bool)  # [n, values]
    rows = np.arange(n)
    for i in range(width):
        pick = np.where(taken[rows, chosen[:, i]], bound[:, i], chosen[:, i])
        chosen[:, i] = pick
        taken[rows, pick] = True
    return np.where(np.arange(width) < k[:, None], chosen, count[:, None])


def _remask_features(input_ids, segment, real, positions, valid, labels, k, cfg):
    """The static-mask layout (REFERENCE_APP.md §4.3): masked slots first, then the other tokens."""
    n, seq = input_ids.shape
    P = positions.shape[1]
    is_masked = np.zeros((n, seq), bool)
    rows = np.broadcast_to(np.arange(n)[:, None], (n, P))
    is_masked[rows[valid], positions[valid]] = True
    # Unmasked real positions in order: a stable sort puts them first.
    rest = np.argsort(~real | is_masked, axis=1, kind="stable")  # [n, seq]
    n_rest = (real & ~is_masked).sum(axis=1)
    slot = np.arange(seq)[None, :]
    rest_src = np.take_along_axis(rest, np.clip(slot - P, 0, seq - 1), axis=1)
    masked_src = np.take_along_axis(positions, np.clip(slot, 0, P - 1), axis=1)
    use_masked = slot < k[:, None]
    use_rest = (slot >= P) & (slot < P + n_rest[:, None])
    src = np.where(use_masked, masked_src, np.where(use_rest, rest_src, 0))
    filled = use_masked | use_rest
    ids = np.where(filled, np.take_along_axis(input_ids, src, axis=1), 0)
    seg = np.where(filled, np.take_along_axis(segment, src, axis=1), 0)
    position = np.where(filled, src, cfg["pad_position_value"])
    return [
        ("input_ids", ids, None),
        ("input_position", position, None),
        ("segment_ids", seg, None),
        ("mask_padding_index", k[:, None], None),
        ("seq_padding_index", (P + n_rest)[:, None], None),
        ("masked_lm_positions", positions, k),
        ("masked_labels", labels, None),
        ("masked_lm_ids", labels, None),
    ]


_TOKENIZER = {}


def _worker_tokenizer(cfg):
    key = (cfg["vocab_file"], cfg["do_lower_case"])
    if key not in _TOKENIZER:
        _TOKENIZER[key] = FullTokenizer(cfg["vocab_file"], cfg["do_lower_case"])
    return _TOKENIZER[key]


def _keep_freed_memory():
    """Asks glibc's malloc to keep freed memory instead of returning it to the OS.

    Every chunk allocates and frees the same NumPy temporaries (a few MB each); returned to the OS, they
    are faulted back in page by page for the next chunk, which costs more than the arithmetic on them.
    No-op where mallopt is missing (other C libraries).
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        # M_TRIM_THRESHOLD: never trim the heap below 1 GB; M_MMAP_THRESHOLD: blocks up to 32 MB
        # (the most it allows) come from the heap, not from mmap.
        libc.mallopt(-1, 1 << 30)
        libc.mallopt(-3, 1 << 25)
    except (OSError, AttributeError):
        pass


# ---------------------------------------------------------------------------------------------
# Driver


def _outputs(spec):
    outputs = [p.strip() for p in spec.split(",") if p.strip()]
    if not outputs:
        raise UserError("no output file given (--output-file)")
    for path in outputs:
        ensure_output_dir(path)
    return outputs


def _check_args(args):
    missing = [f"--{key.replace('_', '-')}" for key in REQUIRED if getattr(args, key) is None]
    if missing:
        raise UserError(f"missing {', '.join(missing)} (see --help)", cli.EX_USAGE)
    if args.sequence_length < 8:
        raise UserError(f"--sequence-length {args.sequence_length} is too small (minimum 8)")
    if not 1 <= args.mask_tokens <= args.sequence_length - 3:
        raise UserError(
            f"--mask-tokens {args.mask_tokens} is impossible for --sequence-length "
            f"{args.sequence_length}: a sequence has at most {args.sequence_length - 3} maskable tokens"
        )
    if not 0.0 < args.mlm_prob < 1.0:
        raise UserError(f"--mlm-prob {args.mlm_prob} must be in (0, 1)")
    if not 0.0 <= args.short_seq_prob <= 1.0:
        raise UserError(f"--short-seq-prob {args.short_seq_prob} must be in [0, 1]")
    if args.duplication_factor < 1:
        raise UserError(f"--duplication-factor {args.duplication_factor} must be at least 1")
    if args.chunk_size_mb <= 0:
        raise UserError(f"--chunk-size-mb {args.chunk_size_mb} must be positive")
    check_shard(args.shard_index, args.num_shards)
    if args.num_shards > 1 and args.max_samples >= 0:
        raise UserError("--max-samples counts instances of the whole run: not with --num-shards")
    packing.check_args(args)


def _option(group, key, kind, default, text, google=None):
    """A flag of this tool; `google` is the spelling of Google's script, accepted as well."""
    extra = (f"--{google}",) if google else ()
    return Option(key, kind, default, text, group=group, extra_flags=extra)


# The reference app's flags (kebab case), each also under Google's spelling where it has one, so
# Google's README command runs unchanged. The defaults are the reference app's, not Google's.
_IO, _DATA, _RUN = "input and output", "instances and masking", "running"
_PACK = "packing (arXiv 2107.02027)"
DEFAULT_SEQUENCES_PER_PACK = 3
OPTIONS = (
    _option(_IO, "input_file", "str", None, "required: input text, comma-separated files or glob patterns", "input_file"),
    _option(_IO, "output_file", "str", None, "required: output TFRecord(s), comma-separated (several = shards)", "output_file"),
    _option(_IO, "vocab_file", "str", None, "required: WordPiece vocab (one token per line)", "vocab_file"),
    _option(_IO, "do_lower_case", "bool", False, "lower-case and strip accents (uncased vocab)", "do_lower_case"),
    _option(_DATA, "sequence_length", "int", 128, "maximum sequence length", "max_seq_length"),
    _option(_DATA, "mask_tokens", "int", 20, "maximum masked positions per sequence", "max_predictions_per_seq"),
    _option(_DATA, "duplication_factor", "int", 6, "passes over the data, each masked anew", "dupe_factor"),
    _option(_DATA, "mlm_prob", "float", 0.15, "masked LM probability", "masked_lm_prob"),
    _option(_DATA, "short_seq_prob", "float", 0.1, "probability of a shorter target length", "short_seq_prob"),
    _option(_DATA, "seed", "int", 1984, "random seed", "random_seed"),
    _option(_DATA, "whole_word_masking", "bool", False, "mask whole words (all ## pieces together)", "do_whole_word_mask"),
    _option(_DATA, "remask", "bool", False, "write the static-mask layout (masked tokens first)"),
    _option(_DATA, "pad_position_value", "int", 384, "input_position of empty slots (remask)"),
    _option(_DATA, "max_samples", "int", -1, "stop after this many instances (-1: all)"),
    _option(_PACK, "packing", "bool", False, "pack several instances into each row (sequence_ids "
            "keep them apart; layout in bert_data/records.py)"),
    _option(_PACK, "max_sequences_per_pack", "int", None, f"most instances in a row (default "
            f"{DEFAULT_SEQUENCES_PER_PACK} with --packing)"),
    Option("packing_algorithm", "str", None, "spfhp: into the pack with the most space left "
           "(the paper's shortest-pack-first); best-fit: the least space that fits "
           f"(default {packing.ALGORITHMS[0]} with --packing)", group=_PACK,
           choices=packing.ALGORITHMS),
    _option(_RUN, "num_workers", "int", os.cpu_count() or 1, "parallel worker processes"),
    _option(_RUN, "chunk_size_mb", "float", 0.25, "text per unit of work (bounds memory)"),
    _option(_RUN, "shard_index", "int", 0, "with --num-shards N: the share of this machine, 0 to N-1"),
    _option(_RUN, "num_shards", "int", 1, "build on N machines: each writes OUTPUT.part-K-of-N, "
            "bert_data.merge_shards joins them into the single run's bytes"),
    _option(_RUN, "quiet", "bool", False, "no progress bar"),
)  # fmt: skip
REQUIRED = ("input_file", "output_file", "vocab_file")


def build_parser():
    """The parser of the flags in `OPTIONS`; its namespace has every option (defaults filled in)."""
    parser = cli.build_parser(
        OPTIONS,
        "create_pretraining_data.py",
        description=__doc__.split("\n\n")[0]
        + " Memory is bounded by chunks, not by corpus size x duplication factor: each worker holds one "
        "chunk (about 60-80x --chunk-size-mb of RAM at seq 128 and duplication 5, plus its tokenizer "
        "cache) and at most 2 x --num-workers finished chunks wait on disk to be written. Google's flag "
        "spellings (--input_file, --max_seq_length, --dupe_factor, ...) "
        "work too.",
        require_config=None,
    )
    parser.set_defaults(**{opt.key: opt.default for opt in OPTIONS})
    return parser


def _format_summary(stats, seconds, seq, outputs):
    inst = max(stats["instances"], 1)
    masked = max(stats["masked"], 1)
    lines = [
        f"documents: {stats['documents']}",
        f"instances: {stats['instances']}",
        f"input tokens: {stats['input_tokens']}",
        f"mean real tokens per instance: {stats['real_tokens'] / inst:.2f}",
        f"real-token fraction: {stats['real_tokens'] / (inst * seq):.4f}",
        f"mean masked positions per instance: {stats['masked'] / inst:.3f}",
        f"masked fraction of real tokens: {stats['masked'] / max(stats['real_tokens'], 1):.4f}",
        "masked as [MASK]/kept/random: "
        f"{stats['mask_token'] / masked:.3f}/{stats['kept'] / masked:.3f}/"
        f"{stats['random_token'] / masked:.3f}",
        f"NSP random-next fraction: {stats['random_next'] / inst:.3f}",
        f"undecodable bytes replaced: {stats['replaced_bytes']}",
        f"seconds: {seconds:.2f} ({stats['input_tokens'] / max(seconds, 1e-9):,.0f} input tokens/s)",
        f"wrote: {', '.join(outputs)}",
    ]
    return "\n".join(lines)


def _chunk_config(args, tok, num_shards):
    """The plain dict every worker needs to build a chunk (picklable, no open handles)."""
    is_cont = None
    if args.whole_word_masking:
        is_cont = np.zeros(max(tok.inv_vocab) + 1, bool)
        is_cont[[i for t, i in tok.vocab.items() if t.startswith("##")]] = True
    return {
        "vocab_file": args.vocab_file,
        "do_lower_case": args.do_lower_case,
        "sequence_length": args.sequence_length,
        "mask_tokens": args.mask_tokens,
        "duplication_factor": args.duplication_factor,
        "mlm_prob": args.mlm_prob,
        "short_seq_prob": args.short_seq_prob,
        "seed": args.seed,
        "remask": args.remask,
        "pad_position_value": args.pad_position_value,
        "whole_word_masking": args.whole_word_masking,
        "is_cont": is_cont,
        "vocab_size": max(tok.inv_vocab) + 1,
        "cls_id": tok.vocab["[CLS]"],
        "sep_id": tok.vocab["[SEP]"],
        "mask_id": tok.vocab["[MASK]"],
        "num_shards": num_shards,
        "first_chunk": 0,
        "packing": args.packing,
        "max_sequences_per_pack": _sequences_per_pack(args),
        "packing_algorithm": args.packing_algorithm or packing.ALGORITHMS[0],
    }


def _sequences_per_pack(args):
    """K of the packed layout, None without --packing."""
    if not args.packing:
        return None
    return args.max_sequences_per_pack or DEFAULT_SEQUENCES_PER_PACK


def _ordered_results(chunks, cfg, num_workers, scratch_dir):
    """Yields (chunk text size, chunk bytes, record lengths, stats) in chunk order.

    With several workers (forked processes, each fed at most 2 chunks at a time), a worker hands its
    chunk's bytes over as a file in `scratch_dir` (its path instead of the bytes): megabytes through a
    pipe would make the worker wait for the main process to read them.
    """
    if num_workers <= 1:
        for index, ranges in enumerate(chunks):
            yield _size(ranges), *build_chunk(cfg["first_chunk"] + index, ranges, cfg)
        return
    workers = _start_workers(num_workers, cfg, scratch_dir)
    finished = False
    try:
        busy = {conn: 0 for _, conn in workers}  # chunks sent to each worker and not yet returned
        sizes, done, next_out = {}, {}, 0
        for index, ranges in itertools.chain(enumerate(chunks), [(None, None)]):
            while index is None or min(busy.values()) >= 2:  # wait for a result
                if next_out in done:
                    yield sizes.pop(next_out), *done.pop(next_out)
                    next_out += 1
                    continue
                if index is None and not sizes:
                    break
                for conn in multiprocessing.connection.wait(list(busy)):
                    chunk, result = _receive(conn)
                    done[chunk] = result
                    busy[conn] -= 1
            if index is None:
                break
            conn = min(busy, key=busy.get)
            conn.send((index, ranges))
            busy[conn] += 1
            sizes[index] = _size(ranges)
        for _, conn in workers:
            conn.send(None)  # no more work: the worker returns
        finished = True
    finally:
        for process, conn in workers:
            if not finished:  # an error, an interrupt or --max-samples reached: stop now
                process.terminate()
            process.join()
            conn.close()


def _start_workers(num_workers, cfg, scratch_dir):
    """Forks the worker processes: [(process, connection to it)]."""
    context = multiprocessing.get_context("fork")
    # Objects made so far (vocab, tokenizer) are shared with the forked workers; frozen, the workers'
    # garbage collector does not write to them, so their memory pages are not copied.
    gc.freeze()
    workers = []
    try:
        for _ in range(num_workers):
            conn, child_conn = context.Pipe()
            process = context.Process(
                target=_worker_loop, args=(child_conn, cfg, scratch_dir), daemon=True
            )
            process.start()
            child_conn.close()
            workers.append((process, conn))
    finally:
        gc.unfreeze()
    return workers


def _worker_loop(conn, cfg, scratch_dir):
    """A worker: builds the chunks it is sent, writes each to a file, returns (index, result)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle
    _keep_freed_memory()
    while (task := conn.recv()) is not None:
        index, ranges = task
        try:
            data, lengths, stats = build_chunk(cfg["first_chunk"] + index, ranges, cfg)
            path = os.path.join(scratch_dir, f"chunk-{index}")
            with open(path, "wb") as f:
                f.write(data)
            conn.send((index, (path, lengths, stats)))
        except Exception as error:  # the main process re-raises it
            conn.send((index, error))


def _receive(conn):
    try:
        index, result = conn.recv()
    except EOFError:
        raise RuntimeError("a worker process died unexpectedly (out of memory?)") from None
    if isinstance(result, Exception):
        raise result
    return index, result


def _size(ranges):
    return sum(end - start for _, start, end in ranges)


def run(args):
    """Runs the whole conversion; returns the stats dict (also printed as a summary).

    With --num-shards N, the chunks (cut from the whole input exactly as in a single run) are
    divided into N contiguous runs and shard --shard-index K builds run K, with the single run's
    per-chunk seeds, into `OUTPUT.part-K-of-N` for each output. Its records are dealt over the
    outputs as if it were a run of its own; `bert_data.merge_shards` undoes that rotation and
    concatenates the parts into the single run's bytes.
    """
    start = time.time()
    _check_args(args)
    files = expand_inputs(args.input_file)
    outputs = [
        part_path(path, args.shard_index, args.num_shards) for path in _outputs(args.output_file)
    ]
    total_bytes = sum(os.path.getsize(f) for f in files)
    if total_bytes == 0:
        raise UserError(f"input is empty: {args.input_file}")
    tok = FullTokenizer(args.vocab_file, args.do_lower_case)
    check_special_tokens(tok.vocab, args.vocab_file)  # [PAD] [UNK] [CLS] [SEP] [MASK]
    check_casing(tok.vocab, args.do_lower_case, args.vocab_file)
    _TOKENIZER[(args.vocab_file, args.do_lower_case)] = tok  # forked workers inherit it
    cfg = _chunk_config(args, tok, len(outputs))
    chunks = plan_chunks(files, int(args.chunk_size_mb * 2**20))
    if args.num_shards > 1:
        planned = list(chunks)  # byte ranges only: cheap, and needed to know this shard's share
        share = contiguous_share(len(planned), args.shard_index, args.num_shards)
        chunks, cfg["first_chunk"] = planned[share.start : share.stop], share.start
        total_bytes = sum(map(_size, chunks))
    stats = dict.fromkeys(STAT_KEYS, 0)
    written = 0  # records (rows when packing)
    stamps = [fingerprint.path_of(path) for path in outputs]
    with atomic_outputs(outputs + stamps) as handles, contextlib.ExitStack() as stack:
        handles, stamp_handles = handles[: len(outputs)], handles[len(outputs) :]
        scratch = None  # workers hand finished chunks over as files here
        if args.num_workers > 1:
            scratch = stack.enter_context(
                tempfile.TemporaryDirectory(
                    prefix=".chunks-", dir=os.path.dirname(os.path.abspath(outputs[0]))
                )
            )
        progress = stack.enter_context(_progress_bar(total_bytes, args.quiet))
        results = stack.enter_context(
            contextlib.closing(_ordered_results(chunks, cfg, args.num_workers, scratch))
        )
        for size, data, lengths, chunk_stats in results:
            progress.update(size)
            keep = len(lengths)
            if args.max_samples >= 0:
                keep = min(keep, max(args.max_samples - stats["instances"], 0))
                chunk_stats["instances"] = keep
            _write_chunk(handles, data, lengths, written, keep)
            written += keep
            for key in STAT_KEYS:
                stats[key] += chunk_stats[key]
            if 0 <= args.max_samples <= stats["instances"]:
                break
        if stats["documents"] == 0 and args.num_shards == 1:
            raise UserError(f"input has no text (only blank lines): {args.input_file}")
        text = fingerprint.text(data_fingerprint(args, tok)).encode()
        for handle in stamp_handles:
            handle.write(text)
    stats["seconds"] = time.time() - start
    summary = _format_summary(stats, stats["seconds"], args.sequence_length, outputs)
    if args.packing:
        summary += "\n" + packing.format_stats(
            stats, args.sequence_length, _sequences_per_pack(args)
        )
    print(summary, file=sys.stderr)
    return stats


def data_fingerprint(args, tok):
    """What the records were made with (`common.fingerprint`); the same for every output and
    every shard."""
    return fingerprint.make(
        "bert_data.create_pretraining_data",
        TOOL_VERSION,
        vocab=fingerprint.file_entry(args.vocab_file, max(tok.inv_vocab) + 1),
        do_lower_case=args.do_lower_case,
        sequence_length=args.sequence_length,
        mask_tokens=args.mask_tokens,
        layout="remask" if args.remask else PACKED_LAYOUT if args.packing else "standard",
        duplication_factor=args.duplication_factor,
        mlm_prob=args.mlm_prob,
        short_seq_prob=args.short_seq_prob,
        seed=args.seed,
        whole_word_masking=args.whole_word_masking,
        pad_position_value=args.pad_position_value if args.remask else None,
        max_samples=args.max_samples,
        **_packing_facts(args),
    )


PACKED_LAYOUT = "packed_sequences"  # not "packed": create_mlm_data's concatenated text


def _packing_facts(args):
    """The fingerprint's packing keys; none without --packing (older fingerprints stay valid)."""
    if not args.packing:
        return {}
    return {
        "packing": args.packing_algorithm or packing.ALGORITHMS[0],
        "max_sequences_per_pack": _sequences_per_pack(args),
    }


def _progress_bar(total_bytes, quiet):
    if quiet:  # tqdm's import alone takes tens of milliseconds
        return contextlib.nullcontext(types.SimpleNamespace(update=lambda n: None))
    from tqdm import tqdm

    return tqdm(total=total_bytes, unit="B", unit_scale=True, desc="text")


def _write_chunk(handles, data, lengths, first_index, keep):
    """Writes a chunk's first `keep` records; record i goes to output (first_index + i) % len(handles).

    Args:
      data: the chunk's bytes (an array), or the path of a file holding them (then deleted).
      lengths: byte length of each record, records grouped by index modulo len(handles) (`build_chunk`).
    """
    shards, n = len(handles), len(lengths)
    ends = np.concatenate([[0], np.cumsum(lengths)]).tolist()
    parts, first = [], 0  # (output, start, stop) byte ranges of the chunk
    for r in range(shards):
        kept = len(range(r, keep, shards))
        if kept:
            parts.append((handles[(first_index + r) % shards], ends[first], ends[first + kept]))
        first += len(range(r, n, shards))
    if not isinstance(data, str):
        for handle, start, stop in parts:
            handle.write(memoryview(data)[start:stop])
        return
    with open(data, "rb") as source:
        for handle, start, stop in parts:
            handle.flush()
            _copy_range(source, handle, start, stop)
    os.remove(data)


def _copy_range(source, target, start, stop):
    """Appends source[start:stop] to target, inside the kernel where it can."""
    try:
        while start < stop:
            copied = os.copy_file_range(source.fileno(), target.fileno(), stop - start, start)
            if not copied:
                break
            start += copied
    except (AttributeError, OSError):
        pass  # no copy_file_range here: copy the rest by hand
    if start < stop:
        source.seek(start)
        target.write(source.read(stop - start))


@cli_main
def main(argv=None):
    args = build_parser().parse_args(argv)
    _keep_freed_memory()
    run(args)


if __name__ == "__main__":
    main()

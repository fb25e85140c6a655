"""Text -> BERT pretraining TFRecords (MLM + NSP), Google's algorithm, streamed and parallel.

Input: one sentence per line, a blank line between documents. The corpus is read as a stream and cut, at
document boundaries, into chunks of about `--chunk-size-mb` of text. Each chunk is an independent unit of
work with its own seed derived from (`--seed`, chunk index): it is tokenised, turned into A/B instances
`--duplication-factor` times (random "next" segments are drawn from the same chunk), masked, shuffled and
serialised by one worker. Chunks are written in input order, instances round-robin across the output files,
so the output bytes depend only on the inputs and the flags, never on `--num-workers`.

Differences from Google's script, all deliberate: random next segments and the final shuffle are within a
chunk rather than the whole corpus (that is what bounds memory); the reference app's `num_to_predict` rule
(at least `len - seq + mask` predictions, so remasked sequences fit); truncation draws the number of tokens
cut at the front from the same binomial law as Google's token-by-token coin flips.
"""

import os
import sys

if __package__ in (None, ""):
    # Run as a file (python3 bert_data/x.py): Python put bert_data/ first on sys.path, where our
    # `inspect.py` would shadow the standard library's. Import from the repository root instead.
    _here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _here]
    sys.path.insert(0, os.path.dirname(_here))


import argparse
import codecs
import contextlib
import glob
import multiprocessing
import random
import time
from collections import deque

import numpy as np

from bert_data import records
from bert_data.errors import UserError, cli_main
from bert_data.fileio import ensure_output_dir
from bert_data.tokenization import FullTokenizer, check_casing

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


def build_chunk(chunk_index, documents, cfg):
    """Tokenises, builds, masks and serialises one chunk.

    Returns:
      (framed TFRecord bytes, per-record byte lengths [n], stats dict).
    """
    seq, P = cfg["sequence_length"], cfg["mask_tokens"]
    seed_seq = np.random.SeedSequence([cfg["seed"], chunk_index])
    py_seed, np_seed = seed_seq.generate_state(2)
    rng = random.Random(int(py_seed))
    gen = np.random.default_rng(int(np_seed))
    tok = _worker_tokenizer(cfg)

    lines = [line for doc in documents for line in doc]
    ids, line_len = tok.encode_flat(lines)
    # Sentences that tokenise to nothing are dropped (Google keeps only non-empty ones).
    doc_spans, sentence = [], 0
    kept = line_len > 0
    line_doc_end = np.cumsum([len(doc) for doc in documents])
    kept_before = np.concatenate([[0], np.cumsum(kept)])[line_doc_end]
    for count in np.diff(np.concatenate([[0], kept_before])).tolist():
        if count:
            doc_spans.append((sentence, count))
            sentence += count
    stats = dict.fromkeys(STAT_KEYS, 0)
    stats["documents"] = len(doc_spans)
    if not doc_spans:
        return b"", np.zeros(0, np.int64), stats
    sent_len = line_len[kept]
    flat = ids  # all tokens of the chunk, documents in order (empty lines contribute none)
    sent_start = np.concatenate([[0], np.cumsum(sent_len)])
    sent_len_list, sent_start_list = sent_len.tolist(), sent_start.tolist()
    stats["input_tokens"] = int(flat.size)

    pairs = []
    for _ in range(cfg["duplication_factor"]):
        pairs += _segment_pairs(
            doc_spans, sent_len_list, sent_start_list, seq, cfg["short_seq_prob"], rng
        )
    if not pairs:
        return b"", np.zeros(0, np.int64), stats
    p = np.asarray(pairs, np.int64)
    a_lo, a_hi = sent_start[p[:, 0]], sent_start[p[:, 1]]
    b_lo, b_hi = sent_start[p[:, 2]], sent_start[p[:, 3]]
    is_random = p[:, 4].astype(bool)
    la, lb = a_hi - a_lo, b_hi - b_lo
    cut_a, cut_b = _truncation_cuts(la, lb, seq - 3)
    front_a, front_b = gen.binomial(cut_a, 0.5), gen.binomial(cut_b, 0.5)
    a_lo, b_lo = a_lo + front_a, b_lo + front_b
    # int32 from here on: the [n, seq] matrices are the bulk of the work (half the memory traffic).
    a_lo, b_lo = a_lo.astype(np.int32), b_lo.astype(np.int32)
    la, lb = (la - cut_a).astype(np.int32), (lb - cut_b).astype(np.int32)
    n = len(p)

    # Token matrix [n, seq]: [CLS] A [SEP] B [SEP] then padding.
    j = np.arange(seq, dtype=np.int32)[None, :]
    la_, lb_ = la[:, None], lb[:, None]
    length = la + lb + 3
    in_a = (j >= 1) & (j <= la_)
    in_b = (j >= la_ + 2) & (j <= la_ + lb_ + 1)
    src = np.where(in_a, a_lo[:, None] + j - 1, np.where(in_b, b_lo[:, None] + j - la_ - 2, 0))
    sep = (j == la_ + 1) | (j == la_ + lb_ + 2)
    real = j < length[:, None]
    original = np.where(in_a | in_b, flat[src], 0)
    original = np.where(j == 0, cfg["cls_id"], np.where(sep, cfg["sep_id"], original))
    segment = ((j >= la_ + 2) & real).astype(np.int32)

    # Masking: which positions, then the 80/10/10 replacement.
    cand = real & (j >= 1) & ~sep
    k = np.minimum(P, np.maximum(1, np.rint(length * cfg["mlm_prob"]).astype(np.int64)))
    k = np.minimum(np.maximum(k, length - seq + P), length - 3)
    if cfg["whole_word_masking"]:
        chosen = np.full((n, P), seq, np.int64)
        for r in range(n):
            picks = _whole_word_choice(original[r], length[r], cand[r], k[r], cfg["is_cont"], rng)
            chosen[r, : len(picks)] = picks
        k = (chosen < seq).sum(axis=1)
    else:
        keys = np.where(cand, gen.random((n, seq), np.float32), np.float32(2.0))
        smallest = np.argpartition(keys, P - 1, axis=1)[:, :P]
        order = np.argsort(np.take_along_axis(keys, smallest, axis=1), axis=1)
        chosen = np.take_along_axis(smallest, order, axis=1)
        chosen = np.where(np.arange(P)[None, :] < k[:, None], chosen, seq)
    positions = np.sort(chosen, axis=1)  # real positions first, ascending; empty slots = seq
    valid = positions < seq
    pos_safe = np.where(valid, positions, 0)
    labels = np.where(valid, np.take_along_axis(original, pos_safe, axis=1), 0)
    draw = gen.random((n, P))
    random_ids = gen.integers(0, cfg["vocab_size"], (n, P))
    replacement = np.where(draw < 0.8, cfg["mask_id"], np.where(draw < 0.9, labels, random_ids))
    input_ids = original.copy()
    rows = np.broadcast_to(np.arange(n)[:, None], (n, P))
    input_ids[rows[valid], positions[valid]] = replacement[valid]

    perm = gen.permutation(n)
    input_ids, original, segment, real = input_ids[perm], original[perm], segment[perm], real[perm]
    positions, valid, labels, k = positions[perm], valid[perm], labels[perm], k[perm]
    is_random, length = is_random[perm], length[perm]

    stats["instances"] = n
    stats["real_tokens"] = int(length.sum())
    stats["masked"] = int(valid.sum())
    stats["mask_token"] = int(((draw[perm] < 0.8) & valid).sum())
    stats["kept"] = int(((draw[perm] >= 0.8) & (draw[perm] < 0.9) & valid).sum())
    stats["random_token"] = stats["masked"] - stats["mask_token"] - stats["kept"]
    stats["random_next"] = int(is_random.sum())

    weights = valid.astype(np.float32)
    nsp = is_random.astype(np.int64)
    full = np.full(n, seq)
    P_rows = np.full(n, P)
    if cfg["remask"]:
        features = _remask_features(input_ids, segment, real, positions, valid, labels, k, cfg)
        features += [("masked_lm_weights", weights.reshape(-1), P_rows)]
    else:
        features = [
            ("input_ids", input_ids.reshape(-1), full),
            ("input_mask", real.astype(np.int64).reshape(-1), full),
            ("segment_ids", segment.reshape(-1), full),
            ("masked_lm_positions", np.where(valid, positions, 0).reshape(-1), P_rows),
            ("masked_lm_ids", labels.reshape(-1), P_rows),
            ("masked_lm_weights", weights.reshape(-1), P_rows),
        ]
    features.append(("next_sentence_labels", nsp, np.ones(n, np.int64)))
    buffer, lengths = records.encode_examples(features, n)
    data, framed = records.frame_records(buffer, lengths)
    return data, framed, stats


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
    row = np.ones(n, np.int64)
    full = np.full(n, seq)
    return [
        ("input_ids", ids.reshape(-1), full),
        ("input_position", position.reshape(-1), full),
        ("segment_ids", seg.reshape(-1), full),
        ("mask_padding_index", k, row),
        ("seq_padding_index", P + n_rest, row),
        ("masked_lm_positions", positions[valid], k),
        ("masked_labels", labels.reshape(-1), np.full(n, P)),
        ("masked_lm_ids", labels.reshape(-1), np.full(n, P)),
    ]


_TOKENIZER = {}


def _worker_tokenizer(cfg):
    key = (cfg["vocab_file"], cfg["do_lower_case"])
    if key not in _TOKENIZER:
        _TOKENIZER[key] = FullTokenizer(cfg["vocab_file"], cfg["do_lower_case"])
    return _TOKENIZER[key]


def _worker_init():
    # Each worker tokenises its own chunk; Rust threads inside each worker would only contend.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"


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


def build_parser():
    parser = argparse.ArgumentParser(
        prog="create_pretraining_data.py",
        description=__doc__.split("\n\n")[0]
        + " Memory is bounded by chunks, not by corpus size x duplication factor: each worker holds one "
        "chunk (about 40x --chunk-size-mb of RAM at seq 128 and duplication 5) and at most "
        "2 x --num-workers finished chunks wait to be written.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    a = parser.add_argument
    a("--input-file", required=True, help="input text: comma-separated files or glob patterns")
    a("--output-file", required=True, help="output TFRecord(s), comma-separated: several = shards")
    a("--vocab-file", required=True, help="WordPiece vocab (one token per line)")
    a("--do-lower-case", action="store_true", help="lower-case and strip accents (uncased vocab)")
    a("--sequence-length", type=int, default=128, help="maximum sequence length")
    a("--mask-tokens", type=int, default=20, help="maximum masked positions per sequence")
    a("--duplication-factor", type=int, default=6, help="passes over the data, each masked anew")
    a("--mlm-prob", type=float, default=0.15, help="masked LM probability")
    a("--short-seq-prob", type=float, default=0.1, help="probability of a shorter target length")
    a("--seed", type=int, default=1984, help="random seed")
    a("--max-samples", type=int, default=-1, help="stop after this many instances (-1: all)")
    a("--remask", action="store_true", help="write the static-mask layout (masked tokens first)")
    a("--pad-position-value", type=int, default=384, help="input_position of empty slots (remask)")
    a("--whole-word-masking", action="store_true", help="mask whole words (all ## pieces together)")
    a("--num-workers", type=int, default=os.cpu_count() or 1, help="parallel worker processes")
    a("--chunk-size-mb", type=float, default=0.25, help="text per unit of work (bounds memory)")
    a("--quiet", action="store_true", help="no progress bar")
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


def _chunk_config(args, tok):
    """The plain dict every worker needs to build a chunk (picklable, no open handles)."""
    is_cont = np.zeros(max(tok.inv_vocab) + 1, bool)
    for token, index in tok.vocab.items():
        is_cont[index] = token.startswith("##")
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
    }


def _ordered_results(chunks, cfg, num_workers):
    """Yields (chunk text size, build_chunk result) in chunk order, at most 2 x workers in flight."""
    if num_workers <= 1:
        for index, documents in enumerate(chunks):
            yield _text_size(documents), build_chunk(index, documents, cfg)
        return
    pool = multiprocessing.get_context("fork").Pool(num_workers, initializer=_worker_init)
    try:
        pending = deque()
        for index, documents in enumerate(chunks):
            pending.append(
                (_text_size(documents), pool.apply_async(build_chunk, (index, documents, cfg)))
            )
            if len(pending) >= 2 * num_workers:
                size, result = pending.popleft()
                yield size, result.get()
        while pending:
            size, result = pending.popleft()
            yield size, result.get()
        pool.close()
        pool.join()
    finally:
        pool.terminate()


def _text_size(documents):
    return sum(len(line) + 1 for doc in documents for line in doc)


def run(args):
    """Runs the whole conversion; returns the stats dict (also printed as a summary)."""
    from tqdm import tqdm

    start = time.time()
    _check_args(args)
    files = expand_inputs(args.input_file)
    outputs = _outputs(args.output_file)
    total_bytes = sum(os.path.getsize(f) for f in files)
    if total_bytes == 0:
        raise UserError(f"input is empty: {args.input_file}")
    tok = FullTokenizer(args.vocab_file, args.do_lower_case)
    check_casing(tok.vocab, args.do_lower_case, args.vocab_file)
    _TOKENIZER[(args.vocab_file, args.do_lower_case)] = tok  # forked workers inherit it
    cfg = _chunk_config(args, tok)
    _ReplacementCounter.count = 0
    temps = [f"{path}.tmp-{os.getpid()}" for path in outputs]
    stats = dict.fromkeys(STAT_KEYS, 0)
    try:
        with contextlib.ExitStack() as stack:
            handles = [stack.enter_context(open(t, "wb")) for t in temps]
            progress = stack.enter_context(
                tqdm(total=total_bytes, unit="B", unit_scale=True, disable=args.quiet, desc="text")
            )
            chunks = read_chunks(files, int(args.chunk_size_mb * 2**20))
            results = stack.enter_context(
                contextlib.closing(_ordered_results(chunks, cfg, args.num_workers))
            )
            for size, (data, lengths, chunk_stats) in results:
                progress.update(size)
                if args.max_samples >= 0:
                    lengths = lengths[: max(args.max_samples - stats["instances"], 0)]
                    chunk_stats["instances"] = len(lengths)
                _write_round_robin(handles, data, lengths, stats["instances"])
                for key in STAT_KEYS:
                    stats[key] += chunk_stats[key]
                if 0 <= args.max_samples <= stats["instances"]:
                    break
            progress.update(max(total_bytes - progress.n, 0))  # it counts characters of text
        if stats["documents"] == 0:
            raise UserError(f"input has no text (only blank lines): {args.input_file}")
        for temp, path in zip(temps, outputs):
            os.replace(temp, path)
    except KeyboardInterrupt:
        raise UserError("interrupted; no output file was written", exit_code=130) from None
    finally:
        for temp in temps:
            if os.path.exists(temp):
                os.remove(temp)
    stats["replaced_bytes"] = _ReplacementCounter.count
    stats["seconds"] = time.time() - start
    print(_format_summary(stats, stats["seconds"], args.sequence_length, outputs), file=sys.stderr)
    return stats


def _write_round_robin(handles, data, lengths, first_index):
    """Record i (global index first_index + i) goes to output (first_index + i) % len(handles)."""
    if len(handles) == 1:
        handles[0].write(memoryview(data)[: int(lengths.sum())])
        return
    view = memoryview(data)
    offset = 0
    for i, length in enumerate(lengths.tolist()):
        handles[(first_index + i) % len(handles)].write(view[offset : offset + length])
        offset += length


@cli_main
def main(argv=None):
    args = build_parser().parse_args(argv)
    run(args)


if __name__ == "__main__":
    main()

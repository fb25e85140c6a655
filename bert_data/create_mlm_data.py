#!/usr/bin/env python3
"""Text -> packed RoBERTa-style MLM TFRecords: token ids only, masks are drawn while training.

    python3 -m bert_data.create_mlm_data --input-file 'wiki/*.txt' --output-file data/mlm_128.tfrecord \
        --tokenizer-file tok/tokenizer.json --sequence-length 128

Input: one sentence per line, blank lines between documents (as create_pretraining_data.py). A
document is its lines joined by single spaces, tokenised with the byte-level BPE of
create_bpe_tokenizer.py (special-token strings in the text are plain text here).

Packing is RoBERTa's FULL-SENTENCES: the documents' tokens form one stream, a `</s>` between two
documents, and the stream is cut into sequences `<s> t_1 ... t_{S-2} </s>` of exactly
--sequence-length S, across sentence and document boundaries. When a sequence ends exactly where a
document ends, its closing `</s>` is the separator (the next sequence does not start with another).
Only the very last sequence can be shorter: it is padded with `<pad>` and its input_mask is 0 there.
With --seed the documents are shuffled (within chunks of about 16 MB of text) before packing;
without it they keep the input order.

Each record holds `input_ids` and `input_mask`, int64 [S]. There is no NSP and no mask here:
bert_data/mlm.py draws new 80/10/10 masks every epoch (dynamic masking) in the tf.data pipeline.
"""

import os
import sys

if __package__ in (None, ""):  # run as a file: import from the repository root, not bert_data/
    sys.path[0] = os.path.dirname(os.path.abspath(sys.path[0]))

import random
import time

import numpy as np

from bert_data import records
from bert_data.create_bpe_tokenizer import BOS, EOS, PAD, load_tokenizer
from bert_data.create_pretraining_data import expand_inputs, read_chunks
from common import fingerprint
from common.cli import Option, build_tool_parser
from common.errors import UserError, cli_main
from common.fileio import atomic_outputs, ensure_output_dir

FEATURES = ("input_ids", "input_mask")
TOOL_VERSION = 1  # raise when the same flags start writing different records
CHUNK_BYTES = 1 << 24
ENCODE_BATCH = 1024  # documents per encode_batch call (the Rust side tokenises them in parallel)


class Packer:
    """Cuts a stream of documents (token id lists) into FULL-SENTENCES sequences.

    Args:
      seq_length: S, tokens per sequence including `<s>` and `</s>`.
      bos, eos, pad: ids of `<s>`, `</s>` and `<pad>`.
    """

    def __init__(self, seq_length, bos, eos, pad):
        self.body = seq_length - 2
        self.bos, self.eos, self.pad = bos, eos, pad
        self.current = []
        self.done = []

    def add(self, ids):
        """Appends one document (list of int token ids; empty documents are skipped)."""
        if not ids:
            return
        if self.current and len(self.current) < self.body:
            self.current.append(self.eos)  # document separator
        start = 0
        while start < len(ids):
            if len(self.current) == self.body:
                self.done.append(self.current)
                self.current = []
            take = min(self.body - len(self.current), len(ids) - start)
            self.current.extend(ids[start : start + take])
            start += take

    def take(self, final=False):
        """The finished sequences so far (and with `final`, the last one, padded).

        Returns:
          (input_ids, input_mask): int32 arrays [N, S].
        """
        rows = self.done
        self.done = []
        if final and self.current:
            rows.append(self.current)
            self.current = []
        width = self.body + 2
        ids = np.full((len(rows), width), self.pad, np.int32)
        mask = np.zeros((len(rows), width), np.int32)
        for r, body in enumerate(rows):
            ids[r, 0], ids[r, 1 : len(body) + 1], ids[r, len(body) + 1] = self.bos, body, self.eos
            mask[r, : len(body) + 2] = 1
        return ids, mask


def pack_documents(documents, seq_length, bos, eos, pad):
    """FULL-SENTENCES packing of token-id documents (see the module docstring).

    Args:
      documents: iterable of lists of int token ids.
      seq_length: S.
      bos, eos, pad: special token ids.
    Returns:
      (input_ids, input_mask): int32 arrays [N, S].
    """
    packer = Packer(seq_length, bos, eos, pad)
    for doc in documents:
        packer.add(doc)
    return packer.take(final=True)


def encode_records(input_ids, input_mask):
    """TFRecord bytes of [N, S] id/mask matrices: (uint8 array, per-record framed lengths [N])."""
    n = len(input_ids)
    return records.encode_records(
        [("input_ids", input_ids, None), ("input_mask", input_mask, None)], n
    )


def tokenize_documents(tokenizer, documents):
    """Yields each document's token ids (lines joined by spaces, no special tokens added)."""
    for start in range(0, len(documents), ENCODE_BATCH):
        batch = [" ".join(lines) for lines in documents[start : start + ENCODE_BATCH]]
        for encoding in tokenizer.encode_batch(batch, add_special_tokens=False):
            yield encoding.ids


CLI_OPTIONS = [
    Option("input_file", "str", None, "input text: comma-separated files or glob patterns",
           required=True, metavar="FILE"),
    Option("output_file", "str", None, "output TFRecord(s), comma-separated: several = shards",
           required=True, metavar="FILE"),
    Option("tokenizer_file", "str", None, "tokenizer.json from create_bpe_tokenizer",
           required=True, metavar="FILE"),
    Option("sequence_length", "int", 128, "tokens per sequence, <s> and </s> included"),
    Option("seed", "int", None, "shuffle the documents with this seed (default: keep order)"),
    Option("quiet", "bool", False, "no progress bar"),
]  # fmt: skip


def build_parser():
    return build_tool_parser(
        CLI_OPTIONS,
        prog="python3 -m bert_data.create_mlm_data",
        description=__doc__.split("\n\n")[0],
    )


def run(args):
    """Runs the conversion; returns the stats dict (also printed as a one-line summary)."""
    from tqdm import tqdm

    start = time.time()
    if args.sequence_length < 3:
        raise UserError(f"--sequence-length {args.sequence_length} is too small (minimum 3)")
    files = expand_inputs(args.input_file)
    outputs = [p.strip() for p in args.output_file.split(",") if p.strip()]
    if not outputs:
        raise UserError("no output file given (--output-file)")
    for path in outputs:
        ensure_output_dir(path)
    tokenizer, ids = load_tokenizer(args.tokenizer_file)
    tokenizer.encode_special_tokens = True  # "<mask>" in the text is text, not the mask token
    packer = Packer(args.sequence_length, ids[BOS], ids[EOS], ids[PAD])
    stats = {"documents": 0, "text_tokens": 0, "sequences": 0, "padding": 0}
    total_bytes = sum(os.path.getsize(f) for f in files)
    stamp = fingerprint.make(
        "bert_data.create_mlm_data",
        TOOL_VERSION,
        vocab=fingerprint.file_entry(args.tokenizer_file, tokenizer.get_vocab_size()),
        sequence_length=args.sequence_length,
        layout="packed",
        seed=args.seed,
    )
    stamps = [fingerprint.path_of(path) for path in outputs]
    with (
        atomic_outputs(outputs + stamps) as all_handles,
        tqdm(
            total=total_bytes, unit="B", unit_scale=True, disable=args.quiet, desc="text"
        ) as progress,
    ):
        handles = all_handles[: len(outputs)]
        for index, documents in enumerate(read_chunks(files, CHUNK_BYTES)):
            if args.seed is not None:
                random.Random(f"{args.seed}-{index}").shuffle(documents)
            for doc in tokenize_documents(tokenizer, documents):
                packer.add(doc)
                stats["documents"] += bool(doc)
                stats["text_tokens"] += len(doc)
            progress.update(sum(len(line) + 1 for doc in documents for line in doc))
            _write(handles, packer.take(), stats)
        _write(handles, packer.take(final=True), stats)
        if stats["documents"] == 0:
            raise UserError(f"input has no text (only blank lines): {args.input_file}")
        for handle in all_handles[len(outputs) :]:
            handle.write(fingerprint.text(stamp).encode())
    seconds = time.time() - start
    print(
        f"wrote {stats['sequences']} sequences of {args.sequence_length} tokens to "
        f"{len(outputs)} file(s) ({', '.join(outputs[:3])}{' ...' if len(outputs) > 3 else ''}) "
        f"from {stats['documents']} documents, {stats['text_tokens']} text tokens; "
        f"{stats['padding']} padding tokens; {seconds:.1f} s",
        file=sys.stderr,
    )
    return stats


def _write(handles, packed, stats):
    """Encodes packed sequences; sequence i (overall) goes to output i % len(handles)."""
    input_ids, input_mask = packed
    if not len(input_ids):
        return
    data, lengths = encode_records(input_ids, input_mask)
    view, ends = memoryview(data), np.cumsum(lengths).tolist()
    if len(handles) == 1:
        handles[0].write(view)
    else:
        for i, end in enumerate(ends):
            start = ends[i - 1] if i else 0
            handles[(stats["sequences"] + i) % len(handles)].write(view[start:end])
    stats["sequences"] += len(input_ids)
    stats["padding"] += int(input_mask.size - input_mask.sum())


@cli_main
def main(argv=None):
    run(build_parser().parse_args(argv))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Megatron-LM's `tools/preprocess_data.py` for GPT-2: raw text -> `<prefix>_<key>_document.bin/.idx`.

    python3 -m gpt2_data.preprocess_data --input wikipedia_data.json \
        --output-prefix wikipedia-gpt2 --vocab-file gpt2-vocab.json --merge-file gpt2-merges.txt \
        --append-eod --workers 8

Output (REFERENCE_GPT2.md §5.6, read by `gpt2_data.megatron.IndexedDataset`): one sequence per
non-empty document, its GPT-2 BPE ids followed, with `--append-eod`, by `<|endoftext|>` (50256);
empty documents are skipped, as Megatron does. Ids are uint16 when the vocabulary has fewer than
65500 entries (GPT-2: 50257), else int32; doc_idx is 0, 1, ..., n. One pair of files per
`--json-keys` key. The bytes equal Megatron's for the same input and do not depend on `--workers`
(documents are written in input order).

`--shard-index K --num-shards N` splits the work over N machines: each reads the whole input and
tokenizes documents K, K+N, ... into `<prefix>_<key>_document.part-K-of-N.bin/.idx` (empty documents
kept, as empty sequences); `python3 -m gpt2_data.merge_shards` joins the parts into the single run's
bytes. Every output gets a fingerprint, `<prefix>_<key>_document.fingerprint.json` (vocab and merges
sha256, `--append-eod`, key, dtype), which `train_gpt2.py --dataset mmap` checks.

Input: `--input` is a file or comma-separated globs (sorted). Formats (`--input-format`, default
auto: `.json`/`.jsonl` names and files starting with `{` are JSON lines, files starting with `<doc`
are WikiExtractor output, anything else is text with blank lines between documents); see
`gpt2_data.corpus`. `--tokenizer-type GPT2BPETokenizer` and `--dataset-impl mmap` are accepted for
Megatron's command lines and are the only choices.

Errors (a bad JSON line, a missing key, an id >= the vocabulary size) are one line naming
`file:line`; the exit status is non-zero and no output file appears (outputs are written to
temporary names and renamed at the end).
"""

import os
import sys

if __package__ in (None, ""):  # run as a file: import from the repository root
    sys.path[0] = os.path.dirname(os.path.abspath(sys.path[0]))

import numpy as np

from common import fingerprint
from common.cli import Option
from common.errors import UserError, cli_main
from common.fileio import atomic_outputs, ensure_output_dir
from common.shards import check_shard, part_path
from gpt2_data import corpus, megatron
from gpt2_data import tokenizer as gpt2_tokenizer

TOOL_VERSION = 1  # raise when the same flags start writing different bytes
UINT16_VOCAB_LIMIT = 65500  # Megatron's best_fitting_dtype: uint16 below this vocabulary size

CLI_OPTIONS = [
    Option("input", "str", None, "Input file, or comma-separated globs.", required=True,
           metavar="PATH"),
    Option("input_format", "str", "auto", "jsonl, text (blank-line separated documents), "
           "wikiextractor (<doc> blocks) or auto (by extension and first line).",
           choices=("auto", *corpus.FORMATS)),
    Option("json_keys", "str", ["text"], "Keys of each JSON line to tokenize; one output per key.",
           nargs="+", metavar="KEY"),
    Option("output_prefix", "str", None, "Outputs are <prefix>_<key>_document.bin/.idx.",
           required=True, metavar="PREFIX"),
    Option("vocab_file", "str", None, "GPT-2 vocab.json (encoder.json).", required=True,
           extra_flags=("--vocab",), metavar="FILE"),
    Option("merge_file", "str", None, "GPT-2 merges.txt (vocab.bpe).", required=True,
           metavar="FILE"),
    Option("append_eod", "bool", False, "End every non-empty document with <|endoftext|>."),
    Option("workers", "int", 1, "Tokenizing processes; the output does not depend on it."),
    Option("shard_index", "int", 0, "With --num-shards N: the documents of this machine, 0 to N-1."),
    Option("num_shards", "int", 1, "Build on N machines: shard K tokenizes documents K, K+N, ... "
           "into <prefix>_<key>_document.part-K-of-N.bin/.idx; gpt2_data.merge_shards joins them."),
    Option("chunk_size", "int", 25, "Documents handed to a worker at a time."),
    Option("log_interval", "int", 100, "Documents between updates of the progress counts."),
    Option("tokenizer_type", "str", "GPT2BPETokenizer", "Accepted for Megatron's command line.",
           choices=("GPT2BPETokenizer",)),
    Option("dataset_impl", "str", "mmap", "Accepted for Megatron's command line.",
           choices=("mmap",)),
]  # fmt: skip

_STATE = {}  # per process: the tokenizer and the settings `_encode` needs


def _init_worker(vocab_file, merges_file, keys, append_eod):
    _STATE.update(
        tokenizer=gpt2_tokenizer.load(vocab_file, merges_file), keys=keys, append_eod=append_eod
    )


def _encode(task):
    """(place, payload, fmt) -> [ids per key] (numpy int64); `[]` for an empty document."""
    place, payload, fmt = task
    tok = _STATE["tokenizer"]
    out = []
    for text in corpus.document_texts(place, payload, fmt, _STATE["keys"]):
        ids = tok.encode(text)
        if ids and _STATE["append_eod"]:
            ids.append(tok.eod)
        ids = np.asarray(ids, np.int64)
        if ids.size and ids.max() >= tok.vocab_size:
            raise UserError(
                f"{place}: token id {int(ids.max())} >= vocab size {tok.vocab_size} of "
                f"{tok.vocab_file}; the vocab file's ids are not 0..{tok.vocab_size - 1}"
            )
        out.append(ids)
    return out


def output_dtype(vocab_size):
    """Megatron's `.bin` dtype: uint16 when vocab_size < 65500, else int32."""
    return np.uint16 if vocab_size < UINT16_VOCAB_LIMIT else np.int32


def run(args):
    """Tokenizes `args.input` into the indexed datasets; returns {key: (documents, tokens)}."""
    corpus.check_positive(
        workers=args.workers, chunk_size=args.chunk_size, log_interval=args.log_interval
    )
    check_shard(args.shard_index, args.num_shards)
    tok = gpt2_tokenizer.load(args.vocab_file, args.merge_file)
    files = corpus.expand_inputs(args.input)
    formats = [corpus.detect_format(f) if args.input_format == "auto" else args.input_format
               for f in files]  # fmt: skip
    keys = list(dict.fromkeys(args.json_keys))
    if len(keys) > 1 and set(formats) != {"jsonl"}:
        raise UserError(f"--json-keys {' '.join(keys)}: several keys need JSON lines input")
    shard, num_shards = args.shard_index, args.num_shards
    prefixes = [
        part_path(f"{args.output_prefix}_{key}_document", shard, num_shards) for key in keys
    ]
    ensure_output_dir(prefixes[0])
    dtype = output_dtype(tok.vocab_size)
    counts = {key: [0, 0] for key in keys}
    paths = [p + ext for p in prefixes for ext in (".bin", ".idx")]
    stamps = {key: data_fingerprint(args, tok, key, dtype) for key in keys}
    paths += [fingerprint.path_of(p) for p in prefixes]
    with atomic_outputs(paths) as handles, corpus.byte_progress(files, "preprocess_data") as bar:
        handles, stamp_handles = handles[: 2 * len(keys)], handles[2 * len(keys) :]
        writers = [megatron.IndexWriter(b, i, dtype) for b, i in zip(handles[::2], handles[1::2])]
        tasks = (
            (place, payload, fmt)
            for path, fmt in zip(files, formats)
            for place, payload in corpus.read_documents(path, fmt, bar)
        )
        if num_shards > 1:  # documents shard, shard + N, ...: parsed everywhere, tokenized here
            tasks = (t for i, t in enumerate(tasks) if i % num_shards == shard)
        init = (args.vocab_file, args.merge_file, keys, args.append_eod)
        results = corpus.ordered_map(_encode, tasks, args.workers, _init_worker, init,
                                     args.chunk_size)  # fmt: skip
        for done, per_key in enumerate(results, 1):
            for key, writer, ids in zip(keys, writers, per_key):
                # Megatron skips empty documents altogether; a part keeps them (as empty
                # sequences) so that the merge knows every document's place.
                if ids.size or num_shards > 1:
                    writer.add(ids)
                    counts[key][0] += bool(ids.size)
                    counts[key][1] += ids.size
            if done % args.log_interval == 0:
                bar.set_postfix(documents=done, tokens=counts[keys[0]][1], refresh=False)
        for writer in writers:
            writer.finish()
        for key, handle in zip(keys, stamp_handles):
            handle.write(fingerprint.text(stamps[key]).encode())
    return {key: tuple(c) for key, c in counts.items()}


def data_fingerprint(args, tok, key, dtype):
    """What a corpus was made with (`common.fingerprint`); the same for every shard."""
    return fingerprint.make(
        "gpt2_data.preprocess_data",
        TOOL_VERSION,
        vocab=fingerprint.file_entry(args.vocab_file, tok.vocab_size),
        merges=fingerprint.file_entry(args.merge_file),
        append_eod=args.append_eod,
        json_key=key,
        dtype=np.dtype(dtype).name,
    )


def parse_args(argv=None):
    """The command line's namespace (see CLI_OPTIONS)."""
    description = "Tokenize text with GPT-2 BPE into Megatron .bin/.idx files."
    return corpus.tool_args(CLI_OPTIONS, argv, "preprocess_data", description)


@cli_main
def main(argv=None):
    args = parse_args(argv)
    for key, (docs, tokens) in run(args).items():
        prefix = part_path(
            f"{args.output_prefix}_{key}_document", args.shard_index, args.num_shards
        )
        print(f"wrote {prefix}.bin/.idx: {docs} documents, {tokens} tokens")


if __name__ == "__main__":
    main()

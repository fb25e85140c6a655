#!/usr/bin/env python3
"""WikiExtractor output -> GPT-2 ids per article (`.pkl`), optionally TFRecords (REFERENCE_GPT2.md §5.3, §5.5).

    python3 -m gpt2_data.wikipedia_preprocess --input-file-path extracted/ --output-file-path out/ \
        --vocab-file vocab.json --merge-file merges.txt --workers 8 [--tfrecord --seq-length 1025]

The reference's command line, without its bugs (§12 items 3, 4, 12):
1. The merge step runs: every `<input>/*/wiki_*` file (sorted) is read as WikiExtractor
   `<doc ...>` blocks; one article per block, its title line and blank lines dropped, its
   paragraphs joined by single spaces (`gpt2_data.corpus`).
2. Each article is GPT-2 BPE ids followed by ONE `<|endoftext|>` (the reference added two). Articles
   with fewer than `--min-length` ids are dropped.
3. The articles are shuffled with `--seed` (the reference's shuffle was unseeded) and written as
   `<out>/wikicorpus_en_one_article_per_line.pkl`: a pickled list of lists of int ids, streamed to
   disk one article at a time.
4. With `--tfrecord`: `<out>/data_<i>.tfrecord` for i < `--num-output`, one `tf.train.Example` per
   window with a single Int64List feature `input_ids`. Windows of `--seq-length` ids every
   `--stride` per article (shuffled order), then the rest of the article from the next start
   when it has at least seq-length // 2 ids (`readers.article_windows`, tail "rest"). Record k
   goes to file k mod num-output. Each file gets `data_<i>.index`, one line per record:
   `<byte offset> <byte length>` (what `tfrecord.tools.tfrecord2idx` writes). To train at
   `--max-len L`, write `--seq-length L+1`.

`--use-bpe` is accepted for the reference's command line and does nothing: the reference then
trained a fresh 30522-symbol BPE without EOT; here the GPT-2 BPE of --vocab-file/--merge-file is
always used (train your own with `bert_data.create_bpe_tokenizer` and pass its files instead).
Output files are written to temporary names and renamed when complete; the bytes do not depend on
`--workers`.
"""

import os
import sys

if __package__ in (None, ""):  # run as a file: import from the repository root
    sys.path[0] = os.path.dirname(os.path.abspath(sys.path[0]))

import glob
import pickle

import numpy as np

from bert_data.records import encode_records
from common.cli import Option
from common.errors import UserError, cli_main
from common.fileio import atomic_outputs, ensure_output_dir
from gpt2_data import corpus, readers
from gpt2_data import tokenizer as gpt2_tokenizer
from gpt2_data.preprocess_data import output_dtype

PKL_NAME = "wikicorpus_en_one_article_per_line.pkl"
RECORDS_PER_FLUSH = 2048  # windows serialised at a time per TFRecord file

CLI_OPTIONS = [
    Option("input_file_path", "str", None, "WikiExtractor output directory (<dir>/*/wiki_*).",
           required=True, metavar="DIR"),
    Option("output_file_path", "str", None, "Output directory (created).", required=True,
           metavar="DIR"),
    Option("vocab_file", "str", None, "GPT-2 vocab.json (encoder.json).", required=True,
           metavar="FILE"),
    Option("merge_file", "str", None, "GPT-2 merges.txt (vocab.bpe).", required=True,
           metavar="FILE"),
    Option("min_length", "int", 10, "Drop articles with fewer ids (EOT included)."),
    Option("use_bpe", "bool", False, "Accepted for the reference's command line; no effect."),
    Option("seed", "int", 0, "Seed of the article shuffle."),
    Option("workers", "int", 1, "Tokenizing processes; the output does not depend on it."),
    Option("tfrecord", "bool", False, "Also write TFRecords of windows and their .index files."),
    Option("seq_length", "int", 128, "Ids per TFRecord window (max_len + 1 to train at max_len)."),
    Option("stride", "int", None, "Ids between window starts (default: --seq-length)."),
    Option("num_output", "int", 4, "TFRecord files to write."),
]  # fmt: skip

_STATE = {}


def _init_worker(vocab_file, merges_file):
    _STATE["tokenizer"] = gpt2_tokenizer.load(vocab_file, merges_file)


def _encode_article(task):
    """(place, paragraphs joined by newlines) -> int64 ids of the article + EOT."""
    _, text = task
    tok = _STATE["tokenizer"]
    return np.asarray(tok.encode(text.replace("\n", " ")) + [tok.eod], np.int64)


class _StreamedList:
    """Pickles as a plain list whose items are produced one at a time (`reducer_override`)."""

    def __init__(self, items):
        self.items = items


class _StreamingPickler(pickle.Pickler):
    def reducer_override(self, obj):
        if isinstance(obj, _StreamedList):
            return list, (), None, obj.items
        return NotImplemented


def write_pickle(path_file, articles):
    """Pickles `articles` (iterable of 1-D int arrays) as a list of int lists, one at a time."""
    pickler = _StreamingPickler(path_file, protocol=4)
    pickler.fast = True  # no memo: it would keep every article alive
    pickler.dump(_StreamedList(a.tolist() for a in articles))


def write_tfrecords(handles, articles, seq_length, stride):
    """Windows of `articles` into TFRecord files; returns records written.

    Args:
      handles: [tfrecord, index, tfrecord, index, ...] binary files, one pair per output file.
    """
    pairs = list(zip(handles[::2], handles[1::2]))
    pending = [[] for _ in pairs]
    offsets = [0] * len(pairs)
    count = 0

    def flush(i):
        windows = pending[i]
        if not windows:
            return
        values = np.zeros((len(windows), max(map(len, windows))), np.int64)
        for row, w in zip(values, windows):
            row[: len(w)] = w
        data, framed = encode_records(
            [("input_ids", values, [len(w) for w in windows])], len(windows)
        )
        record_file, index_file = pairs[i]
        record_file.write(data.tobytes())
        starts = offsets[i] + np.concatenate([[0], np.cumsum(framed)[:-1]])
        index_file.write("".join(f"{s} {n}\n" for s, n in zip(starts, framed)).encode())
        offsets[i] += int(framed.sum())
        pending[i] = []

    for article in articles:
        for window in readers.article_windows(article, seq_length, stride, "rest", seq_length // 2):
            i = count % len(pairs)
            pending[i].append(window)
            count += 1
            if len(pending[i]) == RECORDS_PER_FLUSH:
                flush(i)
    for i in range(len(pairs)):
        flush(i)
    return count


def run(args):
    """Runs the tool; returns {"articles", "dropped", "records"}."""
    stride = args.stride or args.seq_length
    corpus.check_positive(
        workers=args.workers, seq_length=args.seq_length, stride=stride, num_output=args.num_output
    )
    if args.tfrecord and args.seq_length < 2:
        raise UserError(
            f"--seq-length must be at least 2 (an input and a target), got {args.seq_length}"
        )
    if args.use_bpe:
        print(
            "note: --use-bpe has no effect; the GPT-2 BPE of --vocab-file is used", file=sys.stderr
        )
    tok = gpt2_tokenizer.load(args.vocab_file, args.merge_file)
    pattern = os.path.join(args.input_file_path, "*", "wiki_*")
    files = sorted(f for f in glob.glob(pattern) if os.path.isfile(f))
    if not files:
        raise UserError(
            f"--input-file-path {args.input_file_path}: no WikiExtractor files {pattern}"
        )
    ensure_output_dir(os.path.join(args.output_file_path, PKL_NAME))
    dtype = output_dtype(tok.vocab_size)
    kept, dropped = [], 0
    with corpus.byte_progress(files, "wikipedia_preprocess") as bar:
        tasks = (t for f in files for t in corpus.read_documents(f, "wikiextractor", bar))
        init = (args.vocab_file, args.merge_file)
        for ids in corpus.ordered_map(_encode_article, tasks, args.workers, _init_worker, init):
            if len(ids) >= args.min_length:
                kept.append(ids.astype(dtype))  # compact until written
            else:
                dropped += 1
    if not kept:
        raise UserError(f"--input-file-path {args.input_file_path}: no article has --min-length "
                        f"{args.min_length} ids")  # fmt: skip
    order = np.random.default_rng(args.seed).permutation(len(kept))
    shuffled = [kept[i] for i in order]
    with atomic_outputs([os.path.join(args.output_file_path, PKL_NAME)]) as (f,):
        write_pickle(f, shuffled)
    lengths = np.array([len(a) for a in shuffled])
    print(f"{len(kept)} articles ({dropped} dropped, < {args.min_length} ids); ids per article: "
          f"mean {lengths.mean():.1f}, median {np.median(lengths):.0f}, max {lengths.max()}")  # fmt: skip
    records = 0
    if args.tfrecord:
        names = [os.path.join(args.output_file_path, f"data_{i}") for i in range(args.num_output)]
        with atomic_outputs([n + ext for n in names for ext in (".tfrecord", ".index")]) as files:
            records = write_tfrecords(files, shuffled, args.seq_length, stride)
        print(f"wrote {records} records of <= {args.seq_length} ids to {args.num_output} files")
    return {"articles": len(kept), "dropped": dropped, "records": records}


def parse_args(argv=None):
    """The command line's namespace (see CLI_OPTIONS)."""
    description = "Tokenize WikiExtractor articles with GPT-2 BPE into a .pkl (and TFRecords)."
    return corpus.tool_args(CLI_OPTIONS, argv, "wikipedia_preprocess", description)


@cli_main
def main(argv=None):
    run(parse_args(argv))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Train a byte-level BPE tokenizer (RoBERTa's kind) from text: tokenizer.json, vocab.json, merges.txt.

    python3 -m bert_data.create_bpe_tokenizer --input-file 'wiki/*.txt' --output-dir tok \
        --vocab-size 50265

Input: one sentence per line, blank lines between documents (as for the other data tools). A document
is read as running text: its lines joined by single spaces, which is how `create_mlm_data.py` tokenises
it, so the word statistics the merges are learnt from are the ones the data will have.

The tokenizer is GPT-2/RoBERTa byte-level BPE: no normalisation, the ByteLevel pre-tokenizer without
an added prefix space, every byte of UTF-8 a base symbol (so there are no unknown characters), and
RoBERTa's special tokens at ids 0-4: `<s> <pad> </s> <unk> <mask>`. Encoding a text with special
tokens gives `<s> ... </s>` as Hugging Face's RobertaTokenizer does; vocab.json + merges.txt load in
`transformers.RobertaTokenizer(vocab_file, merges_file)` and give the same ids.

Training is deterministic: the same input and flags give the same bytes, whatever the number of
threads. Unlike WordPiece (see create_vocab.py, where tokenizers#1794 forced a fix), the BPE trainer
needs none here: the whole 256-symbol byte alphabet is passed as the initial alphabet, so the base
symbols get their ids in code-point order rather than in hash-map order, and the trainer breaks ties
between equally frequent merges by those ids. tests/test_roberta.py checks two runs give equal bytes.
"""

import os
import sys

if __package__ in (None, ""):  # run as a file: import from the repository root, not bert_data/
    sys.path[0] = os.path.dirname(os.path.abspath(sys.path[0]))

import json
import tempfile

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from bert_data.create_pretraining_data import expand_inputs, read_chunks
from common.cli import Option, build_tool_parser
from common.errors import UserError, cli_main
from common.fileio import atomic_write_text, ensure_output_dir

SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")  # ids 0-4, as RoBERTa's first four
BOS, PAD, EOS, UNK, MASK = SPECIAL_TOKENS
TOKENIZER_FILE = "tokenizer.json"
BYTE_ALPHABET = 256
# Tokens per word is measured on at most this many lines, so the summary stays cheap on Wikipedia.
SUMMARY_MAX_LINES = 20_000
_READ_CHUNK_BYTES = 1 << 24


def _configure(tokenizer):
    """Sets RoBERTa's pipeline around a BPE model; returns the tokenizer."""
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def _finish(tokenizer):
    """Special tokens and the `<s> ... </s>` post-processor (needs the special tokens' ids)."""
    tokenizer.add_special_tokens(
        [AddedToken(t, special=True, lstrip=t == MASK, normalized=False) for t in SPECIAL_TOKENS]
    )
    tokenizer.post_processor = processors.RobertaProcessing(
        (EOS, tokenizer.token_to_id(EOS)), (BOS, tokenizer.token_to_id(BOS)), add_prefix_space=False
    )
    return tokenizer


def document_lines(files):
    """Yields the training text: each non-empty line, with a leading space unless it starts a
    document (a document's lines are running text joined by spaces, see the module docstring)."""
    for chunk in read_chunks(files, _READ_CHUNK_BYTES):
        for document in chunk:
            yield document[0]
            for line in document[1:]:
                yield " " + line


def train_bpe(files, vocab_size, min_frequency=2):
    """Train the byte-level BPE.

    Args:
      files: list of str paths of one-sentence-per-line text.
      vocab_size: int, maximum number of tokens (special tokens and the 256 bytes included); fewer
        if the text runs out of merges at `min_frequency`.
      min_frequency: int, a merge must occur at least this often.

    Returns:
      tokenizers.Tokenizer, special tokens at ids 0-4.

    Raises:
      UserError: vocab_size too small for the special tokens and the byte alphabet.
    """
    smallest = len(SPECIAL_TOKENS) + BYTE_ALPHABET
    if vocab_size < smallest:
        raise UserError(
            f"--vocab-size {vocab_size} is smaller than the {len(SPECIAL_TOKENS)} special tokens "
            f"+ {BYTE_ALPHABET} byte symbols ({smallest}); raise --vocab-size"
        )
    tokenizer = _configure(Tokenizer(models.BPE()))
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=sys.stderr.isatty(),
    )
    tokenizer.train_from_iterator(document_lines(files), trainer)
    return _finish(tokenizer)


def load_tokenizer(path):
    """Reads a tokenizer.json and checks it has RoBERTa's special tokens.

    Returns:
      (tokenizers.Tokenizer, {special token: id} for SPECIAL_TOKENS).

    Raises:
      UserError: missing or unreadable file, or a special token missing from its vocabulary.
    """
    if not path:
        raise UserError(
            "no tokenizer given: set tokenizer_file (--tokenizer-file) to a tokenizer.json"
        )
    if os.path.isdir(path):
        path = os.path.join(path, TOKENIZER_FILE)
    if not os.path.isfile(path):
        raise UserError(
            f"tokenizer file not found: {path} (make one with python3 -m bert_data.create_bpe_tokenizer)"
        )
    try:
        tokenizer = Tokenizer.from_file(path)
    except Exception as err:  # the Rust side raises plain Exceptions with a parse message
        raise UserError(f"cannot read tokenizer {path}: {err}") from None
    ids = {t: tokenizer.token_to_id(t) for t in SPECIAL_TOKENS}
    missing = [t for t, i in ids.items() if i is None]
    if missing:
        raise UserError(
            f"tokenizer {path} lacks the special token(s) {' '.join(missing)}: RoBERTa data needs "
            f"{' '.join(SPECIAL_TOKENS)}; train one with python3 -m bert_data.create_bpe_tokenizer"
        )
    return tokenizer, ids


def write_tokenizer(tokenizer, output_dir):
    """Writes tokenizer.json, vocab.json and merges.txt atomically; returns the tokenizer.json path."""
    path = os.path.join(output_dir, TOKENIZER_FILE)
    atomic_write_text(path, tokenizer.to_str(pretty=True))
    with tempfile.TemporaryDirectory(dir=output_dir, prefix=".bpe-") as tmp:
        for written in tokenizer.model.save(tmp):
            os.replace(written, os.path.join(output_dir, os.path.basename(written)))
    return path


def summary(tokenizer, files):
    """Vocabulary size, merges and tokens per word on (the start of) the training text."""
    merges = len(json.loads(tokenizer.to_str())["model"]["merges"])
    lines = []
    for line in document_lines(files):
        lines.append(line)
        if len(lines) >= SUMMARY_MAX_LINES:
            break
    tokens = sum(len(e.ids) for e in tokenizer.encode_batch(lines, add_special_tokens=False))
    words = sum(len(line.split()) for line in lines)
    return (
        f"vocab size {tokenizer.get_vocab_size()} ({len(SPECIAL_TOKENS)} special tokens, "
        f"{BYTE_ALPHABET} bytes, {merges} merges), {tokens / max(words, 1):.2f} tokens per word "
        f"on {len(lines)} lines of the training text"
    )


CLI_OPTIONS = [
    Option("input_file", "str", None, "input text: comma-separated files or glob patterns",
           required=True, metavar="FILE"),
    Option("output_dir", "str", None, "where tokenizer.json, vocab.json, merges.txt go",
           required=True, metavar="DIR"),
    Option("vocab_size", "int", 50265, "target vocabulary size (RoBERTa: 50265)"),
    Option("min_frequency", "int", 2, "only merge pairs seen at least this often"),
]  # fmt: skip


def build_parser():
    return build_tool_parser(
        CLI_OPTIONS,
        prog="python3 -m bert_data.create_bpe_tokenizer",
        description="Train a byte-level BPE tokenizer (RoBERTa's) from one-sentence-per-line text.",
    )


@cli_main
def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.min_frequency < 1:
        raise UserError(f"--min-frequency must be a positive integer, got {args.min_frequency}")
    files = expand_inputs(args.input_file)
    if os.path.exists(args.output_dir) and not os.path.isdir(args.output_dir):
        raise UserError(f"--output-dir {args.output_dir} is a file; give a directory")
    ensure_output_dir(os.path.join(args.output_dir, TOKENIZER_FILE))
    if not any(True for _ in document_lines(files)):
        raise UserError(f"--input-file has no text (only blank lines): {args.input_file}")
    tokenizer = train_bpe(files, args.vocab_size, args.min_frequency)
    path = write_tokenizer(tokenizer, args.output_dir)
    print(f"wrote {path} (+ vocab.json, merges.txt): {summary(tokenizer, files)}")
    if tokenizer.get_vocab_size() < args.vocab_size:
        print(
            f"  note: the text supports only {tokenizer.get_vocab_size()} tokens with "
            f"--min-frequency {args.min_frequency} (asked for {args.vocab_size})"
        )
    print(f"  set tokenizer_file to {path} (vocab_size {tokenizer.get_vocab_size()}) in the config")


if __name__ == "__main__":
    main()

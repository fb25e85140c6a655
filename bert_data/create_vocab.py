#!/usr/bin/env python3
"""Train a BERT WordPiece vocabulary (`vocab.txt`) from one-sentence-per-line text.

    python3 -m bert_data.create_vocab --input-file bert_data/sample.txt \
        --output-file vocab.txt --vocab-size 1000 --do-lower-case

The text is normalised and split into words exactly as Google's BERT tokenizer does
(`BasicTokenizer`: clean control characters, split CJK ideographs, lower-case *and* strip accents
iff `--do-lower-case`, split on whitespace and punctuation), then Hugging Face `tokenizers`
learns the WordPiece sub-words. The vocabulary file lists one token per line, id = line number:
`[PAD] [UNK] [CLS] [SEP] [MASK]` (ids 0-4), the single characters, their `##` continuations,
the learnt sub-words, then `[unusedN]` fillers up to a multiple of `--pad-to-multiple-of`.
Google's own vocabularies order tokens differently ([PAD]=0, [UNK]=100, ...); code must look
the special tokens up by name, never assume ids.

Training is deterministic: the same input and flags give the same `vocab.txt` bytes. The
`tokenizers` trainer on its own is not (huggingface/tokenizers#1794: `##` tokens get ids in
hash-map order, and ids break ties between equally frequent merges), so this module counts the
alphabet itself, chooses it (most frequent first, ties by code point), and hands the trainer the
alphabet and every `##` continuation up front, which fixes all ids before merging starts.
"""

import os
import sys

if __package__ in (None, ""):  # run as a file: import from the repository root, not bert_data/
    sys.path[0] = os.path.dirname(os.path.abspath(sys.path[0]))

import collections
import glob
import string
import unicodedata

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

from common.cli import Option, build_tool_parser
from common.errors import UserError, cli_main
from common.fileio import atomic_write_text, ensure_output_dir

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
SUBWORD_PREFIX = "##"
# Google's WordpieceTokenizer maps longer words to [UNK] without trying to split them.
MAX_INPUT_CHARS_PER_WORD = 200
# The [UNK] rate is measured on at most this many lines, so it stays cheap on Wikipedia.
COVERAGE_MAX_LINES = 200_000

# Code-point blocks that Google's BasicTokenizer treats as CJK ideographs (one word each).
_CJK_RANGES = (
    (0x4E00, 0x9FFF),
    (0x3400, 0x4DBF),
    (0x20000, 0x2A6DF),
    (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F),
    (0x2B820, 0x2CEAF),
    (0xF900, 0xFAFF),
    (0x2F800, 0x2FA1F),
)


def expand_input_files(spec):
    """Expand comma-separated glob patterns into a sorted list of files.

    Args:
      spec: str, e.g. "data/a.txt,data/wiki/*_cleaned".

    Returns:
      list of str paths, sorted and without duplicates.

    Raises:
      UserError: a pattern matches no file.
    """
    files = set()
    for pattern in (p.strip() for p in spec.split(",")):
        if not pattern:
            continue
        matched = [p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p)]
        if not matched:
            raise UserError(
                f"--input-file: '{pattern}' matches no file; check the path or quote the glob"
            )
        files.update(matched)
    if not files:
        raise UserError("--input-file is empty; give one or more comma-separated files or globs")
    return sorted(files)


def make_normalizer(do_lower_case):
    """Google BERT normalisation; accents are stripped iff the text is lower-cased."""
    return normalizers.BertNormalizer(
        clean_text=True,
        handle_chinese_chars=True,
        strip_accents=do_lower_case,
        lowercase=do_lower_case,
    )


def make_tokenizer(tokens, do_lower_case):
    """A fast tokenizer with Google's BasicTokenizer + WordPiece semantics over `tokens`.

    Args:
      tokens: list of str, the vocabulary in id order; must contain "[UNK]".
      do_lower_case: bool.

    Returns:
      tokenizers.Tokenizer (no special tokens added on encode unless asked).
    """
    vocab = {token: index for index, token in enumerate(tokens)}
    tokenizer = Tokenizer(
        models.WordPiece(
            vocab=vocab,
            unk_token="[UNK]",
            continuing_subword_prefix=SUBWORD_PREFIX,
            max_input_chars_per_word=MAX_INPUT_CHARS_PER_WORD,
        )
    )
    tokenizer.normalizer = make_normalizer(do_lower_case)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    return tokenizer


def _is_punctuation(char):
    # Same test as BertPreTokenizer: all ASCII punctuation/symbols plus Unicode category P*.
    return char in string.punctuation or unicodedata.category(char).startswith("P")


def _is_cjk(char):
    code = ord(char)
    return any(lo <= code <= hi for lo, hi in _CJK_RANGES)


def _iter_lines(files):
    for path in files:
        with open(path, encoding="utf-8", errors="replace") as f:
            yield from f


def count_characters(files, do_lower_case):
    """Count the characters of the normalised text, as the trainer will see them.

    Args:
      files: list of str paths.
      do_lower_case: bool.

    Returns:
      (collections.Counter char -> int count, int number of non-empty lines).
    """
    normalizer = make_normalizer(do_lower_case)
    counts = collections.Counter()
    lines = 0
    for line in _iter_lines(files):
        normalized = normalizer.normalize_str(line)
        if normalized.strip():
            lines += 1
            counts.update(normalized)
    for char in [c for c in counts if c.isspace()]:
        del counts[char]
    return counts, lines


def choose_alphabet(counts, limit_alphabet):
    """The `limit_alphabet` most frequent characters (ties by code point), sorted by code point.

    Args:
      counts: mapping char -> int count.
      limit_alphabet: int > 0.

    Returns:
      (alphabet, continuations): two lists of str. `continuations` holds "##c" for every
      alphabet character that can occur inside a word (not punctuation, not a CJK ideograph).
    """
    by_frequency = sorted(counts, key=lambda c: (-counts[c], c))
    alphabet = sorted(by_frequency[:limit_alphabet])
    continuations = [SUBWORD_PREFIX + c for c in alphabet if not (_is_punctuation(c) or _is_cjk(c))]
    return alphabet, continuations


def train_wordpiece(files, vocab_size, do_lower_case, min_frequency=2, limit_alphabet=1000):
    """Train a WordPiece vocabulary.

    Args:
      files: list of str paths to one-sentence-per-line text.
      vocab_size: int, maximum number of tokens (fewer if the text runs out of merges).
      do_lower_case: bool, lower-case and strip accents.
      min_frequency: int, a merge must occur at least this often.
      limit_alphabet: int, keep at most this many distinct characters; rarer ones become [UNK].

    Returns:
      list of str tokens in id order: SPECIAL_TOKENS, alphabet, ## continuations, merges.

    Raises:
      UserError: empty input, or vocab_size too small for the special tokens and alphabet.
    """
    counts, lines = count_characters(files, do_lower_case)
    if not counts:
        raise UserError(f"--input-file: no text found in {len(files)} file(s): {files[0]} ...")
    alphabet, continuations = choose_alphabet(counts, limit_alphabet)
    base = list(SPECIAL_TOKENS) + alphabet + continuations
    if vocab_size < len(base):
        raise UserError(
            f"--vocab-size {vocab_size} is smaller than the {len(SPECIAL_TOKENS)} special tokens"
            f" + {len(alphabet)} characters + {len(continuations)} '##' continuations the text"
            f" needs ({len(base)}); raise --vocab-size or lower --limit-alphabet"
        )
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = make_normalizer(do_lower_case)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    # Passing the continuations as "special tokens" gives them fixed ids before the trainer
    # walks its word hash map; initial_alphabet + limit_alphabet=len(alphabet) make the trainer
    # keep exactly our alphabet (see the module docstring).
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS) + continuations,
        limit_alphabet=len(alphabet),
        initial_alphabet=alphabet,
        continuing_subword_prefix=SUBWORD_PREFIX,
        show_progress=sys.stderr.isatty(),
    )
    tokenizer.train(files, trainer)
    trained = [t for t, _ in sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])]
    known = set(base)
    return base + [t for t in trained if t not in known]


def pad_vocab(tokens, multiple):
    """Append "[unused0]", "[unused1]", ... until len(tokens) is a multiple of `multiple`.

    Args:
      tokens: list of str.
      multiple: int >= 1 (1 disables padding).

    Returns:
      new list of str.
    """
    fillers = (-len(tokens)) % multiple
    return list(tokens) + [f"[unused{i}]" for i in range(fillers)]


def measure_unk_rate(tokens, files, do_lower_case, max_lines=COVERAGE_MAX_LINES):
    """Tokenise (up to `max_lines` non-empty lines of) the text and count [UNK] pieces.

    Returns:
      dict with int `lines`, `words`, `pieces`, `unknown` (number of [UNK] pieces).
    """
    tokenizer = make_tokenizer(tokens, do_lower_case)
    unk_id = tokens.index("[UNK]")
    stats = {"lines": 0, "words": 0, "pieces": 0, "unknown": 0}
    batch = []

    def flush():
        for encoding in tokenizer.encode_batch(batch, add_special_tokens=False):
            stats["pieces"] += len(encoding.ids)
            stats["unknown"] += sum(1 for i in encoding.ids if i == unk_id)
            stats["words"] += len({w for w in encoding.word_ids if w is not None})
        batch.clear()

    for line in _iter_lines(files):
        if stats["lines"] >= max_lines:
            break
        if line.strip():
            stats["lines"] += 1
            batch.append(line)
            if len(batch) >= 4096:
                flush()
    flush()
    return stats


def write_vocab(tokens, path):
    """Write one token per line, atomically (temporary file, then rename)."""
    atomic_write_text(path, "".join(token + "\n" for token in tokens))


def _check_output_dir(path):
    ensure_output_dir(path)
    if os.path.isdir(path):
        raise UserError(f"--output-file {path} is a directory; give a file name like vocab.txt")


CLI_OPTIONS = [
    Option("input_file", "str", None,
           "Comma-separated files or glob patterns of one-sentence-per-line text.",
           required=True, metavar="FILE"),
    Option("output_file", "str", None, "Where to write vocab.txt.", required=True, metavar="FILE"),
    Option("vocab_size", "int", 30522,
           "Target number of tokens before padding (30522 is BERT's vocab)."),
    Option("do_lower_case", "bool", False, "Lower-case and strip accents (an uncased vocab). "
           "Use the same flag for create_pretraining_data.py and training."),
    Option("min_frequency", "int", 2, "Only merge sub-word pairs seen at least this often."),
    Option("limit_alphabet", "int", 1000,
           "Keep at most this many distinct characters; rarer ones become [UNK]."),
    Option("pad_to_multiple_of", "int", 8, "Append [unusedN] tokens until the size is a multiple "
           "of this, so the embedding table is GPU-friendly; 1 disables."),
]  # fmt: skip


def build_parser():
    return build_tool_parser(
        CLI_OPTIONS,
        prog="python3 -m bert_data.create_vocab",
        description="Train a BERT WordPiece vocab.txt from one-sentence-per-line text.",
    )


@cli_main
def main(argv=None):
    args = build_parser().parse_args(argv)
    for flag, value in (
        ("--vocab-size", args.vocab_size),
        ("--min-frequency", args.min_frequency),
        ("--limit-alphabet", args.limit_alphabet),
        ("--pad-to-multiple-of", args.pad_to_multiple_of),
    ):
        if value < 1:
            raise UserError(f"{flag} must be a positive integer, got {value}")
    files = expand_input_files(args.input_file)
    _check_output_dir(args.output_file)

    trained = train_wordpiece(
        files,
        vocab_size=args.vocab_size,
        do_lower_case=args.do_lower_case,
        min_frequency=args.min_frequency,
        limit_alphabet=args.limit_alphabet,
    )
    tokens = pad_vocab(trained, args.pad_to_multiple_of)
    write_vocab(tokens, args.output_file)

    stats = measure_unk_rate(tokens, files, args.do_lower_case)
    casing = "uncased (lower-case, accents stripped)" if args.do_lower_case else "cased"
    print(f"wrote {args.output_file}: vocab size {len(tokens)}, {casing}")
    if len(trained) < args.vocab_size:
        print(
            f"  note: the text supports only {len(trained)} tokens with --min-frequency"
            f" {args.min_frequency} (asked for {args.vocab_size})"
        )
    if len(tokens) > len(trained):
        print(
            f"  {len(tokens) - len(trained)} [unusedN] fillers pad it to a multiple of "
            f"{args.pad_to_multiple_of}"
        )
    rate = stats["unknown"] / max(stats["pieces"], 1)
    per_word = stats["pieces"] / max(stats["words"], 1)
    print(
        f"  [UNK] rate {100 * rate:.3f}% ({stats['unknown']} of {stats['pieces']} wordpieces)"
        f", {per_word:.2f} wordpieces per word, on {stats['lines']} lines of the training text"
    )
    print(f"  set vocab_size to {len(tokens)} in the model config")


if __name__ == "__main__":
    main()

"""Google BERT's `tokenization` module API, exact, with a fast `FullTokenizer` for large corpora.

A drop-in for google-research/bert's `tokenization.py`: `FullTokenizer`, `BasicTokenizer`,
`WordpieceTokenizer`, `load_vocab`, `convert_by_vocab` / `convert_tokens_to_ids` / `convert_ids_to_tokens`,
`convert_to_unicode`, `printable_text`, `whitespace_tokenize`, `_is_whitespace` / `_is_control` /
`_is_punctuation` and `validate_case_matches_checkpoint`, with Google's semantics. Like Google's,
`FullTokenizer` accepts any vocab; tools that insert special tokens call `check_special_tokens`.

The output equals Google's BasicTokenizer + WordPiece token for token: text cleaning (control characters
dropped, whitespace normalised), spaces around CJK ideographs, lower-casing with accent stripping when
`do_lower_case`, splitting on punctuation, then greedy longest-match-first WordPiece with `##` continuations
and words over 200 characters mapped to [UNK]. `FullTokenizer` splits text on whitespace once (`str.split`,
which agrees with Google's rule once the control characters it would split on are deleted) and tokenises
each distinct whitespace-delimited piece once, caching it (Zipf's law: a corpus has few distinct pieces).
Pure-ASCII text takes a regex path; other text takes Google's per-character steps. Expanding the cached
pieces of a whole batch of texts to ids is vectorised. `tests/test_tokenization.py` proves equality against
an independent plain-Python implementation on real text and checks the cases of Google's own tests.
"""

import functools
import itertools
import os
import re
import unicodedata

import numpy as np

from common.errors import UserError

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
# What the fine-tuning and feature tools need: [UNK] for unknown words, [CLS] and [SEP] to frame inputs.
TASK_SPECIAL_TOKENS = ("[UNK]", "[CLS]", "[SEP]")
# Google's WordpieceTokenizer default, which its FullTokenizer uses (Hugging Face's BertTokenizer uses 100).
MAX_INPUT_CHARS_PER_WORD = 200

# Pure-ASCII text (most of an English corpus) takes a faster exact path: Google's cleaning deletes the ASCII
# control characters other than tab/newline/CR, and every printable non-alphanumeric ASCII character is
# punctuation in its definition, so words are runs of letters/digits and single punctuation marks.
_ASCII_WORD = r"[A-Za-z0-9]+|[!-/:-@\[-`{-~]"
_ASCII_WORDS = re.compile(_ASCII_WORD)
_ASCII_WORD_OR_NUL = re.compile(_ASCII_WORD + r"|\x00")  # NUL: a separator
# Control characters that Python's str.split() treats as whitespace (or that would hide the separator)
# while Google deletes them; deleted before splitting. Other control characters are deleted per piece.
# With NUL and DEL, these are all the ASCII characters Google's cleaning deletes.
_SPLIT_CONTROLS = dict.fromkeys([c for c in range(32) if c not in (9, 10, 13)] + [127, 0x85])
_SPLIT_CONTROL_CHAR = re.compile("[\x01-\x08\x0b\x0c\x0e-\x1f\x7f\x85]")  # and NUL: counted
# Joins texts: a piece of its own that no text contains (NULs are deleted).
_SEPARATOR = " \x00 "
_CACHE_LIMIT = 1_000_000

# Google's published checkpoints, by casing (`validate_case_matches_checkpoint`).
_UNCASED_CHECKPOINTS = (
    "uncased_L-24_H-1024_A-16",
    "uncased_L-12_H-768_A-12",
    "multilingual_L-12_H-768_A-12",
    "chinese_L-12_H-768_A-12",
)
_CASED_CHECKPOINTS = (
    "cased_L-12_H-768_A-12",
    "cased_L-24_H-1024_A-16",
    "multi_cased_L-12_H-768_A-12",
)
_CHECKPOINT_DIR = re.compile(r"([A-Za-z0-9_-]+)/bert_model\.ckpt")


def validate_case_matches_checkpoint(do_lower_case, init_checkpoint):
    """Raises ValueError when `do_lower_case` contradicts a Google checkpoint named in the path.

    Only the directory right before `bert_model.ckpt` is looked at, and only Google's published model
    names are known (e.g. `uncased_L-12_H-768_A-12` needs lower-casing, `cased_L-12_H-768_A-12` must not
    have it); any other path, or an empty one, passes.
    """
    if not init_checkpoint:
        return
    found = _CHECKPOINT_DIR.search(init_checkpoint)
    if found is None:
        return
    name = found.group(1)
    if name in _UNCASED_CHECKPOINTS and not do_lower_case:
        wanted, kind = True, "an uncased (lower-cased)"
    elif name in _CASED_CHECKPOINTS and do_lower_case:
        wanted, kind = False, "a cased"
    else:
        return
    raise ValueError(
        f"--do_lower_case={not wanted} does not match --init_checkpoint={init_checkpoint}: "
        f"{name} is {kind} model; pass --do_lower_case={wanted} so fine-tuning sees text cased as in "
        "pretraining"
    )


def convert_to_unicode(text):
    """`text` as str: str unchanged, bytes decoded as UTF-8 (invalid bytes dropped); else ValueError."""
    if isinstance(text, str):
        return text
    if isinstance(text, bytes):
        return text.decode("utf-8", "ignore")
    raise ValueError(f"Unsupported string type: {type(text)}")


def printable_text(text):
    """`text` as a str fit for printing or logging (on Python 3 the same as `convert_to_unicode`)."""
    return convert_to_unicode(text)


def load_vocab(vocab_file):
    """Reads a vocab file (one token per line) into an ordered {token: id} dict.

    Ids are line numbers; a token that repeats keeps its last line, as Google's `load_vocab` does.
    """
    if not os.path.isfile(vocab_file):
        raise UserError(f"vocab file not found: {vocab_file}")
    with open(vocab_file, encoding="utf-8") as f:
        lines = f.read().split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the newline that ends the last line
    vocab = dict(zip(map(str.strip, lines), range(len(lines))))
    vocab.pop("", None)  # blank lines hold no token (they still count as ids)
    if not vocab:
        raise UserError(f"vocab file is empty: {vocab_file}")
    return vocab


def convert_by_vocab(vocab, items):
    """`[vocab[item] for item in items]`: tokens to ids or ids to tokens (KeyError if one is missing)."""
    return [vocab[item] for item in items]


def convert_tokens_to_ids(vocab, tokens):
    return convert_by_vocab(vocab, tokens)


def convert_ids_to_tokens(inv_vocab, ids):
    return convert_by_vocab(inv_vocab, ids)


def whitespace_tokenize(text):
    """Splits `text` on whitespace (Python's definition), without empty strings."""
    return text.split()


def check_special_tokens(vocab, vocab_file, tokens=SPECIAL_TOKENS):
    """Raises a one-line UserError naming the `tokens` missing from `vocab` (read from `vocab_file`).

    `FullTokenizer` accepts any vocab, as Google's does; a tool that inserts or relies on special tokens
    ([CLS] [SEP] [MASK], [UNK] for unknown words, ...) calls this with the ones it needs.
    """
    missing = [t for t in tokens if t not in vocab]
    if missing:
        raise UserError(
            f"vocab {vocab_file} lacks the special token(s) {' '.join(missing)}; "
            "use a BERT vocab or build one with `python3 -m bert_data.create_vocab`"
        )


def _cased_probe_fraction(vocab):
    """Fraction of alphabetic whole-word tokens that contain an upper-case letter."""
    words = [t for t in vocab if t.isalpha() and not t.startswith("[")]
    if not words:
        return 0.0
    return sum(1 for t in words if t != t.lower()) / len(words)


def check_casing(vocab, do_lower_case, vocab_file):
    """Refuses the common cased-vocab/uncased-flag mismatch (USER_NEEDS #11).

    A vocab with many upper-case words used with lower-casing can never produce them; an uncased vocab
    used without lower-casing turns every capitalised word into pieces or [UNK].
    """
    cased = _cased_probe_fraction(vocab) > 0.05
    if cased and do_lower_case:
        raise UserError(
            f"vocab {vocab_file} is cased (it has upper-case words) but --do-lower-case is set; "
            "drop --do-lower-case or use an uncased vocab"
        )
    if not cased and not do_lower_case and len(vocab) > 1000:
        raise UserError(
            f"vocab {vocab_file} is uncased (no upper-case words) but --do-lower-case is not set; "
            "add --do-lower-case or use a cased vocab"
        )


def _is_control(char):
    """Google's control character: Unicode Cc or Cf, except tab, newline and CR (whitespace there)."""
    return char not in "\t\n\r" and unicodedata.category(char) in ("Cc", "Cf")


def _is_whitespace(char):
    """Google's whitespace: space, tab, newline, CR and the Unicode space separators (Zs)."""
    return char in " \t\n\r" or unicodedata.category(char) == "Zs"


def _is_punctuation(char):
    """Google's punctuation: every non-alphanumeric printable ASCII character, and Unicode P*."""
    cp = ord(char)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(char).startswith("P")


def _google_normalize(text, do_lower_case):
    """Google's cleaning + CJK spacing + (lower-case, strip accents), returning space-separated words."""
    chars = []
    for ch in text:
        cp = ord(ch)
        if cp == 0 or cp == 0xFFFD or _is_control(ch):
            continue
        if _is_whitespace(ch):
            chars.append(" ")
        elif _is_cjk(cp):
            chars.extend((" ", ch, " "))
        else:
            chars.append(ch)
    words = "".join(chars).split()
    if do_lower_case:
        words = [
            "".join(
                c
                for c in unicodedata.normalize("NFD", w.lower())
                if unicodedata.category(c) != "Mn"
            )
            for w in words
        ]
    return words


def _is_cjk(cp):
    return (
        0x4E00 <= cp <= 0x9FFF
        or 0x3400 <= cp <= 0x4DBF
        or 0x20000 <= cp <= 0x2A6DF
        or 0x2A700 <= cp <= 0x2B73F
        or 0x2B740 <= cp <= 0x2B81F
        or 0x2B820 <= cp <= 0x2CEAF
        or 0xF900 <= cp <= 0xFAFF
        or 0x2F800 <= cp <= 0x2FA1F
    )


def _split_on_punctuation(word):
    """Google's punctuation split: each punctuation character becomes a word of its own."""
    out, start = [], 0
    for i, ch in enumerate(word):
        if _is_punctuation(ch):
            if start < i:
                out.append(word[start:i])
            out.append(ch)
            start = i + 1
    if start < len(word):
        out.append(word[start:])
    return out


def basic_tokenize(text, do_lower_case):
    """Google's BasicTokenizer on one str: its list of words (the one basic tokenizer of the project).

    Pure-ASCII text takes an exact regex path (see `_ASCII_WORD`); other text Google's steps.
    """
    if text.isascii():
        text = text.translate(_SPLIT_CONTROLS)
        return _ASCII_WORDS.findall(text.lower() if do_lower_case else text)
    return [
        w for word in _google_normalize(text, do_lower_case) for w in _split_on_punctuation(word)
    ]


def _greedy_pieces(word, whole, continuations, longest, max_chars, unknown):
    """Google's greedy longest-match-first WordPiece of one word.

    Args:
      word: str, one basic-tokenised word.
      whole: {vocab token: value} for the first piece; continuations: {token without "##": value}.
      longest: no vocab token is longer (bounds the search); max_chars: longer words are `unknown`.

    Returns:
      list of the pieces' values, or [unknown] when some part of the word matches no vocab token.
    """
    if len(word) > max_chars:
        return [unknown]
    found = whole.get(word)
    if found is not None:
        return [found]
    out, start, table = [], 0, whole
    while start < len(word):
        end = min(len(word), start + longest)
        while end > start:
            found = table.get(word[start:end])
            if found is not None:
                break
            end -= 1
        else:
            return [unknown]
        out.append(found)
        start = end
        table = continuations
    return out


class BasicTokenizer:
    """Google's `BasicTokenizer`: cleaning, CJK spacing, optional lower-casing, punctuation split."""

    def __init__(self, do_lower_case=True):
        self.do_lower_case = do_lower_case

    def tokenize(self, text):
        """The words (list of str) of `text` (str or UTF-8 bytes)."""
        return basic_tokenize(convert_to_unicode(text), self.do_lower_case)


class WordpieceTokenizer:
    """Google's `WordpieceTokenizer`: greedy longest-match-first WordPiece on whitespace-split text.

    Args:
      vocab: the {token: id} vocab (any collection of tokens works).
      unk_token: what a word with no WordPiece split, or a word over `max_input_chars_per_word`
        characters, becomes.
    """

    def __init__(self, vocab, unk_token="[UNK]", max_input_chars_per_word=MAX_INPUT_CHARS_PER_WORD):
        self.vocab = vocab
        self.unk_token = unk_token
        self.max_input_chars_per_word = max_input_chars_per_word
        self._whole = {t: t for t in vocab}
        self._continuations = {t[2:]: t for t in vocab if t.startswith("##")}
        self._longest = max(map(len, vocab), default=0)

    def tokenize(self, text):
        """The WordPiece tokens (list of str) of `text`, already basic-tokenised words."""
        return [
            piece
            for word in whitespace_tokenize(convert_to_unicode(text))
            for piece in _greedy_pieces(
                word,
                self._whole,
                self._continuations,
                self._longest,
                self.max_input_chars_per_word,
                self.unk_token,
            )
        ]


class _Rows(dict):
    """key -> row; a key looked up for the first time gets a provisional row -1 - k (noted in `new`)."""

    def __init__(self, *args):
        super().__init__(*args)
        self.new = []

    def __missing__(self, key):
        row = -1 - len(self.new)
        self[key] = row
        self.new.append(key)
        return row


class _IdTable:
    """A cache of strings -> token ids, as a CSR table so that expanding many strings is vectorised.

    Key "\\x00" (row 0) is a separator with no ids: `expand` counts ids per separated group.
    """

    def __init__(self):
        self.row = _Rows({"\x00": 0})
        self.start = np.zeros(2, np.int64)  # ids of row r: ids[start[r]:start[r + 1]]
        self.ids = np.zeros(0, np.int32)

    def __len__(self):
        return len(self.start) - 1

    def rows(self, keys, encode):
        """Row of each of `keys` (a list), int32 [len(keys)].

        `encode(new keys)` is called once for the keys not cached yet (in order of appearance); it
        returns (the same keys in any order, then their ids: id lists, or flat ids and per-key counts).
        """
        try:
            rows = np.fromiter(map(self.row.__getitem__, keys), np.int32, len(keys))
            new, self.row.new = self.row.new, []
            if new:
                self._add(*encode(new))
        except BaseException:  # KeyboardInterrupt too: no provisional row may stay behind
            self.__init__()  # only a cache: start it again
            raise
        if new:
            final = np.fromiter(map(self.row.__getitem__, new), np.int32, len(new))
            provisional = rows < 0
            rows[provisional] = final[-1 - rows[provisional]]
        return rows

    def _add(self, keys, ids, counts=None):
        if counts is None:
            counts = np.fromiter(map(len, ids), np.int64, len(ids))
            ids = np.fromiter(itertools.chain.from_iterable(ids), np.int32, int(counts.sum()))
        base = len(self)
        self.row.update(zip(keys, range(base, base + len(keys))))
        self.start = np.concatenate([self.start, self.start[-1] + np.cumsum(counts)])
        self.ids = np.concatenate([self.ids, ids])

    def expand(self, rows):
        """(ids int32 of all rows back to back, ids per separator-delimited group int64 [groups])."""
        starts = self.start[rows]
        lens = self.start[rows + 1] - starts
        ends = np.cumsum(lens)
        # ids of row k occupy [starts[k], starts[k] + lens[k]) of the table, back to back.
        shift = np.repeat(starts - (ends - lens), lens)
        ids = self.ids[shift + np.arange(shift.size)]
        group_ends = np.append(ends[rows == 0], ends[-1] if ends.size else 0)
        return ids, np.diff(group_ends, prepend=0)


class FullTokenizer:
    """Google's `FullTokenizer(vocab_file, do_lower_case)`: BasicTokenizer then WordPiece.

    Any vocab is accepted, as in Google's; a tool that needs special tokens checks them with
    `check_special_tokens`. Words without a split become [UNK] (the first vocab token if the vocab
    has no [UNK]).

    Args:
      vocab_file: path of a WordPiece vocab, one token per line; id = line number.
      do_lower_case: lower-case and strip accents (uncased models).
    """

    def __init__(self, vocab_file, do_lower_case=True):
        self.vocab_file = vocab_file
        self.do_lower_case = do_lower_case
        self.vocab = load_vocab(vocab_file)
        self.inv_vocab = dict(zip(self.vocab.values(), self.vocab))
        self._unk = "[UNK]" if "[UNK]" in self.vocab else next(iter(self.vocab))
        self.unk_id = self.vocab[self._unk]
        self._longest = max(map(len, self.vocab))  # no piece of a word is longer
        # "##" pieces without their "##" (see _word_pieces)
        self._continuations = {t[2:]: i for t, i in self.vocab.items() if t.startswith("##")}
        self._hf_wordpiece = None  # built on the first word that is not a vocab entry
        self._reset_cache()

    @property
    def vocab_size(self):
        return len(self.inv_vocab)

    @functools.cached_property
    def basic_tokenizer(self):
        """Google's attribute: the BasicTokenizer step alone."""
        return BasicTokenizer(self.do_lower_case)

    @functools.cached_property
    def wordpiece_tokenizer(self):
        """Google's attribute: the WordPiece step alone (strings; `tokenize` does not use it)."""
        return WordpieceTokenizer(self.vocab, self._unk, MAX_INPUT_CHARS_PER_WORD)

    def _word_pieces(self, word):
        """Greedy longest-match-first WordPiece ids of one basic-tokenised word."""
        return _greedy_pieces(
            word,
            self.vocab,
            self._continuations,
            self._longest,
            MAX_INPUT_CHARS_PER_WORD,
            self.unk_id,
        )

    def encode_flat(self, texts):
        """All texts' token ids back to back, and each text's token count.

        Texts are split on whitespace all at once, joined by a separator piece, and each distinct
        whitespace-delimited piece is encoded once (see `_encode_pieces`).

        Returns:
          (ids int32 [total], counts int64 [len(texts)]), the fast form for the data tools.
        """
        texts = list(texts)
        if not texts:
            return np.zeros(0, np.int32), np.zeros(0, np.int64)
        if len(self._pieces) + len(self._words) > _CACHE_LIMIT:
            self._reset_cache()
        text = _SEPARATOR.join(texts)
        if _SPLIT_CONTROL_CHAR.search(text) or text.count("\x00") >= len(texts):
            text = _SEPARATOR.join([t.translate(_SPLIT_CONTROLS) for t in texts])
        pieces = text.split()
        return self._pieces.expand(self._pieces.rows(pieces, self._encode_pieces))

    def _reset_cache(self):
        self._pieces = _IdTable()  # whitespace-delimited piece -> its token ids
        self._words = _IdTable()  # basic-tokenised word -> its WordPiece ids

    def _encode_pieces(self, pieces):
        """(the new pieces in another order, their ids, per-piece counts).

        A piece of ASCII letters and digits is one word: its WordPiece ids directly. Other ASCII pieces
        are lower-cased and basic-tokenised by a regex, all in one pass; non-ASCII pieces by Google's
        general steps; the words' WordPiece ids then come from the word cache.
        """
        lower = self.do_lower_case
        plain = [p for p in pieces if p.isalnum() and p.isascii()]
        ascii_pieces = [p for p in pieces if p.isascii() and not p.isalnum()]
        other = [p for p in pieces if not p.isascii()]
        plain_ids = self._many_word_pieces(list(map(str.lower, plain)) if lower else plain)
        words = []
        if ascii_pieces:
            text = "\x00".join(ascii_pieces)
            words = _ASCII_WORD_OR_NUL.findall(text.lower() if lower else text)
        for i, piece in enumerate(other):
            if i or ascii_pieces:
                words.append("\x00")
            words += basic_tokenize(piece, lower)
        ids, counts = np.zeros(0, np.int32), np.zeros(0, np.int64)
        if words or other:
            ids, counts = self._words.expand(self._words.rows(words, self._encode_new_words))
        plain_counts = np.fromiter(map(len, plain_ids), np.int64, len(plain_ids))
        plain_flat = itertools.chain.from_iterable(plain_ids)
        ids = np.concatenate([np.fromiter(plain_flat, np.int32, int(plain_counts.sum())), ids])
        return plain + ascii_pieces + other, ids, np.concatenate([plain_counts, counts])

    def _encode_new_words(self, words):
        return words, self._many_word_pieces(words)

    def _many_word_pieces(self, words):
        """WordPiece ids of many basic-tokenised words.

        Whole-word vocab hits are looked up in one C-level pass; the other words go through
        Hugging Face `tokenizers`' WordPiece model (Rust, the same greedy longest-match-first
        algorithm, here with Google's 200-character limit) in one batch.
        """
        if self._longest > MAX_INPUT_CHARS_PER_WORD:  # a vocab entry that is too long to match
            return list(map(self._word_pieces, words))
        found = list(map(self.vocab.get, words))
        missing = [w for i, w in zip(found, words) if i is None]
        if not missing:
            return [[i] for i in found]
        split = iter(self._wordpiece_batch(missing))
        return [next(split) if i is None else [i] for i in found]

    def _wordpiece_batch(self, words):
        """HF WordPiece ids of `words` (each one pre-tokenised word)."""
        if self._hf_wordpiece is None:
            from tokenizers import Tokenizer
            from tokenizers.models import WordPiece

            self._hf_wordpiece = Tokenizer(
                WordPiece(
                    self.vocab,
                    unk_token=self._unk,
                    max_input_chars_per_word=MAX_INPUT_CHARS_PER_WORD,
                )
            )
        encodings = self._hf_wordpiece.encode_batch(
            [[w] for w in words], is_pretokenized=True, add_special_tokens=False
        )
        return [e.ids for e in encodings]

    def _encode_many(self, texts):
        """Token-id lists for many texts; same result as one by one."""
        texts = list(texts)
        ids, counts = self.encode_flat(texts)
        return [chunk.tolist() for chunk in np.split(ids, np.cumsum(counts)[:-1])] if texts else []

    def tokenize(self, text):
        """Returns the WordPiece tokens (strings) of `text` (str or UTF-8 bytes)."""
        return self.convert_ids_to_tokens(self._encode_many([convert_to_unicode(text)])[0])

    def tokenize_batch(self, texts):
        """Token strings for each of `texts`, computed in one batch."""
        return [self.convert_ids_to_tokens(ids) for ids in self._encode_many(texts)]

    def encode_batch(self, texts):
        """Token ids (lists of int) for each of `texts`; the fast path used by the data tools."""
        return self._encode_many(texts)

    def convert_tokens_to_ids(self, tokens):
        return convert_by_vocab(self.vocab, tokens)

    def convert_ids_to_tokens(self, ids):
        return convert_by_vocab(self.inv_vocab, ids)

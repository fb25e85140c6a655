"""Google BERT's tokenizer API (`FullTokenizer`), backed by Hugging Face `tokenizers` (Rust).

The output equals Google's BasicTokenizer + WordPiece token for token: text cleaning (control characters
dropped, whitespace normalised), spaces around CJK ideographs, lower-casing with accent stripping when
`do_lower_case`, splitting on punctuation, then greedy longest-match-first WordPiece with `##` continuations
and words over 100 characters mapped to [UNK]. Two details of the Rust normaliser differ from Google's
Python one on rare characters, so lines that contain such characters are normalised here in Python first
(see `_needs_python_normalizer`), and pure-ASCII lines take an exact, cached word-level path (faster than
the Rust pipeline on English text); every other line goes straight to Rust. `tests/test_tokenization.py` proves
equality against an independent plain-Python implementation on real text.
"""

import itertools
import os
import re
import unicodedata

import numpy as np

from bert_data.errors import UserError

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
MAX_INPUT_CHARS_PER_WORD = 100

# Pure-ASCII text (most of an English corpus) takes a faster exact path: Google's cleaning deletes the ASCII
# control characters other than tab/newline/CR, and every printable non-alphanumeric ASCII character is
# punctuation in its definition, so words are runs of letters/digits and single punctuation marks.
_ASCII_CONTROLS = dict.fromkeys([c for c in range(32) if c not in (9, 10, 13)] + [127])
_ASCII_WORD = re.compile(r"[A-Za-z0-9]+|[!-/:-@\[-`{-~]")
# In other lines, a whitespace-delimited piece holding any non-ASCII character is kept whole (the Rust
# pipeline basic-tokenises it); the rest is split as above.
_MIXED_WORD = re.compile(r"\S*[^\x00-\x7f]\S*|[A-Za-z0-9]+|[!-/:-@\[-`{-~]")
_ASCII_CONTROL_CHAR = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_CACHE_LIMIT = 1_000_000
# Separators where Python's str.split() and Google's whitespace rule disagree (Google deletes the control
# characters and keeps U+2028/U+2029 inside words); lines with them skip the word-level path.
_SPLIT_DISAGREES = re.compile("[\x0b\x0c\x1c-\x1f\x85\u2028\u2029]")


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
    vocab = {token: index for index, token in enumerate(map(str.strip, lines)) if token}
    if not vocab:
        raise UserError(f"vocab file is empty: {vocab_file}")
    return vocab


def check_special_tokens(vocab, vocab_file):
    missing = [t for t in SPECIAL_TOKENS if t not in vocab]
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


def _is_google_control(ch):
    return ch not in "\t\n\r" and unicodedata.category(ch) in ("Cc", "Cf")


def _is_google_whitespace(ch):
    return ch in " \t\n\r" or unicodedata.category(ch) == "Zs"


# Characters whose treatment by the Rust BertNormalizer differs from Google's Python code: Rust drops every
# "other" (C*) category while Google drops only Cc/Cf; Rust's whitespace test also accepts U+0085, U+2028,
# U+2029 (Google keeps them as word characters); and accent stripping order differs for a few letters.
def _needs_python_normalizer(text):
    for ch in set(text):
        if ord(ch) > 127 and (
            ch == "\x85" or unicodedata.category(ch) in ("Co", "Cn", "Cs", "Zl", "Zp")
        ):
            return True
    return False


def _google_normalize(text, do_lower_case):
    """Google's cleaning + CJK spacing + (lower-case, strip accents), returning space-separated words."""
    chars = []
    for ch in text:
        cp = ord(ch)
        if cp == 0 or cp == 0xFFFD or _is_google_control(ch):
            continue
        if _is_google_whitespace(ch):
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


class FullTokenizer:
    """Google's `FullTokenizer(vocab_file, do_lower_case)`: BasicTokenizer then WordPiece.

    Args:
      vocab_file: path of a WordPiece vocab, one token per line; id = line number.
      do_lower_case: lower-case and strip accents (uncased models).
      check_specials: require [PAD] [UNK] [CLS] [SEP] [MASK] in the vocab.
    """

    def __init__(self, vocab_file, do_lower_case=True, check_specials=True):
        self.vocab_file = vocab_file
        self.do_lower_case = do_lower_case
        self.vocab = load_vocab(vocab_file)
        if check_specials:
            check_special_tokens(self.vocab, vocab_file)
        self.inv_vocab = {i: t for t, i in self.vocab.items()}
        self._unk = "[UNK]" if "[UNK]" in self.vocab else next(iter(self.vocab))
        self.unk_id = self.vocab[self._unk]
        self._rust = None  # built on first use (pure-ASCII text never needs it)
        self._reset_cache()  # basic-tokenised word -> WordPiece ids (see _encode_words)

    def _rust_tokenizers(self):
        """(full pipeline, pre-tokenised pipeline) of Hugging Face `tokenizers` over this vocab."""
        if self._rust is None:
            from tokenizers import Tokenizer, normalizers, pre_tokenizers
            from tokenizers.models import WordPiece

            model = WordPiece(
                self.vocab,
                unk_token=self._unk,
                continuing_subword_prefix="##",
                max_input_chars_per_word=MAX_INPUT_CHARS_PER_WORD,
            )
            full = Tokenizer(model)
            full.normalizer = normalizers.BertNormalizer(
                clean_text=True,
                handle_chinese_chars=True,
                strip_accents=self.do_lower_case,
                lowercase=self.do_lower_case,
            )
            full.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
            # For text normalised here in Python (see _needs_python_normalizer): split + WordPiece.
            pretokenized = Tokenizer(model)
            pretokenized.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
            self._rust = (full, pretokenized)
        return self._rust

    @property
    def vocab_size(self):
        return len(self.inv_vocab)

    def _word_pieces(self, word):
        """Greedy longest-match-first WordPiece ids of one basic-tokenised word."""
        if len(word) > MAX_INPUT_CHARS_PER_WORD:
            return [self.unk_id]
        ids, start, vocab = [], 0, self.vocab
        while start < len(word):
            end = len(word)
            while end > start:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in vocab:
                    ids.append(vocab[piece])
                    break
                end -= 1
            if end == start:
                return [self.unk_id]
            start = end
        return ids

    def _encode_words(self, texts):
        """Exact ids through a per-word cache (words repeat: Zipf's law), as flat arrays.

        A line is split on whitespace exactly as Google splits it (the caller guarantees that); pure-ASCII
        pieces are basic-tokenised with a regex, other pieces by the Rust pipeline, once per distinct piece.
        Lower-casing the whole line first is Google's own `str.lower`, so it is exact. The cache is a CSR
        table (word -> row; row -> WordPiece ids), so expanding words to ids is vectorised.

        Returns:
          (ids int32 [total], per-text token counts int64 [len(texts)]).
        """
        if len(self._word_row) > _CACHE_LIMIT:
            self._reset_cache()
        if _ASCII_CONTROL_CHAR.search("".join(texts)):
            texts = [t.translate(_ASCII_CONTROLS) for t in texts]
        if self.do_lower_case:
            texts = [t.lower() for t in texts]
        word_lists = [(_ASCII_WORD if t.isascii() else _MIXED_WORD).findall(t) for t in texts]
        words = list(itertools.chain.from_iterable(word_lists))
        new_words = list(set(words).difference(self._word_row))
        if new_words:
            self._add_words(new_words)
        rows = np.fromiter(map(self._word_row.__getitem__, words), np.int64, len(words))
        starts = self._piece_start[rows]
        lens = self._piece_start[rows + 1] - starts
        # ids of word w occupy [starts[w], starts[w] + lens[w]) of the piece table, back to back.
        shift = np.repeat(starts - (np.cumsum(lens) - lens), lens)
        ids = self._piece_ids[shift + np.arange(shift.size)]
        word_counts = np.fromiter(map(len, word_lists), np.int64, len(word_lists))
        token_counts = np.zeros(len(texts), np.int64)
        nonempty = word_counts > 0
        if nonempty.any():
            first_word = (np.cumsum(word_counts) - word_counts)[nonempty]
            token_counts[nonempty] = np.add.reduceat(lens, first_word)
        return ids, token_counts

    def _reset_cache(self):
        self._word_row = {}
        self._piece_ids = np.zeros(0, np.int32)
        self._piece_start = np.zeros(1, np.int64)

    def _add_words(self, words):
        """WordPiece ids of new words into the cache (non-ASCII ones through the Rust pipeline)."""
        non_ascii = [w for w in words if not w.isascii()]
        rust = dict(
            zip(
                non_ascii,
                self._rust_tokenizers()[0].encode_batch_fast(non_ascii, add_special_tokens=False),
            )
        )
        pieces = [rust[w].ids if w in rust else self._word_pieces(w) for w in words]
        base = len(self._word_row)
        self._word_row.update(zip(words, range(base, base + len(words))))
        lengths = np.fromiter(map(len, pieces), np.int64, len(pieces))
        self._piece_start = np.concatenate(
            [self._piece_start, self._piece_start[-1] + np.cumsum(lengths)]
        )
        new_ids = np.fromiter(itertools.chain.from_iterable(pieces), np.int32, int(lengths.sum()))
        self._piece_ids = np.concatenate([self._piece_ids, new_ids])

    def encode_flat(self, texts):
        """All texts' token ids back to back, and each text's token count.

        Returns:
          (ids int32 [total], counts int64 [len(texts)]), the fast form for the data tools.
        """
        texts = list(texts)
        special = [i for i, t in enumerate(texts) if self._needs_special(t)]
        if not special:
            return self._encode_words(texts)
        lists = self._encode_many(texts)
        counts = np.fromiter(map(len, lists), np.int64, len(lists))
        ids = np.fromiter(itertools.chain.from_iterable(lists), np.int32, int(counts.sum()))
        return ids, counts

    @staticmethod
    def _needs_special(text):
        return not text.isascii() and bool(
            _SPLIT_DISAGREES.search(text) or _needs_python_normalizer(text)
        )

    def _encode_many(self, texts):
        """Token-id lists for many texts; same result as one by one."""
        word_idx = [i for i, t in enumerate(texts) if not self._needs_special(t)]
        special = [i for i, t in enumerate(texts) if self._needs_special(t)]
        out = [None] * len(texts)
        ids, counts = self._encode_words([texts[i] for i in word_idx])
        for i, chunk in zip(word_idx, np.split(ids, np.cumsum(counts)[:-1])):
            out[i] = chunk.tolist()
        if special:
            words = [_google_normalize(texts[i], self.do_lower_case) for i in special]
            encs = self._rust_tokenizers()[1].encode_batch_fast(
                words, is_pretokenized=True, add_special_tokens=False
            )
            for i, enc in zip(special, encs):
                out[i] = enc.ids
        return out

    def tokenize(self, text):
        """Returns the WordPiece tokens (strings) of `text`."""
        return self.convert_ids_to_tokens(self._encode_many([text])[0])

    def tokenize_batch(self, texts):
        """Token strings for each of `texts`, computed in one Rust batch."""
        return [self.convert_ids_to_tokens(ids) for ids in self._encode_many(list(texts))]

    def encode_batch(self, texts):
        """Token ids (lists of int) for each of `texts`; the fast path used by the data tools."""
        return self._encode_many(list(texts))

    def convert_tokens_to_ids(self, tokens):
        return [self.vocab[t] for t in tokens]

    def convert_ids_to_tokens(self, ids):
        return [self.inv_vocab[i] for i in ids]

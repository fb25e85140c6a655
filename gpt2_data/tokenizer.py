"""GPT-2's byte-level BPE (OpenAI's vocab.json/encoder.json + merges.txt/vocab.bpe), through `tokenizers`.

    tok = load("vocab.json", "merges.txt")
    ids = tok.encode("Hello world")          # [15496, 995]: no BOS, no EOS
    tok.decode(ids) == "Hello world"

The pipeline is OpenAI's encoder (REFERENCE_GPT2.md §5.1): no normalisation; the text is split by
the pre-tokenizer regex `'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+`
(no prefix space is added); every UTF-8 byte of a piece becomes one of 256 printable symbols
(`bytes_to_unicode`); and merges are applied greedily, lowest rank first. Ids are those of the
vocabulary file. tests/test_gpt2_tokenizer.py checks the ids against an independent Python
implementation of OpenAI's encoder on all of WikiText-2 (valid, test) and LAMBADA.

`<|endoftext|>` (id 50256 in GPT-2's vocabulary) is the end-of-document id `eod`. Like Megatron's
GPT2BPETokenizer, `encode` treats the literal text "<|endoftext|>" as ordinary characters; pass
`special_tokens=True` to turn it into `eod` instead (as Hugging Face's GPT-2 tokenizers do).
"""

import json
import os

from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from common.errors import UserError

EOD_TOKEN = "<|endoftext|>"


class GPT2Tokenizer:
    """GPT-2 byte-level BPE with OpenAI's ids.

    Attributes:
      eod: int, the id of `<|endoftext|>` (50256 for GPT-2).
      vocab_size: int, entries in the vocabulary file (50257 for GPT-2); Megatron picks the
        `.bin` dtype from it, and every id `encode` returns is checked against it by callers.
      vocab_file, merges_file: str, the files it was loaded from.
    """

    def __init__(self, tokenizer, eod, vocab_size, vocab_file, merges_file):
        self._tok = tokenizer
        self.eod, self.vocab_size = eod, vocab_size
        self.vocab_file, self.merges_file = vocab_file, merges_file

    def encode(self, text, special_tokens=False):
        """list[int] ids of `text`; no BOS/EOS. `special_tokens`: "<|endoftext|>" -> `eod`."""
        if not special_tokens:
            return self._tok.encode(text, add_special_tokens=False).ids
        ids = []
        for i, piece in enumerate(text.split(EOD_TOKEN)):
            if i:
                ids.append(self.eod)
            ids.extend(self._tok.encode(piece, add_special_tokens=False).ids)
        return ids

    def encode_batch(self, texts):
        """list[list[int]]: `encode` of each text (special tokens as plain text), in parallel."""
        return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids):
        """The text of `ids` (str); `eod` decodes to "<|endoftext|>". Invalid UTF-8 becomes U+FFFD."""
        return self._tok.decode(list(map(int, ids)), skip_special_tokens=False)


def _read_vocab(path):
    try:
        with open(path, encoding="utf-8") as f:
            vocab = json.load(f)
    except OSError as err:
        raise UserError(f"cannot read GPT-2 vocab file {path}: {err.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"GPT-2 vocab file {path} is not valid JSON: {err}") from None
    if not isinstance(vocab, dict) or not all(
        isinstance(k, str) and isinstance(v, int) and v >= 0 for k, v in vocab.items()
    ):
        raise UserError(f"GPT-2 vocab file {path} must be a JSON object {{token: id >= 0}}")
    if EOD_TOKEN not in vocab:
        raise UserError(f"GPT-2 vocab file {path} has no {EOD_TOKEN} token")
    return vocab


def _check_merges(path, vocab):
    """Each line after an optional `#version` header must be two vocabulary symbols."""
    try:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if (number == 1 and line.startswith("#version")) or not line.strip():
                    continue
                parts = line.rstrip("\r\n").split(" ")
                if len(parts) != 2 or not all(p in vocab for p in parts):
                    raise UserError(
                        f"GPT-2 merges file {path}:{number}: expected two vocabulary symbols "
                        f"separated by a space, got {line.strip()[:40]!r}"
                    )
    except OSError as err:
        raise UserError(f"cannot read GPT-2 merges file {path}: {err.strerror}") from None
    except UnicodeDecodeError as err:
        raise UserError(f"GPT-2 merges file {path} is not UTF-8: {err}") from None


def load(vocab_file, merges_file):
    """Loads GPT-2's BPE from OpenAI's files.

    Args:
      vocab_file: vocab.json / encoder.json, a JSON object {symbol: id}.
      merges_file: merges.txt / vocab.bpe, one merge "a b" per line after a `#version` line.
    Returns:
      GPT2Tokenizer.
    Raises:
      UserError: one line naming the file: missing, unreadable, not JSON, no `<|endoftext|>`, or a
        malformed merge line.
    """
    vocab = _read_vocab(vocab_file)
    _check_merges(merges_file, vocab)
    try:
        model = models.BPE.from_file(vocab_file, merges_file)
    except Exception as err:  # tokenizers raises plain Exception for bad files
        raise UserError(
            f"cannot load GPT-2 BPE from {vocab_file} and {merges_file}: {err}"
        ) from None
    tokenizer = Tokenizer(model)
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    return GPT2Tokenizer(tokenizer, vocab[EOD_TOKEN], len(vocab), vocab_file, merges_file)


def files_beside(path):
    """(vocab.json, merges.txt) paths of a model's folder (a Hugging Face folder, a run directory
    (its `hf/` folder, where train_gpt2.py copies them) or the folder of a checkpoint prefix), or
    None when the folder lacks them."""
    folder = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    for candidate in (folder, os.path.join(folder, "hf")):
        files = tuple(os.path.join(candidate, n) for n in ("vocab.json", "merges.txt"))
        if all(os.path.isfile(f) for f in files):
            return files
    return None


def for_checkpoint(path, vocab_file=None, merges_file=None):
    """The GPT-2 BPE that goes with a model: the explicit files when given, else the folder's
    (`files_beside`).

    Raises:
      UserError: one line when only one of the two files is given, or when neither is given and
        the folder lacks them.
    """
    if bool(vocab_file) != bool(merges_file):
        raise UserError(
            "give both --vocab-file (vocab.json) and --merges-file (merges.txt), or neither"
        )
    if vocab_file:
        return load(vocab_file, merges_file)
    files = files_beside(path)
    if files is None:
        raise UserError(
            f"{path}: no vocab.json and merges.txt beside the model; give --vocab-file "
            "(vocab.json / encoder.json) and --merges-file (merges.txt / vocab.bpe)"
        )
    return load(*files)

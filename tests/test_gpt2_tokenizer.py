"""gpt2_data.tokenizer against an independent Python version of OpenAI's GPT-2 encoder, written here:
the byte-to-symbol table, the pre-tokenizer regex and greedy lowest-rank merges. On the shared data
(WikiText-2 valid and test, LAMBADA test) every id must agree; a tiny hand-made vocabulary runs
without it."""

import json
import os

import pytest

from common.errors import UserError
from gpt2_data import tokenizer as gpt2_tokenizer

regex = pytest.importorskip("regex", reason="the reference pre-tokenizer needs \\p{L}/\\p{N}")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The shared data sit beside the repository (../shared/data); SHARED_DATA overrides that, e.g. for a
# git worktree elsewhere.
DATA = os.environ.get("SHARED_DATA", os.path.join(os.path.dirname(ROOT), "shared", "data"))
VOCAB = os.path.join(DATA, "vocab", "gpt2", "encoder.json")
MERGES = os.path.join(DATA, "vocab", "gpt2", "vocab.bpe")
WIKI = [os.path.join(DATA, "wikitext-2", f"wiki.{s}.raw") for s in ("valid", "test")]
LAMBADA = os.path.join(DATA, "lambada", "lambada_test.jsonl")
needs_data = pytest.mark.skipif(
    not all(map(os.path.isfile, [VOCAB, MERGES, LAMBADA, *WIKI])),
    reason=f"{DATA} (GPT-2 vocab.bpe/encoder.json, WikiText-2, LAMBADA) is not present",
)

PIECES = regex.compile(
    r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
)


def byte_symbols():
    """{byte: one-character symbol}: printable Latin-1 bytes stand for themselves, the other 68
    bytes take the code points 256, 257, ... in byte order."""
    keep = set(range(0x21, 0x7F)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
    table, spare = {}, 256
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(spare)
            spare += 1
    return table


class ReferenceEncoder:
    """OpenAI's algorithm, from the description in REFERENCE_GPT2.md §5.1."""

    def __init__(self, vocab, merges):
        self.vocab = vocab
        self.rank = {pair: i for i, pair in enumerate(merges)}
        self.symbols = byte_symbols()
        self.cache = {}

    def merge(self, word):
        parts = list(word)
        while len(parts) > 1:
            ranked = [
                (self.rank[pair], i)
                for i, pair in enumerate(zip(parts, parts[1:]))
                if pair in self.rank
            ]
            if not ranked:
                break
            best = min(ranked)[0]
            out, i = [], 0
            while i < len(parts):  # every occurrence of the best pair, left to right
                if i + 1 < len(parts) and self.rank.get((parts[i], parts[i + 1])) == best:
                    out.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    out.append(parts[i])
                    i += 1
            parts = out
        return parts

    def encode(self, text):
        ids = []
        for piece in PIECES.findall(text):
            word = "".join(self.symbols[b] for b in piece.encode("utf-8"))
            if word not in self.cache:
                self.cache[word] = [self.vocab[p] for p in self.merge(word)]
            ids.extend(self.cache[word])
        return ids


def _read_merges(path):
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    return [tuple(line.split(" ")) for line in lines[1:] if line]


@pytest.fixture(scope="module")
def gpt2():
    with open(VOCAB, encoding="utf-8") as f:
        vocab = json.load(f)
    return gpt2_tokenizer.load(VOCAB, MERGES), ReferenceEncoder(vocab, _read_merges(MERGES))


@needs_data
def test_every_id_of_wikitext2_and_lambada_matches_openais_encoder(gpt2):
    ours, reference = gpt2
    texts = []
    for path in WIKI:
        with open(path, encoding="utf-8", newline="") as f:
            texts.extend(f.readlines())  # line by line, newlines kept: all of the text
    with open(LAMBADA, encoding="utf-8") as f:
        texts.extend(json.loads(line)["text"] for line in f)
    assert len(texts) > 13_000
    got = ours.encode_batch(texts)
    mismatches = [i for i, (t, ids) in enumerate(zip(texts, got)) if ids != reference.encode(t)]
    assert mismatches == [], f"{len(mismatches)} texts differ, first: {texts[mismatches[0]]!r}"
    assert sum(map(len, got)) > 700_000
    # encode and encode_batch agree, and decoding gives the text back (byte-level BPE is lossless).
    assert [ours.encode(t) for t in texts[:200]] == got[:200]
    assert all(ours.decode(ids) == t for t, ids in zip(texts[-300:], got[-300:]))


@needs_data
def test_gpt2_facts(gpt2):
    ours, reference = gpt2
    assert ours.eod == 50256 and ours.vocab_size == 50257
    assert ours.encode("Hello world") == reference.encode("Hello world") == [15496, 995]
    # Plain text by default (Megatron), the EOD id on request (Hugging Face).
    assert ours.encode("a<|endoftext|>b") == reference.encode("a<|endoftext|>b")
    assert ours.encode("a<|endoftext|>b", special_tokens=True) == [64, 50256, 65]
    assert ours.decode([64, 50256, 65]) == "a<|endoftext|>b"


def tiny_vocab_files(tmp_path, merges, extra=()):
    """A byte-level vocabulary of the 256 byte symbols, the merges' results and EOD."""
    symbols = list(byte_symbols().values())
    vocab = {s: i for i, s in enumerate(symbols)}
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    vocab.update(extra)
    vocab.setdefault("<|endoftext|>", len(vocab))
    vocab_path, merges_path = tmp_path / "vocab.json", tmp_path / "merges.txt"
    vocab_path.write_text(json.dumps(vocab), encoding="utf-8")
    lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in merges]
    merges_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return vocab, str(vocab_path), str(merges_path)


TINY_MERGES = [
    ("Ġ", "t"),
    ("h", "e"),
    ("Ġt", "he"),
    ("e", "r"),
    ("a", "a"),
    ("aa", "aa"),
    ("'", "s"),
]
TINY_TEXTS = [
    "the other there's aaaaaaa  aaa\n\n  x",
    "Ça coûte 12€ — naïve 東京 123abc?!  \t end  ",
    "It's they'll we'd I'm you've 're  ",
    "\n\n\n",
    "",
]


def test_tiny_vocabulary_matches_the_reference(tmp_path):
    vocab, vocab_path, merges_path = tiny_vocab_files(tmp_path, TINY_MERGES)
    ours = gpt2_tokenizer.load(vocab_path, merges_path)
    reference = ReferenceEncoder(vocab, TINY_MERGES)
    for text in TINY_TEXTS:
        assert ours.encode(text) == reference.encode(text), text
        assert ours.decode(ours.encode(text)) == text
    # "aaaaaaa": (a,a) is merged first everywhere, then (aa,aa): aaaa aa a.
    assert ours.encode("aaaaaaa") == [vocab["aaaa"], vocab["aa"], vocab["a"]]
    assert ours.eod == vocab["<|endoftext|>"] and ours.vocab_size == len(vocab)


@pytest.mark.parametrize(
    "which, content, message",
    [
        ("vocab", None, "cannot read GPT-2 vocab file"),
        ("vocab", "{not json", "is not valid JSON"),
        ("vocab", '{"a": 0}', "has no <|endoftext|> token"),
        ("vocab", "[1, 2]", "must be a JSON object"),
        ("merges", None, "cannot read GPT-2 merges file"),
        ("merges", "#version: 0.2\nh e\nnot-a-pair\n", "merges.txt:3: expected two vocabulary"),
        ("merges", "#version: 0.2\nq \u4e00\n", "merges.txt:2: expected two vocabulary"),
    ],
)
def test_bad_files_are_one_line_errors_naming_the_file(tmp_path, which, content, message):
    _, vocab_path, merges_path = tiny_vocab_files(tmp_path, TINY_MERGES)
    path = vocab_path if which == "vocab" else merges_path
    os.remove(path)
    if content is not None:
        with open(path, "w", encoding="utf-8") as f:
            f.write(content)
    with pytest.raises(UserError, match=message) as err:
        gpt2_tokenizer.load(vocab_path, merges_path)
    assert path in str(err.value) and "\n" not in str(err.value)

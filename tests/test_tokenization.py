"""FullTokenizer (HF tokenizers + cached word path) equals the plain-Python Google algorithm."""

import json
import os

import pytest

from bert_data.tokenization import FullTokenizer, check_casing
from common.errors import UserError
from tests.google_reference import ReferenceTokenizer

DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")
VOCAB = os.path.join(DATA, "vocab", "bert-base-uncased", "vocab.txt")
needs_data = pytest.mark.skipif(
    not os.path.isfile(VOCAB), reason="../shared/data (real vocab and corpora) is not present"
)


def _compare(texts, lower):
    ours = FullTokenizer(VOCAB, lower).tokenize_batch(texts)
    ref = ReferenceTokenizer(VOCAB, lower)
    bad = [(t, o, r) for t, o in zip(texts, ours) if o != (r := ref.tokenize(t))]
    assert not bad, f"{len(bad)} of {len(texts)} differ; first: {bad[0]}"


@needs_data
@pytest.mark.parametrize("lower", [True, False])
def test_wikitext_valid_every_line(lower):
    with open(os.path.join(DATA, "wikitext-2", "wiki.valid.raw"), encoding="utf-8") as f:
        lines = [line.rstrip("\n") for line in f]
    assert len(lines) == 3760
    _compare(lines, lower)


@needs_data
@pytest.mark.parametrize("lower", [True, False])
def test_squad_dev_every_context(lower):
    with open(os.path.join(DATA, "squad", "dev-v1.1.json"), encoding="utf-8") as f:
        squad = json.load(f)
    contexts = [p["context"] for a in squad["data"] for p in a["paragraphs"]]
    assert len(contexts) == 2067
    _compare(contexts, lower)


HARD_CASES = [
    "Héllo Wörld, naïve café — déjà vu!",
    "ΟΔΟΣ ΣΟΦΟΣ Σίσυφος",  # Greek final sigma under lower-casing
    "İstanbul ÇAĞ",  # dotted capital I decomposes when lower-cased
    "tab\tnew\nline\rret and\x00nul\x01ctrl\x7fdel",
    "zero\u200bwidth soft\u00adhyphen",  # Cf characters are deleted, joining the word
    "line\u2028sep para\u2029sep nel\x85here vt\x0bff\x0c",  # Python splits here, Google does not
    "nbsp\u00a0thin\u2009ideo\u3000space",
    "中文字符和日本語のテキスト mixed漢字text",
    "private\ue000use unassigned\U000e0080 surrogate-free",
    "a" * 100 + " " + "b" * 101,  # 100 characters pass, 101 -> [UNK]
    "emoji 😀 and symbols ©®™ ½ ∑",
    "don't stop-believing (1,234.56) [x] {y} <z> a_b a|b ~`^",
    "",
    "   ",
]


@needs_data
@pytest.mark.parametrize("lower", [True, False])
def test_hard_cases(lower):
    _compare(HARD_CASES, lower)


@needs_data
def test_long_word_is_unk_and_api_names():
    tok = FullTokenizer(VOCAB, True)
    assert tok.tokenize("a" * 101) == ["[UNK]"]
    tokens = tok.tokenize("Unaffable playing")
    assert tokens == ["una", "##ffa", "##ble", "playing"]
    ids = tok.convert_tokens_to_ids(tokens)
    assert tok.convert_ids_to_tokens(ids) == tokens
    assert tok.vocab["[CLS]"] == 101 and tok.vocab["the"] == 1996
    assert tok.encode_batch(["the the"]) == [[1996, 1996]]


def _write_vocab(tmp_path, tokens):
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(tokens) + "\n", encoding="utf-8")
    return str(path)


def test_small_vocab_batch_equals_single(tmp_path):
    vocab = _write_vocab(
        tmp_path,
        ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "##s", "sat", ".", "é"],
    )
    tok = FullTokenizer(vocab, True)
    ref = ReferenceTokenizer(vocab, True)
    texts = ["The cats sat.", "the dog sat", "Café", "cat cats catss"]
    assert tok.tokenize_batch(texts) == [tok.tokenize(t) for t in texts]
    assert tok.tokenize_batch(texts) == [ref.tokenize(t) for t in texts]


def test_missing_special_tokens_is_one_line_error(tmp_path):
    vocab = _write_vocab(tmp_path, ["[PAD]", "[UNK]", "the"])
    with pytest.raises(UserError, match=r"lacks the special token\(s\) \[CLS\] \[SEP\] \[MASK\]"):
        FullTokenizer(vocab, True)


def test_missing_vocab_file():
    with pytest.raises(UserError, match="vocab file not found: /nonexistent/vocab.txt"):
        FullTokenizer("/nonexistent/vocab.txt", True)


def test_casing_mismatch_detected(tmp_path):
    cased = {t: i for i, t in enumerate(["[PAD]", "The", "Cat", "House", "dog"])}
    with pytest.raises(UserError, match="is cased"):
        check_casing(cased, True, "v.txt")
    check_casing(cased, False, "v.txt")  # consistent: no error

"""FullTokenizer (HF tokenizers + cached word path) equals the plain-Python Google algorithm."""

import json
import os

import pytest

from bert_data import tokenization
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
    "a" * 200 + " " + "b" * 201,  # 200 characters pass, 201 -> [UNK] (Google's limit)
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
    assert tok.tokenize("a" * 201) == ["[UNK]"]
    # Google's limit is 200 characters (Hugging Face's BertTokenizer has 100).
    pieces = tok.tokenize("a" * 200)
    assert "[UNK]" not in pieces and "".join(p.removeprefix("##") for p in pieces) == "a" * 200
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
    tok = FullTokenizer(vocab, True)  # any vocab loads, as in Google's
    with pytest.raises(UserError, match=r"lacks the special token\(s\) \[CLS\] \[SEP\] \[MASK\]"):
        tokenization.check_special_tokens(tok.vocab, vocab)
    tokenization.check_special_tokens(tok.vocab, vocab, ("[PAD]", "[UNK]"))


def test_missing_vocab_file():
    with pytest.raises(UserError, match="vocab file not found: /nonexistent/vocab.txt"):
        FullTokenizer("/nonexistent/vocab.txt", True)


def test_casing_mismatch_detected(tmp_path):
    cased = {t: i for i, t in enumerate(["[PAD]", "The", "Cat", "House", "dog"])}
    with pytest.raises(UserError, match="is cased"):
        check_casing(cased, True, "v.txt")
    check_casing(cased, False, "v.txt")  # consistent: no error


# ---------------------------------------------------------------------------------------------
# The cases of Google's tokenization_test.py, as a drop-in for its module API.

GOOGLE_TEST_VOCAB = [
    "[UNK]",
    "[CLS]",
    "[SEP]",
    "want",
    "##want",
    "##ed",
    "wa",
    "un",
    "runn",
    "##ing",
]


def test_google_full_tokenizer_on_a_vocab_without_pad_and_mask(tmp_path):
    vocab = _write_vocab(tmp_path, [*GOOGLE_TEST_VOCAB, ","])
    tok = tokenization.FullTokenizer(vocab_file=vocab)  # do_lower_case defaults to True
    tokens = tok.tokenize("UNwant\u00e9d,running")
    assert tokens == ["un", "##want", "##ed", ",", "runn", "##ing"]
    assert tok.convert_tokens_to_ids(tokens) == [7, 4, 5, 10, 8, 9]
    assert tok.convert_ids_to_tokens([7, 4, 5, 10, 8, 9]) == tokens
    assert tok.tokenize("UNwant\u00e9d,running".encode()) == tokens  # UTF-8 bytes too
    assert tok.vocab["runn"] == 8 and tok.inv_vocab[8] == "runn"
    assert tok.basic_tokenizer.tokenize("UNwant\u00e9d") == ["unwanted"]
    assert tok.wordpiece_tokenizer.tokenize("unwanted") == ["un", "##want", "##ed"]
    # Google's FullTokenizer keeps WordpieceTokenizer's default limit of 200 characters.
    assert tok.tokenize("UN" + "want" * 49) == ["un"] + ["##want"] * 49
    assert tok.tokenize("un" + "want" * 50) == ["[UNK]"]


def test_google_chinese_characters_become_words():
    basic = tokenization.BasicTokenizer()
    assert basic.tokenize("ah\u535a\u63a8zz") == ["ah", "\u535a", "\u63a8", "zz"]


def test_google_basic_tokenizer_lower_and_not():
    text = "  \tHeLLo!how  \n Are yoU?  "
    lower = tokenization.BasicTokenizer(do_lower_case=True)
    assert lower.tokenize(text) == ["hello", "!", "how", "are", "you", "?"]
    assert lower.tokenize("H\u00e9llo") == ["hello"]  # accent stripped
    cased = tokenization.BasicTokenizer(do_lower_case=False)
    assert cased.tokenize(text) == ["HeLLo", "!", "how", "Are", "yoU", "?"]
    assert cased.tokenize("H\u00e9llo") == ["H\u00e9llo"]


def test_google_wordpiece_tokenizer():
    vocab = {token: i for i, token in enumerate(GOOGLE_TEST_VOCAB)}
    wordpiece = tokenization.WordpieceTokenizer(vocab=vocab)
    assert wordpiece.tokenize("") == []
    assert wordpiece.tokenize("unwanted running") == ["un", "##want", "##ed", "runn", "##ing"]
    assert wordpiece.tokenize("unwantedX running") == ["[UNK]", "runn", "##ing"]
    assert wordpiece.max_input_chars_per_word == 200  # Google's default
    short = tokenization.WordpieceTokenizer(vocab, unk_token="<?>", max_input_chars_per_word=7)
    assert short.tokenize("unwanted want") == ["<?>", "want"]  # 8 characters > 7
    assert wordpiece.tokenize("un" + "want" * 49) == ["un"] + ["##want"] * 49  # 198 characters
    assert wordpiece.tokenize("un" + "want" * 50) == ["[UNK]"]  # 202 characters


def test_google_convert_tokens_to_ids():
    vocab = {token: i for i, token in enumerate(GOOGLE_TEST_VOCAB)}
    tokens = ["un", "##want", "##ed", "runn", "##ing"]
    assert tokenization.convert_tokens_to_ids(vocab, tokens) == [7, 4, 5, 8, 9]
    inv_vocab = {i: token for token, i in vocab.items()}
    assert tokenization.convert_ids_to_tokens(inv_vocab, [7, 4, 5, 8, 9]) == tokens
    assert tokenization.convert_by_vocab(vocab, ["wa"]) == [6]
    with pytest.raises(KeyError):  # Google's maps only tokens that are in the vocab
        tokenization.convert_tokens_to_ids(vocab, ["nope"])


def test_google_load_vocab_and_text_helpers(tmp_path):
    vocab = tokenization.load_vocab(_write_vocab(tmp_path, GOOGLE_TEST_VOCAB))
    assert list(vocab.items()) == [(t, i) for i, t in enumerate(GOOGLE_TEST_VOCAB)]
    assert tokenization.convert_to_unicode(b"caf\xc3\xa9") == "caf\u00e9"
    assert tokenization.convert_to_unicode("caf\u00e9") == "caf\u00e9"
    assert tokenization.printable_text(b"x\xffy") == "xy"  # invalid UTF-8 dropped
    with pytest.raises(ValueError):
        tokenization.convert_to_unicode(3)
    assert tokenization.whitespace_tokenize("  a\tb \n c  ") == ["a", "b", "c"]
    assert tokenization.whitespace_tokenize("   ") == []


@pytest.mark.parametrize(
    "char, whitespace, control, punctuation",
    [
        (" ", True, False, False),
        ("\t", True, False, False),
        ("\r", True, False, False),
        ("\n", True, False, False),
        ("\u00a0", True, False, False),  # no-break space (Zs)
        ("A", False, False, False),
        ("-", False, False, True),
        ("$", False, False, True),  # ASCII symbols count as punctuation
        ("`", False, False, True),
        (".", False, False, True),
        ("\u0005", False, True, False),
        ("\u200b", False, True, False),  # zero-width space is Cf, not whitespace
        ("\U0001f4a9", False, False, False),
        ("\u00bf", False, False, True),  # inverted question mark (Po)
    ],
)
def test_google_character_classes(char, whitespace, control, punctuation):
    assert tokenization._is_whitespace(char) is whitespace
    assert tokenization._is_control(char) is control
    assert tokenization._is_punctuation(char) is punctuation


@pytest.mark.parametrize(
    "checkpoint, do_lower_case, raises",
    [
        ("gs://bucket/uncased_L-24_H-1024_A-16/bert_model.ckpt", False, True),
        ("gs://bucket/uncased_L-24_H-1024_A-16/bert_model.ckpt", True, False),
        ("/models/cased_L-12_H-768_A-12/bert_model.ckpt", True, True),
        ("/models/cased_L-12_H-768_A-12/bert_model.ckpt", False, False),
        ("multi_cased_L-12_H-768_A-12/bert_model.ckpt", True, True),
        ("/m/chinese_L-12_H-768_A-12/bert_model.ckpt", False, True),
        ("/models/my_own_model/bert_model.ckpt", True, False),  # unknown name: no opinion
        ("/models/uncased_L-12_H-768_A-12/ckpt-100", False, False),  # not bert_model.ckpt
        ("", False, False),
        (None, True, False),
    ],
)
def test_validate_case_matches_checkpoint(checkpoint, do_lower_case, raises):
    if raises:
        with pytest.raises(ValueError, match=f"--do_lower_case={not do_lower_case}"):
            tokenization.validate_case_matches_checkpoint(do_lower_case, checkpoint)
    else:
        tokenization.validate_case_matches_checkpoint(do_lower_case, checkpoint)

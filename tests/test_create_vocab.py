"""Tests for bert_data/create_vocab.py (WordPiece vocab training)."""

import os
import re
import string
import subprocess
import sys
import unicodedata

import pytest

from bert_data import create_vocab

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.join(REPO, "bert_data", "sample.txt")
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _words(text, lower):
    """Google BasicTokenizer for plain text (letters, digits, ASCII punctuation and accents only):
    optional lower-case + accent stripping, whitespace split, each punctuation mark a word."""
    if lower:
        text = "".join(
            c for c in unicodedata.normalize("NFD", text.lower()) if unicodedata.category(c) != "Mn"
        )
    words = []
    for chunk in text.split():
        for piece in re.findall(r"\w+|[^\w\s]", chunk):
            is_punct = piece in string.punctuation or unicodedata.category(piece[0]).startswith("P")
            assert len(piece) == 1 or not is_punct
            words.append(piece)
    return words


def _wordpiece(word, vocab):
    """Google's greedy longest-match-first WordPiece; a word that cannot be covered is [UNK]."""
    pieces, start = [], 0
    while start < len(word):
        end = len(word)
        while end > start:
            piece = ("##" if start else "") + word[start:end]
            if piece in vocab:
                break
            end -= 1
        if end == start:
            return ["[UNK]"]
        pieces.append(piece)
        start = end
    return pieces


def _train(tmp_path, *args, name="vocab.txt"):
    output = tmp_path / name
    create_vocab.main(["--input-file", SAMPLE, "--output-file", str(output), *args])
    return output


def test_sample_vocab_1000_uncased(tmp_path, capsys):
    output = _train(tmp_path, "--vocab-size", "1000", "--do-lower-case")
    tokens = output.read_text(encoding="utf-8").split("\n")
    assert tokens[-1] == "" and "" not in tokens[:-1]  # one token per line, final newline
    tokens = tokens[:-1]
    assert tokens[:5] == SPECIALS
    assert len(tokens) == 1000 and len(set(tokens)) == 1000

    with open(SAMPLE, encoding="utf-8") as f:
        text = f.read()
    words = _words(text, lower=True)
    # Uncased: every character of the lower-cased, accent-stripped text, and nothing else.
    chars = {c for w in words for c in w}
    singles = {t for t in tokens[5:] if len(t) == 1}
    assert singles == chars
    assert "é" not in tokens and "C" not in tokens
    # Each "##" piece continues a word with characters the text has.
    assert all(set(t[2:]) <= chars for t in tokens if t.startswith("##"))
    assert {"the", "and", "of"} <= set(tokens)  # frequent words are whole tokens

    # The printed coverage equals an independent Google-WordPiece tokenisation of the text.
    vocab = set(tokens)
    pieces = [p for w in words for p in _wordpiece(w, vocab)]
    assert pieces.count("[UNK]") == 0
    out = capsys.readouterr().out
    assert f"(0 of {len(pieces)} wordpieces)" in out
    assert f"{len(pieces) / len(words):.2f} wordpieces per word" in out
    assert "vocab size 1000" in out


def test_cased_vocab_keeps_case_and_accents(tmp_path):
    tokens = _train(tmp_path, "--vocab-size", "700").read_text(encoding="utf-8").split("\n")[:-1]
    assert tokens[:5] == SPECIALS
    for char in ["é", "ï", "T", "A", "##é"]:
        assert char in tokens, char
    assert len(tokens) == 704  # 700 padded up to a multiple of 8
    assert tokens[-4:] == ["[unused0]", "[unused1]", "[unused2]", "[unused3]"]


def test_padding_and_a_text_too_small_for_the_size(tmp_path, capsys):
    tokens = _train(
        tmp_path, "--vocab-size", "1000", "--do-lower-case", "--pad-to-multiple-of", "64"
    )
    tokens = tokens.read_text(encoding="utf-8").split("\n")[:-1]
    assert len(tokens) == 1024 and tokens[1000:] == [f"[unused{i}]" for i in range(24)]

    capsys.readouterr()
    big = _train(tmp_path, "--vocab-size", "100000", "--do-lower-case", name="big.txt")
    tokens = big.read_text(encoding="utf-8").split("\n")[:-1]
    out = capsys.readouterr().out
    trained = int(re.search(r"supports only (\d+) tokens", out).group(1))
    assert 1000 < trained < 100000
    assert len(tokens) == trained + (-trained) % 8 and len(tokens) % 8 == 0
    assert tokens[trained:] == [f"[unused{i}]" for i in range(len(tokens) - trained)]


def test_comma_separated_globs_give_the_same_vocab(tmp_path):
    with open(SAMPLE, encoding="utf-8") as f:
        documents = f.read().split("\n\n")
    parts = tmp_path / "parts"
    parts.mkdir()
    half = len(documents) // 2
    (parts / "a.txt").write_text("\n\n".join(documents[:half]) + "\n", encoding="utf-8")
    (parts / "b1.txt").write_text("\n\n".join(documents[half:]), encoding="utf-8")
    whole = _train(tmp_path, "--vocab-size", "900", "--do-lower-case", name="whole.txt")
    split = tmp_path / "split.txt"
    create_vocab.main(
        [
            "--input-file",
            f"{parts}/a.txt, {parts}/b*.txt",
            "--output-file",
            str(split),
            "--vocab-size",
            "900",
            "--do-lower-case",
        ]
    )
    assert split.read_bytes() == whole.read_bytes()


def test_training_is_deterministic_across_processes(tmp_path):
    # Separate processes get different Rust hash-map seeds, which is what used to change the
    # vocab (huggingface/tokenizers#1794); 3 runs on a 30 KB text make a lucky pass unlikely.
    outputs = []
    for run in range(3):
        output = tmp_path / f"vocab{run}.txt"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "bert_data.create_vocab",
                "--input-file",
                SAMPLE,
                "--output-file",
                str(output),
                "--vocab-size",
                "1000",
                "--do-lower-case",
            ],
            cwd=REPO,
            check=True,
            capture_output=True,
        )
        outputs.append(output.read_bytes())
    assert outputs[0] == outputs[1] == outputs[2]


def test_choose_alphabet_breaks_ties_by_code_point():
    counts = {"b": 5, "a": 5, "z": 9, ".": 7, "y": 1}
    alphabet, continuations = create_vocab.choose_alphabet(counts, 3)
    assert alphabet == [".", "a", "z"]  # z (9), . (7), then a beats b on code point
    assert continuations == ["##a", "##z"]  # punctuation never continues a word


def _error(capsys, argv):
    with pytest.raises(SystemExit) as exit_info:
        create_vocab.main(argv)
    assert exit_info.value.code != 0
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    return err


def test_errors(tmp_path, capsys):
    out = str(tmp_path / "vocab.txt")
    err = _error(capsys, ["--input-file", str(tmp_path / "missing*.txt"), "--output-file", out])
    assert "matches no file" in err

    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n\n", encoding="utf-8")
    assert "no text" in _error(capsys, ["--input-file", str(empty), "--output-file", out])

    err = _error(capsys, ["--input-file", SAMPLE, "--output-file", out, "--vocab-size", "60"])
    assert "--vocab-size 60 is smaller than" in err

    blocker = tmp_path / "file"
    blocker.write_text("x", encoding="utf-8")
    err = _error(capsys, ["--input-file", SAMPLE, "--output-file", str(blocker / "vocab.txt")])
    assert "cannot create output directory" in err

    err = _error(capsys, ["--input-file", SAMPLE, "--output-file", out, "--vocab-size", "0"])
    assert "--vocab-size must be a positive integer" in err
    assert not os.path.exists(out)

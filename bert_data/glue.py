"""GLUE tasks: the standard TSV layouts, examples, Google's classifier features, submission files.

The data folder is the one GLUE's download script makes (`CoLA/`, `MNLI/`, `MRPC/`, ...). Files are
read as GLUE and Google's `run_classifier.py` read them: tab-separated, no quote character (quotes
are text), one row per line. Every row's column count and label are checked, so a wrong file or a
shifted column is a one-line error naming the file and line instead of silently wrong training data.

Features follow Google's `convert_single_example`: `[CLS] a [SEP] b [SEP]` with segment ids 0 then
1, a pair truncated longest-first to `max_seq_length - 3` (ties cut b), a single text to
`max_seq_length - 2`.
"""

import csv
import dataclasses
import difflib
import math
import os
from typing import NamedTuple

import numpy as np

from bert_data import tokenization
from common.errors import UserError
from common.fileio import atomic_write_text, ensure_output_dir

SPLITS = ("train", "dev", "test")


@dataclasses.dataclass(frozen=True)
class SplitFormat:
    """Layout of one GLUE TSV file.

    Attributes:
      file: file name inside the task folder.
      num_columns: columns every row (and the header) has.
      header: whether the first line is a header.
      text_a, text_b, label, index: column indices (None: the split has no such column). `index`
        names the row in submission files; without it the data-row number is used.
    """

    file: str
    num_columns: int
    header: bool
    text_a: int
    text_b: int | None = None
    label: int | None = None
    index: int | None = None


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """One GLUE task.

    Attributes:
      name: task name as given to `--task-name`.
      folder: folder inside the GLUE data directory.
      labels: label strings in label-id order, or None for regression (STS-B).
      splits: {"train"|"dev"|"test": SplitFormat} (AX has only "test").
      submission_file: file name the GLUE leaderboard expects for this task's test predictions.
      model_task: the task whose fine-tuned model makes these predictions (mnli for ax).
    """

    name: str
    folder: str
    labels: tuple[str, ...] | None
    splits: dict
    submission_file: str
    model_task: str

    @property
    def is_regression(self):
        return self.labels is None

    @property
    def num_labels(self):
        """Classifier outputs: number of labels, 1 for regression."""
        return 1 if self.labels is None else len(self.labels)

    @property
    def is_pair(self):
        return self.splits[next(iter(self.splits))].text_b is not None


class InputExample(NamedTuple):
    """One GLUE row: guid "<split>-<index>", texts, label string (float for STS-B; None in test)."""

    guid: str
    text_a: str
    text_b: str | None
    label: str | float | None


_BINARY = ("0", "1")
_NLI = ("contradiction", "entailment", "neutral")
_QNLI = ("entailment", "not_entailment")


def _pair_task(name, folder, labels, columns, submission, counts, test_columns=None, files=None):
    """A task with an index column first, texts at `columns` and the label last (train/dev).

    `counts` are the (train, dev, test) column counts; the test file has no label.
    """
    a, b = columns
    ta, tb = test_columns or columns
    train_file, dev_file, test_file = files or ("train.tsv", "dev.tsv", "test.tsv")
    return TaskSpec(
        name=name,
        folder=folder,
        labels=labels,
        splits={
            "train": SplitFormat(train_file, counts[0], True, a, b, counts[0] - 1, 0),
            "dev": SplitFormat(dev_file, counts[1], True, a, b, counts[1] - 1, 0),
            "test": SplitFormat(test_file, counts[2], True, ta, tb, None, 0),
        },
        submission_file=submission,
        model_task=name,
    )


def _mnli(name, suffix, submission):
    # MNLI rows: index promptID pairID genre s1_binary_parse s2_binary_parse s1_parse s2_parse
    # sentence1 sentence2 [label1 (train) | label1..label5 (dev)] gold_label.
    return _pair_task(
        name,
        "MNLI",
        _NLI,
        (8, 9),
        submission,
        counts=(12, 16, 10),
        files=("train.tsv", f"dev_{suffix}.tsv", f"test_{suffix}.tsv"),
    )


TASKS = {
    "cola": TaskSpec(
        name="cola",
        folder="CoLA",
        labels=_BINARY,
        # train/dev: source, label, original label (or empty), sentence; no header.
        splits={
            "train": SplitFormat("train.tsv", 4, False, 3, label=1),
            "dev": SplitFormat("dev.tsv", 4, False, 3, label=1),
            "test": SplitFormat("test.tsv", 2, True, 1, index=0),
        },
        submission_file="CoLA.tsv",
        model_task="cola",
    ),
    "sst2": TaskSpec(
        name="sst2",
        folder="SST-2",
        labels=_BINARY,
        splits={
            "train": SplitFormat("train.tsv", 2, True, 0, label=1),
            "dev": SplitFormat("dev.tsv", 2, True, 0, label=1),
            "test": SplitFormat("test.tsv", 2, True, 1, index=0),
        },
        submission_file="SST-2.tsv",
        model_task="sst2",
    ),
    # MRPC train/dev: Quality, #1 ID, #2 ID, #1 String, #2 String (label first, no index column).
    "mrpc": TaskSpec(
        name="mrpc",
        folder="MRPC",
        labels=_BINARY,
        splits={
            "train": SplitFormat("train.tsv", 5, True, 3, 4, label=0),
            "dev": SplitFormat("dev.tsv", 5, True, 3, 4, label=0),
            "test": SplitFormat("test.tsv", 5, True, 3, 4, index=0),
        },
        submission_file="MRPC.tsv",
        model_task="mrpc",
    ),
    # STS-B: index genre filename year old_index source1 source2 sentence1 sentence2 [score].
    "stsb": _pair_task("stsb", "STS-B", None, (7, 8), "STS-B.tsv", (10, 10, 9)),
    # QQP: id qid1 qid2 question1 question2 is_duplicate; test: id question1 question2.
    "qqp": _pair_task("qqp", "QQP", _BINARY, (3, 4), "QQP.tsv", (6, 6, 3), test_columns=(1, 2)),
    "mnli": _mnli("mnli", "matched", "MNLI-m.tsv"),
    "mnli-mm": _mnli("mnli-mm", "mismatched", "MNLI-mm.tsv"),
    # QNLI, RTE, WNLI: index, sentence1 (question), sentence2 (sentence), label.
    "qnli": _pair_task("qnli", "QNLI", _QNLI, (1, 2), "QNLI.tsv", (4, 4, 3)),
    "rte": _pair_task("rte", "RTE", _QNLI, (1, 2), "RTE.tsv", (4, 4, 3)),
    "wnli": _pair_task("wnli", "WNLI", _BINARY, (1, 2), "WNLI.tsv", (4, 4, 3)),
    # AX, the diagnostic set: index sentence1 sentence2, test only, predicted by an MNLI model.
    "ax": TaskSpec(
        name="ax",
        folder="AX",
        labels=_NLI,
        splits={"test": SplitFormat("test.tsv", 3, True, 1, 2, index=0)},
        submission_file="AX.tsv",
        model_task="mnli",
    ),
}


def get_task(name):
    """The TaskSpec of a GLUE task name (case-insensitive); unknown names are a UserError."""
    key = str(name).strip().lower()
    if key in TASKS:
        return TASKS[key]
    hint = difflib.get_close_matches(key.replace("_", "-"), TASKS, n=1, cutoff=0.5)
    if not hint:  # "sst-2", "sts-b": the folder spelling
        hint = [t.name for t in TASKS.values() if t.folder.lower() == key]
    did_you_mean = f" (did you mean {hint[0]}?)" if hint else ""
    raise UserError(f"unknown GLUE task {name!r}{did_you_mean}; valid tasks: {', '.join(TASKS)}")


def task_file(data_dir, task, split):
    """Path of a task's split file and the SplitFormat.

    `data_dir` may be the GLUE root (holding CoLA/, MRPC/, ...) or the task's own folder (the
    reference app's `--data-dir`).
    """
    spec = get_task(task)
    if split not in SPLITS:
        raise UserError(f"unknown GLUE split {split!r}; valid splits: {', '.join(SPLITS)}")
    if split not in spec.splits:
        raise UserError(
            f"GLUE task {spec.name} has no {split} split (only {', '.join(spec.splits)}); "
            f"it is predicted with a model fine-tuned on {spec.model_task}"
        )
    fmt = spec.splits[split]
    if not os.path.isdir(data_dir):
        raise UserError(
            f"GLUE data folder {data_dir} does not exist; point --data-dir at the GLUE data "
            f"(the folder holding {spec.folder}/) or at the {spec.folder} folder itself"
        )
    nested = os.path.join(data_dir, spec.folder)
    folder = nested if os.path.isdir(nested) else data_dir
    path = os.path.join(folder, fmt.file)
    if not os.path.isfile(path):
        where = path if folder == nested else f"{os.path.join(nested, fmt.file)} or {path}"
        raise UserError(
            f"GLUE task {spec.name} wants its {split} file {where}, which does not exist; "
            "download GLUE with download_glue.py or point --data-dir at the GLUE data folder"
        )
    return path, fmt


def _row_error(path, line, message):
    return UserError(f"{path} line {line}: {message}")


def read_examples(data_dir, task, split):
    """Reads one split of a GLUE task.

    Args:
      data_dir: the GLUE data folder (or the task's folder, see `task_file`).
      task: task name (see TASKS); mnli reads dev_matched/test_matched, mnli-mm the mismatched
        files.
      split: "train", "dev" or "test".

    Returns:
      list of InputExample in file order. Labels are label strings from the task's set (a float for
      STS-B); None for test rows, which have no labels.
    """
    spec = get_task(task)
    path, fmt = task_file(data_dir, task, split)
    examples = []
    try:
        # utf-8-sig: some GLUE files (MRPC) begin with a byte-order mark.
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f, delimiter="\t", quotechar=None)
            header_pending = fmt.header
            for row in reader:
                if not row:
                    continue  # blank line (e.g. a trailing one)
                line = reader.line_num
                if len(row) != fmt.num_columns:
                    raise _row_error(
                        path,
                        line,
                        f"has {len(row)} tab-separated columns, GLUE's {spec.name} {split} file "
                        f"has {fmt.num_columns}; is this the {spec.folder} {fmt.file} of GLUE?",
                    )
                if header_pending:
                    header_pending = False
                    continue
                index = row[fmt.index] if fmt.index is not None else str(len(examples))
                text_b = row[fmt.text_b] if fmt.text_b is not None else None
                label = (
                    None if fmt.label is None else _parse_label(spec, row[fmt.label], path, line)
                )
                examples.append(InputExample(f"{split}-{index}", row[fmt.text_a], text_b, label))
    except OSError as err:
        raise UserError(f"cannot read GLUE file {path}: {err.strerror}") from None
    except UnicodeDecodeError:
        raise UserError(f"GLUE file {path} is not UTF-8 text") from None
    except csv.Error as err:
        raise _row_error(path, reader.line_num, f"unreadable TSV row: {err}") from None
    if not examples:
        raise UserError(f"{path} has no examples; is it the {spec.folder} {fmt.file} of GLUE?")
    return examples


def _parse_label(spec, value, path, line):
    value = value.strip()
    if spec.is_regression:
        try:
            score = float(value)
        except ValueError:
            score = math.nan
        if not math.isfinite(score):
            raise _row_error(path, line, f"{spec.name} score {value!r} is not a finite number")
        return score
    if value not in spec.labels:
        raise _row_error(
            path,
            line,
            f"label {value!r} is not one of the {spec.name} labels {{{', '.join(spec.labels)}}}",
        )
    return value


def truncated_pair_lengths(len_a, len_b, max_length):
    """Lengths Google's `_truncate_seq_pair` leaves: it cuts the longer list, b on ties.

    Args:
      len_a, len_b: int arrays [N] of token counts.
      max_length: total tokens allowed for a and b together.

    Returns:
      (kept_a, kept_b) int64 arrays [N].
    """
    len_a = np.asarray(len_a, np.int64)
    len_b = np.asarray(len_b, np.int64)
    # Cutting the longer one first ends balanced, a getting the odd token (ties cut b), unless one
    # side is already within its half and is never cut.
    share_a, share_b = (max_length + 1) // 2, max_length // 2
    fits = len_a + len_b <= max_length
    a_short = len_a <= share_a
    b_short = ~a_short & (len_b <= share_b)
    kept_a = np.where(a_short, len_a, np.where(b_short, max_length - len_b, share_a))
    kept_b = np.where(a_short, max_length - len_a, np.where(b_short, len_b, share_b))
    return np.where(fits, len_a, kept_a), np.where(fits, len_b, kept_b)


def convert_examples_to_features(examples, task, tokenizer, max_seq_length):
    """Google's classifier features for a list of examples.

    An example is a pair when its text_b has tokens; pairs are truncated longest-first to
    max_seq_length - 3, single texts to max_seq_length - 2. Tokenises each text column in one batch.

    Args:
      examples: list of InputExample.
      task: task name (labels and regression come from its spec).
      tokenizer: a `bert_data.tokenization.FullTokenizer` whose vocab has [UNK] [CLS] [SEP].
      max_seq_length: S.

    Returns:
      dict of NumPy arrays: input_ids, input_mask, segment_ids int32 [N, S]; label_ids int32 [N]
      (index in the task's labels, -1 for unlabelled rows) or float32 [N] for regression (NaN when
      unlabelled); is_real_example int32 [N] (all 1).
    """
    spec = get_task(task)
    seq = int(max_seq_length)
    shortest = 3 if spec.is_pair or any(e.text_b for e in examples) else 2
    if seq < shortest:
        raise UserError(
            f"max_seq_length {seq} is too short for {spec.name}: [CLS] and [SEP] tokens alone take "
            f"{shortest}; use 128 (GLUE's usual length)"
        )
    tokenization.check_special_tokens(
        tokenizer.vocab, tokenizer.vocab_file, tokenization.TASK_SPECIAL_TOKENS
    )
    cls_id, sep_id = tokenizer.vocab["[CLS]"], tokenizer.vocab["[SEP]"]
    n = len(examples)
    ids_a, len_a = tokenizer.encode_flat([e.text_a for e in examples])
    if any(e.text_b is not None for e in examples):
        ids_b, len_b = tokenizer.encode_flat(
            ["" if e.text_b is None else e.text_b for e in examples]
        )
    else:
        ids_b, len_b = np.zeros(0, np.int32), np.zeros(n, np.int64)
    pair = len_b > 0
    pair_a, pair_b = truncated_pair_lengths(len_a, len_b, seq - 3)
    kept_a = np.where(pair, pair_a, np.minimum(len_a, seq - 2))
    kept_b = np.where(pair, pair_b, 0)

    rows = np.arange(n)
    input_ids = np.zeros((n, seq), np.int32)
    input_ids[:, 0] = cls_id
    _scatter_tokens(input_ids, ids_a, len_a, kept_a, first_column=np.ones(n, np.int64))
    input_ids[rows, 1 + kept_a] = sep_id
    b_start = 2 + kept_a
    _scatter_tokens(input_ids, ids_b, len_b, kept_b, first_column=b_start)
    # Google drops b (and its [SEP]) when truncation left no b tokens.
    has_b = kept_b > 0
    input_ids[rows[has_b], (b_start + kept_b)[has_b]] = sep_id
    length = b_start + np.where(has_b, kept_b + 1, 0)

    columns = np.arange(seq)[None, :]  # [1, S]
    input_mask = columns < length[:, None]  # [N, S]
    segment_ids = input_mask & (columns >= b_start[:, None]) & has_b[:, None]
    return {
        "input_ids": input_ids,
        "input_mask": input_mask.astype(np.int32),
        "segment_ids": segment_ids.astype(np.int32),
        "label_ids": _label_ids(spec, examples),
        "is_real_example": np.ones(n, np.int32),
    }


def _scatter_tokens(out, ids, counts, kept, first_column):
    """Writes the first kept[i] of text i's tokens (flat `ids`, `counts` per text) into row i of
    `out`, starting at column first_column[i]."""
    counts = np.asarray(counts, np.int64)
    rows = np.repeat(np.arange(len(counts)), counts)
    position = np.arange(len(ids)) - np.repeat(np.cumsum(counts) - counts, counts)
    keep = position < kept[rows]
    out[rows[keep], first_column[rows[keep]] + position[keep]] = ids[keep]


def _label_ids(spec, examples):
    if spec.is_regression:
        values = [math.nan if e.label is None else float(e.label) for e in examples]
        return np.array(values, np.float32)
    label_map = {label: i for i, label in enumerate(spec.labels)}
    ids = np.full(len(examples), -1, np.int32)
    for i, e in enumerate(examples):
        if e.label is not None:
            if e.label not in label_map:
                raise UserError(
                    f"example {e.guid}: label {e.label!r} is not one of the {spec.name} labels "
                    f"{{{', '.join(spec.labels)}}}"
                )
            ids[i] = label_map[e.label]
    return ids


def _prediction_strings(spec, predictions):
    predictions = np.asarray(predictions)
    if spec.is_regression:
        scores = predictions.reshape(len(predictions), -1)
        if scores.shape[1] != 1:
            raise ValueError(f"stsb predictions must be [N] or [N, 1], got {predictions.shape}")
        # GLUE scores are in [0, 5]; the server rejects nothing, but out-of-range values only lose.
        return [f"{v:.3f}" for v in np.clip(scores[:, 0].astype(np.float64), 0.0, 5.0)]
    if predictions.ndim == 2:  # logits [N, num_labels]
        predictions = predictions.argmax(axis=-1)
    if predictions.ndim != 1 or (
        predictions.size and not np.issubdtype(predictions.dtype, np.integer)
    ):
        raise ValueError(f"{spec.name} predictions must be label ids [N] or logits [N, C]")
    if predictions.size and (predictions.min() < 0 or predictions.max() >= spec.num_labels):
        raise ValueError(f"{spec.name} label ids must be in [0, {spec.num_labels})")
    # Labels are "0"/"1" for the binary tasks: ints there, strings for the NLI tasks.
    return [spec.labels[i] for i in predictions.tolist()]


def write_predict_results(path, task, predictions, indices=None):
    """Writes a GLUE submission TSV: header `index<TAB>prediction`, one row per test example.

    Args:
      path: output file (written atomically; its folder is created).
      task: task name. mnli, mnli-mm, ax, qnli and rte get label strings; the binary tasks 0/1;
        stsb scores with 3 decimals clipped to [0, 5].
      predictions: label ids int [N] or logits float [N, num_labels]; for stsb, scores float [N]
        or [N, 1].
      indices: the rows' index strings (default 0..N-1, which is GLUE's test index column).
    """
    spec = get_task(task)
    values = _prediction_strings(spec, predictions)
    if indices is None:
        indices = range(len(values))
    elif len(indices) != len(values):
        raise ValueError(f"{len(indices)} indices for {len(values)} predictions")
    lines = ["index\tprediction"] + [f"{i}\t{v}" for i, v in zip(indices, values)]
    ensure_output_dir(path)
    atomic_write_text(path, "\n".join(lines) + "\n")


def write_eval_results(path, results):
    """Writes `key = value` lines sorted by key (the reference app's eval_results.txt)."""

    def text(value):
        return str(value.item() if isinstance(value, np.generic) else value)

    lines = [f"{key} = {text(results[key])}" for key in sorted(results)]
    ensure_output_dir(path)
    atomic_write_text(path, "\n".join(lines) + "\n")

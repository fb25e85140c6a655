"""Pipeline stages across devices (pipeline.py): a pipelined tiny BERT over 2 and 3 logical CPU
devices, and a tiny GPT-2 over 2, train as the single-device run; variables, optimizer slots and
the step's matmuls sit on their stage's device; mappings that cannot work are one line.

Splitting the CPU into logical devices must happen before TensorFlow starts, so the runs are
subprocesses."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest

import pipeline
from common.errors import UserError
from tests.run_outputs import run_script
from tests.test_finetuning import squad_file  # noqa: F401 (fixture)
from tests.test_run_pretraining import STEP_LINE, _final_state, run_dirs, small_run_args

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "run_pretraining.py")
TRAIN = ["--generated-data", "--num-train-steps", "3", "--steps-per-ckpts", "3"]
THREE_STAGES = '[["emb","pos","hid"],["hid"],["mlm","nsp"]]'


def _run(save_path, *extra):
    result = run_script(SCRIPT, *small_run_args(save_path, *TRAIN, *extra))
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = run_dirs(save_path)
    losses = np.array([[float(x) for x in m[1:]] for m in STEP_LINE.findall(result.stdout)])
    return result.stdout, losses, _final_state(run_dir)[1]


def test_pipelined_bert_equals_the_single_device_run(tmp_path):
    """Dropout on, 2 micro-batches per step, LAMB, XLA as shipped for the single-device run: 3
    steps of losses and every weight and slot; also with per-layer recomputation."""
    _, base_losses, base = _run(tmp_path / "one")
    for name, extra, devices in [
        ("two", ["--device-mapping", "[0,1,0]"], 2),
        ("three", ["--device-mapping", "[0,1,2]", "--pipeline-stages", THREE_STAGES], 3),
        ("recomputed", ["--device-mapping", "[0,1,1]", "--enable-recomputation", "true"], 2),
    ]:
        out, losses, state = _run(tmp_path / name, *extra)
        assert f"pipeline: 3 stages on {devices} devices, 2 micro-batches per step" in out
        assert len(re.findall(r"^pipeline device \d ", out, re.M)) == devices
        assert losses.shape == base_losses.shape == (3, 2)
        np.testing.assert_allclose(losses, base_losses, rtol=1e-5)
        assert state.keys() == base.keys()
        for key, value in base.items():
            np.testing.assert_allclose(state[key], value, rtol=1e-5, atol=1e-6, err_msg=key)


PLACEMENT_CHECK = r"""
import sys
sys.path.insert(0, sys.argv[1])
import options, training
from objectives import pretraining
cfg = options.parse_options(sys.argv[2:])
task = pretraining.PretrainingTask(cfg)
strategy = training.make_strategy(1, placement=task.placement)
model = task.build_model(strategy)
trainer = training.Trainer(task.cfg, strategy, model, task.loss)
for name, var in model.params.items():
    print("var", name, var.device[-5:])
for name, slot in trainer.optimizer.slots.items():
    print("slot", name, slot.device[-5:])
spec = [task.dataset().element_spec]
graph = trainer.step_function().get_concrete_function(spec).graph
graph_def = graph.as_graph_def()  # the step's ops, and those of its nested functions (tf.cond)
nodes = [*graph_def.node, *(n for f in graph_def.library.function for n in f.node_def)]
for i, node in enumerate(nodes):
    if node.op in ("MatMul", "BatchMatMulV2"):
        print("op", f"{i}-{node.name}", node.device[-5:])
    if node.op == "Sqrt":  # LAMB's update of each variable, in the step's tf.cond
        print("update", f"{i}-{node.name}", node.device[-5:])
"""


def test_variables_slots_matmuls_and_updates_sit_on_their_stage_device(tmp_path):
    script = tmp_path / "check.py"
    script.write_text(PLACEMENT_CHECK)
    args = small_run_args(tmp_path / "out", "--generated-data", "--device-mapping", "[0,1,2]")
    args += ["--pipeline-stages", THREE_STAGES, "--optimizer", "lamb"]
    result = subprocess.run(
        [sys.executable, str(script), ROOT, *map(str, args)],
        capture_output=True, text=True, timeout=300, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line.split() for line in result.stdout.splitlines()]
    rows = [row for row in rows if len(row) == 3 and row[0] in ("var", "slot", "op", "update")]
    where = {(kind, name): dev for kind, name, dev in rows}

    def expected(name):
        if name.startswith("bert/embeddings/") or name.startswith("bert/encoder/layer_0/"):
            return "CPU:0"
        if name.startswith("bert/encoder/layer_1/"):
            return "CPU:1"
        return "CPU:2"  # cls/predictions, pooler, seq_relationship

    variables = [n for k, n in where if k == "var"]
    assert len(variables) > 30
    for name in variables:
        assert where[("var", name)] == expected(name), name
    slots = [n for k, n in where if k == "slot" and n.rsplit("/", 1)[0] in variables]
    assert slots
    for name in slots:
        assert where[("slot", name)] == expected(name.rsplit("/", 1)[0]), name
    # Forward and backward matmuls of the step, on every stage's device (none unplaced).
    for what in ("op", "update"):
        devices = [dev for (kind, _), dev in where.items() if kind == what]
        assert set(devices) == {"CPU:0", "CPU:1", "CPU:2"}, (what, sorted(set(devices)))


def test_pipelined_gpt2_equals_the_single_device_run(tmp_path):
    from tests.test_train_gpt2 import TINY

    config = tmp_path / "config.json"
    config.write_text(__import__("json").dumps(TINY))
    script = os.path.join(ROOT, "train_gpt2.py")
    args = ["--model-config", config, "--max-len", 12, "--dataset", "generated", "--batch-size", 2,
            "--gradient-accumulation", 3, "--epochs", 1, "--learning-rate", 3e-3, "--seed", 7,
            "--log-steps", 1]  # fmt: skip
    outs = []
    for name, extra in [("one", []), ("two", ["--layers-per-ipu", 1, 1])]:
        result = run_script(script, *args, "--checkpoint-output-dir", tmp_path / name, *extra)
        assert result.returncode == 0, result.stderr[-3000:]
        losses = re.findall(r"loss: ([\d.]+)", result.stdout)
        assert len(losses) >= 3, result.stdout[-2000:]
        outs.append(np.array(losses, float))
        if extra:
            assert "pipeline: 2 stages on 2 devices, 3 micro-batches per step" in result.stdout
    np.testing.assert_allclose(outs[1], outs[0], rtol=1e-5)


# ----------------------------------------------------------------------------- one-line refusals


@pytest.mark.parametrize(
    "stages, mapping, layers, message",
    [
        (None, [0, 1], 2, "pipeline_stages is not set"),
        ([["emb", "pos"], ["hid", "hid"], ["mlm", "nsp"]], [0, 1], 2, "has 2 entries but"),
        ([["emb", "pos"], ["hid", "hid"], ["mlm", "nsp"]], [0, 2, 0], 2, "leaves device 1"),
        ([["emb", "pos"], ["hid", "hid"], ["mlm", "nsp"]], [0, -1, 0], 2, "start at 0"),
        ([["emb"], ["pos", "hid", "hid"], ["mlm", "nsp"]], [0, 1, 0], 2, "keep emb and pos"),
        ([["emb", "pos"], ["hid"], ["mlm", "nsp"]], [0, 1, 0], 2, "has 1 'hid' layers"),
    ],
)
def test_bad_bert_mappings_are_one_line(stages, mapping, layers, message):
    with pytest.raises(UserError, match=re.escape(message)) as err:
        pipeline.from_bert(stages, mapping, layers)
    assert "\n" not in str(err.value)


def test_one_device_is_no_pipeline_and_parts_follow_the_stages():
    stages = [["emb", "pos", "hid"], ["hid", "hid"], ["hid", "mlm", "nsp"]]
    assert pipeline.from_bert(stages, [0, 0, 0], 4) is None
    assert pipeline.from_bert(stages, None, 4) is None
    p = pipeline.from_bert(stages, [0, 1, 2], 4)
    assert p.num_devices == 3 and p.layer_devices == [0, 1, 1, 2]
    assert (p.index("emb"), p.index("mlm"), p.index("cls"), p.index("hid", 3)) == (0, 2, 2, 2)
    p.names = ["d0", "d1", "d2"]
    assert p.variable_device("bert/encoder/layer_2/output/dense/kernel") == "d1"
    assert p.variable_device("bert/encoder/LayerNorm/gamma") == "d2"  # GroupBERT's final norm
    assert p.variable_device("cls/squad/output_weights") == "d2"
    gpt2 = pipeline.from_gpt2([0, 2, 1], 3)
    gpt2.names = ["d0", "d1", "d2"]
    assert [gpt2.variable_device(f"transformer/h/{i}/ln_1/weight") for i in range(3)] == [
        "d1", "d1", "d2"
    ]  # fmt: skip
    assert gpt2.variable_device("transformer/wte/weight") == "d0"
    assert gpt2.variable_device("transformer/ln_f/bias") == "d0"
    assert pipeline.from_gpt2([2], 2) is None
    with pytest.raises(UserError, match="sums to 3, but the model has 2 blocks"):
        pipeline.from_gpt2([1, 2], 2)


def test_pipeline_with_replicas_or_workers_is_refused_with_what_to_do():
    p = pipeline.from_bert([["emb", "pos", "hid"], ["hid", "mlm", "nsp"]], [0, 1], 2)
    pipeline.check_alone(p, 1, 1)
    for replicas, workers, what in [(2, 1, "--replicas 2"), (1, 3, "3 workers")]:
        with pytest.raises(UserError, match=re.escape(what)) as err:
            pipeline.check_alone(p, replicas, workers)
        assert "--replicas 1" in str(err.value) and "data-parallel" in str(err.value)


def test_more_stage_devices_than_gpus_is_one_line(monkeypatch):
    import tensorflow as tf

    import training

    p = pipeline.from_bert([["emb", "pos", "hid"], ["hid"], ["mlm", "nsp"]], [0, 1, 2], 2)
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: ["gpu0", "gpu1"])
    with pytest.raises(UserError, match="on 3 devices needs 3 GPUs; this machine has 2") as err:
        training.make_strategy(1, placement=p)
    assert "drop the mapping" in str(err.value) and "\n" not in str(err.value)


def test_cli_refuses_pipeline_with_replicas(tmp_path):
    args = small_run_args(tmp_path, *TRAIN, "--device-mapping", "[0,1,0]", "--replicas", "2")
    result = run_script(SCRIPT, *args)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "do not combine with --replicas 2" in errors[0], result.stderr
    assert "Traceback" not in result.stderr


def test_pipelined_squad_equals_the_single_device_run(tmp_path, sample_vocab, squad_file):  # noqa: F811
    """run_squad.py with the embeddings, the (one) layer and the span head on 3 devices: the same
    step losses (1e-5) and the same predictions as on one device."""
    from tests.test_finetuning import TINY as TINY_FINETUNING

    args = ["--config", os.path.join(ROOT, "configs", "squad_tiny.json"), *TINY_FINETUNING,
            "--global-batch-size", 8, "--micro-batch-size", 4, "--doc-stride", 24,
            "--max-query-length", 16, "--vocab-file", sample_vocab, "--train-file", squad_file,
            "--predict-file", squad_file, "--num-train-steps", 3, "--steps-per-logs", 1,
            "--tfrecord-dir", tmp_path / "cache", "--do-training", "--do-predict",
            "--do-evaluation"]  # fmt: skip
    stages = ["--pipeline-stages", '[["emb","pos"],["hid"],["loc"]]']
    runs = {}
    for name, extra in [("one", []), ("three", [*stages, "--device-mapping", "[0,1,2]"])]:
        out = tmp_path / name / "out"
        result = run_script(os.path.join(ROOT, "run_squad.py"), *args, *extra,
                            "--save-path", tmp_path / name, "--output-dir", out)  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        losses = re.findall(r"^step: \d+, .*?, loss: ([\d.]+)", result.stdout, re.M)
        with open(out / "predictions.json") as f:
            runs[name] = (np.array(losses, float), f.read())
        if extra:
            assert "pipeline: 3 stages on 3 devices" in result.stdout
    assert len(runs["one"][0]) == 3
    np.testing.assert_allclose(runs["three"][0], runs["one"][0], rtol=1e-5)
    assert runs["three"][1] == runs["one"][1]

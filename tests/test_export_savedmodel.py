"""export_savedmodel.py: each task's SavedModel, loaded in a fresh Python without the project, gives
the in-memory model's outputs (the fine-tuning and pretraining code paths) at several batch sizes and
sequence lengths with padding; saved_model_cli lists the signatures; bad input is one line.

Checkpoints are built here (tiny odd sizes, every variable random) and written as our runs write
them: ckpt-N, bert_config.json, arguments.json of the run's script, vocab.txt.
"""

import json
import os
import re
import shutil
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
import tensorflow as tf

import checkpoints
import export_savedmodel
import modeling
import modeling_ops
import options
import serving
from model_config_gpt2 import GPT2Config
from objectives import finetuning, glue, squad
from tests.conftest import ROOT

H, HEADS, INTER, VOCAB, POSITIONS = 36, 3, 37, 99, 13
# (batch, sequence length) of the inputs each export is called with; None = every slot.
SHAPES = ((1, 4), (3, 9), (2, None))
TOLERANCE = 1e-5


def _config(**changes):
    fields = dict(
        vocab_size=VOCAB,
        hidden_size=H,
        num_hidden_layers=2,
        num_attention_heads=HEADS,
        intermediate_size=INTER,
        max_position_embeddings=POSITIONS,
        use_qkv_bias=True,
        layer_norm_eps=1e-3,
    )
    return modeling.BertConfig(**{**fields, **changes})


def _arguments(script, argv):
    """The arguments.json dict a run of `script` with `argv` writes (RunConfig.save)."""
    if script == "run_pretraining.py":
        return options.parse_options(argv, script, groups=("common",))
    task = {"run_classifier.py": ("glue", glue.DEFAULTS), "run_squad.py": ("squad", squad.DEFAULTS)}
    scope, defaults = task[script]
    return finetuning.parse([*argv, "--do-training"], script, "", scope, defaults)


def _make_run(root, name, config, heads=(), head=None, outputs=0, script=None, argv=(), seed=0):
    """A run directory holding a checkpoint of random weights and the vocab (RoBERTa-style runs:
    tokenizer.json); returns (path, in-memory model)."""
    model = modeling.BertModel(config, heads=heads, seed=seed)
    if head is not None:
        for var, shape in zip(finetuning.HEAD_VARIABLES[head], ([outputs, H], [outputs])):
            modeling_ops.add_variable(model.params, var, shape)
    rng = np.random.default_rng(seed)
    for var_name, var in model.params.items():
        value = rng.normal(size=var.shape.as_list()) * 0.2
        var.assign(value + 1.0 if var_name.endswith("gamma") else value)
    run_dir = os.path.join(root, name)
    checkpoints.save(run_dir, 3, model.params)
    config.to_json_file(os.path.join(run_dir, "bert_config.json"))
    _arguments(script, list(argv)).save(os.path.join(run_dir, "arguments.json"))
    if config.position_offset:  # a stand-in: the export copies it, nothing reads it
        with open(os.path.join(run_dir, "tokenizer.json"), "w", encoding="utf-8") as f:
            json.dump({"version": "1.0", "model": {"type": "BPE"}}, f)
    else:
        with open(os.path.join(run_dir, "vocab.txt"), "w", encoding="utf-8") as f:
            f.write("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]))
            f.write("".join(f"\nword{i}" for i in range(VOCAB - 5)) + "\n")
    return run_dir, model


def _inputs(config, seed):
    """[{input_word_ids, input_mask, input_type_ids}] int32, one dict per SHAPES entry; every row
    has 1..S real tokens and the first row all S."""
    rng = np.random.default_rng(seed)
    out = []
    for batch, seq in SHAPES:
        seq = seq or config.max_position_embeddings - config.position_offset
        lengths = rng.integers(1, seq + 1, batch)
        lengths[0] = seq
        mask = (np.arange(seq)[None, :] < lengths[:, None]).astype(np.int32)
        types = rng.integers(0, config.type_vocab_size, (batch, seq)).astype(np.int32)
        ids = rng.integers(0, VOCAB, (batch, seq)).astype(np.int32)
        out.append({"input_word_ids": ids, "input_mask": mask, "input_type_ids": types * mask})
    return out


def _reference(model, task, inputs):
    """The in-memory model's outputs by the training/prediction code, {name: np.ndarray}."""
    features = {
        "input_ids": tf.constant(inputs["input_word_ids"]),
        "input_mask": tf.constant(inputs["input_mask"]),
        "segment_ids": tf.constant(inputs["input_type_ids"]),
    }
    if task in ("squad", "classifier"):
        got = finetuning.head_outputs(model, features, False, None, tf.float32, task)
        if task == "squad":
            return {"start_logits": got[0].numpy(), "end_logits": got[1].numpy()}
        logits = got.numpy()
        if logits.shape[1] == 1:
            return {"logits": logits, "score": logits[:, 0]}
        return {"logits": logits, "probabilities": tf.nn.softmax(got).numpy()}
    batch, seq = inputs["input_word_ids"].shape
    positions = np.broadcast_to(np.arange(seq, dtype=np.int32), (batch, seq))
    out = model({**features, "masked_lm_positions": tf.constant(positions)})
    if task == "encoder":
        return {k: out[k].numpy() for k in ("pooled_output", "sequence_output")}
    return {k: out[k].numpy() for k in ("mlm_logits", "nsp_logits") if k in out}


# Runs in a fresh interpreter without the project on its path: loads every export, records the
# signatures and calls them.
_LOADER = r"""
import json, os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
import numpy as np
import tensorflow as tf
jobs = json.load(open(sys.argv[1]))
report = {"project_on_path": [p for p in sys.path if os.path.isfile(os.path.join(p or ".", "modeling.py"))]}
for job in jobs:
    loaded = tf.saved_model.load(job["dir"])
    entry = report[job["name"]] = {"signatures": sorted(loaded.signatures)}
    for sig_name in ("serving_default", job["task"]):
        sig = loaded.signatures[sig_name]
        entry[sig_name] = {
            "inputs": {k: [v.dtype.name, v.shape.as_list()]
                       for k, v in sig.structured_input_signature[1].items()},
        }
        outs = {}
        for i, inputs in enumerate(np.load(job["inputs"], allow_pickle=True)["inputs"]):
            got = sig(**{k: tf.constant(v) for k, v in inputs.items()})
            outs.update({f"{i}/{k}": v.numpy() for k, v in got.items()})
        np.savez(job["outputs"] + "." + sig_name + ".npz", **outs)
    entry["assets"] = sorted(os.listdir(os.path.join(job["dir"], "assets")))
    too_long = tf.zeros([1, job["max_seq_length"] + 1], tf.int32)
    try:
        loaded.signatures["serving_default"](
            input_word_ids=too_long, input_mask=too_long, input_type_ids=too_long
        )
        entry["too_long"] = "accepted"
    except tf.errors.InvalidArgumentError as err:
        entry["too_long"] = err.message
report["modeling_imported"] = "modeling" in sys.modules or "serving" in sys.modules
print(json.dumps(report))
"""

# name: (run, task given on the command line or None, expected task)
EXPORTS = {
    "pretraining": ("bert", None, "pretraining"),
    "encoder": ("bert", "encoder", "encoder"),
    "squad": ("squad", None, "squad"),
    "mrpc": ("mrpc", None, "classifier"),
    "stsb": ("stsb", None, "classifier"),
    "groupbert": ("groupbert", None, "pretraining"),
    "roberta": ("roberta", None, "pretraining"),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("runs"))
    tiny = os.path.join(ROOT, "configs", "pretrain_tiny_128_lamb.json")
    glue_tiny = os.path.join(ROOT, "configs", "glue_tiny.json")
    squad_tiny = os.path.join(ROOT, "configs", "squad_tiny.json")
    groupbert = _config(
        hidden_size=36,
        intermediate_size=39,
        groupbert=True,
        groupbert_ffn_output_groups=3,
        groupbert_conv_kernel_size=5,
        groupbert_conv_group_size=4,
    )
    roberta = _config(position_offset=2, type_vocab_size=1, layer_norm_eps=1e-5)
    specs = {
        # As configs/pretrain_*.json: the MLM head is the tied projection alone.
        "bert": (_config(use_cls_layer=False, use_prediction_bias=False),
                 dict(heads=("mlm", "nsp"), script="run_pretraining.py",
                                 argv=["--config", tiny])),
        "squad": (_config(), dict(head="squad", outputs=2, script="run_squad.py",
                                  argv=["--config", squad_tiny])),
        "mrpc": (_config(), dict(head="classifier", outputs=2, script="run_classifier.py",
                                 argv=["--config", glue_tiny, "--task-name", "mrpc"])),
        "stsb": (_config(), dict(head="classifier", outputs=1, script="run_classifier.py",
                                 argv=["--config", glue_tiny, "--task-name", "stsb"])),
        "groupbert": (groupbert, dict(heads=("mlm", "nsp"), script="run_pretraining.py",
                                      argv=["--config", tiny])),
        "roberta": (roberta, dict(heads=("mlm",), script="run_pretraining.py",
                                  argv=["--config", tiny, "--model-type", "roberta",
                                        "--vocab-size", str(VOCAB)])),
    }  # fmt: skip
    made = {}
    for seed, (name, (config, kwargs)) in enumerate(specs.items()):
        run_dir, model = _make_run(root, name, config, seed=seed, **kwargs)
        made[name] = (run_dir, model, config)
    return root, made


@pytest.fixture(scope="module")
def exported(runs, tmp_path_factory):
    """Every export of EXPORTS, loaded and called in one fresh subprocess.

    Returns {name: (export dir, expected task, [reference outputs per SHAPES], {signature:
    [outputs per SHAPES]})}, the subprocess report and what saved_model_cli showed.
    """
    _, made = runs
    out = tmp_path_factory.mktemp("exports")
    jobs, expected = [], {}
    for seed, (name, (run, task, want)) in enumerate(EXPORTS.items()):
        run_dir, model, config = made[run]
        export_dir = str(out / name)
        argv = [run_dir, "--output_dir", export_dir] + (["--task", task] if task else [])
        assert export_savedmodel.main(argv) == 0
        inputs = _inputs(config, seed)
        references = [_reference(model, want, x) for x in inputs]
        path = str(out / f"{name}.inputs.npz")
        array = np.empty(len(inputs), dtype=object)
        array[:] = inputs
        np.savez(path, inputs=array)
        jobs.append(
            {"name": name, "dir": export_dir, "task": want, "inputs": path,
             "outputs": str(out / name),
             "max_seq_length": config.max_position_embeddings - config.position_offset}
        )  # fmt: skip
        expected[name] = (export_dir, want, references)
    jobs_file = str(out / "jobs.json")
    with open(jobs_file, "w", encoding="utf-8") as f:
        json.dump(jobs, f)
    loader = str(out / "loader.py")
    with open(loader, "w", encoding="utf-8") as f:
        f.write(_LOADER)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    tool = shutil.which("saved_model_cli")
    command = [tool] if tool else [sys.executable, "-m", "tensorflow.python.tools.saved_model_cli"]
    # saved_model_cli's output is read by test_saved_model_cli_lists_signatures_and_inputs; both
    # processes run at once (each spends most of its time importing TensorFlow).
    procs = [
        subprocess.Popen(
            argv, cwd=str(out), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for argv in (
            [sys.executable, loader, jobs_file],
            [*command, "show", "--dir", str(out / "squad"), "--all"],
        )
    ]
    (stdout, stderr), cli = (p.communicate(timeout=300) for p in procs)
    assert procs[0].returncode == 0, stderr[-3000:]
    assert procs[1].returncode == 0, cli[1][-3000:]
    report = json.loads(stdout.strip().splitlines()[-1])
    results = {}
    for job in jobs:
        export_dir, want, references = expected[job["name"]]
        got = {}
        for sig in ("serving_default", want):
            with np.load(f"{job['outputs']}.{sig}.npz") as data:
                got[sig] = [
                    {k.split("/", 1)[1]: data[k] for k in data.files if k.startswith(f"{i}/")}
                    for i in range(len(SHAPES))
                ]
        results[job["name"]] = (export_dir, want, references, got)
    return results, report, cli[0]


def test_fresh_process_without_the_project(exported):
    _, report, _ = exported
    assert report["project_on_path"] == [] and report["modeling_imported"] is False


@pytest.mark.parametrize("name", list(EXPORTS))
def test_outputs_match_the_in_memory_model(exported, name):
    results, report, _ = exported
    export_dir, task, references, got = results[name]
    assert report[name]["signatures"] == sorted(["serving_default", task])
    worst = 0.0
    for sig in ("serving_default", task):
        inputs = report[name][sig]["inputs"]
        assert inputs == {n: ["int32", [None, None]] for n in serving.INPUTS}
        for reference, outputs in zip(references, got[sig]):
            assert sorted(outputs) == sorted(reference), (sig, sorted(outputs))
            for key, want in reference.items():
                assert outputs[key].shape == want.shape, (key, outputs[key].shape, want.shape)
                assert outputs[key].dtype == np.float32
                worst = max(worst, float(np.max(np.abs(outputs[key] - want))))
    assert worst < TOLERANCE, worst
    assert "sequence length exceeds max_seq_length" in report[name]["too_long"]
    print(f"{name}: max |export - in-memory| = {worst:.2e}")


def test_task_outputs_and_assets(exported, runs):
    results, report, _ = exported
    _, made = runs
    outputs = {name: sorted(results[name][3][results[name][1]][0]) for name in EXPORTS}
    assert outputs == {
        "pretraining": ["mlm_logits", "nsp_logits"],
        "encoder": ["pooled_output", "sequence_output"],
        "squad": ["end_logits", "start_logits"],
        "mrpc": ["logits", "probabilities"],
        "stsb": ["logits", "score"],
        "groupbert": ["mlm_logits", "nsp_logits"],
        "roberta": ["mlm_logits"],
    }
    # MLM logits over every slot: [B, S, V].
    first = results["pretraining"][3]["pretraining"][2]["mlm_logits"]
    assert first.shape == (2, POSITIONS, VOCAB)
    assert results["roberta"][3]["pretraining"][2]["mlm_logits"].shape == (2, POSITIONS - 2, VOCAB)
    for name in EXPORTS:
        export_dir = results[name][0]
        tokenizer = "tokenizer.json" if name == "roberta" else "vocab.txt"
        assert report[name]["assets"] == sorted(["bert_config.json", "export_info.json", tokenizer])
        run_dir = made[EXPORTS[name][0]][0]
        with (
            open(os.path.join(export_dir, "assets", tokenizer), "rb") as a,
            open(os.path.join(run_dir, tokenizer), "rb") as b,
        ):
            assert a.read() == b.read()
        with open(os.path.join(export_dir, "assets", "export_info.json"), encoding="utf-8") as f:
            info = json.load(f)
        assert info["task"] == results[name][1] and info["signatures"][0] == "serving_default"
        with open(os.path.join(export_dir, "assets", "bert_config.json"), encoding="utf-8") as f:
            config = modeling.BertConfig.from_dict(json.load(f))
        assert config.groupbert == (name == "groupbert")
        assert config.position_offset == (2 if name == "roberta" else 0)
        # Nothing is left for XLA's JIT, which TensorFlow Serving leaves off by default.
        with open(os.path.join(export_dir, "saved_model.pb"), "rb") as f:
            assert b"_XlaMustCompile" not in f.read()
    with open(os.path.join(results["mrpc"][0], "assets", "export_info.json")) as f:
        assert json.load(f)["labels"] == ["0", "1"]


def test_saved_model_cli_lists_signatures_and_inputs(exported):
    shown = exported[2]  # saved_model_cli show --all of the SQuAD export
    for signature in ("serving_default", "squad"):
        assert f"signature_def['{signature}']" in shown
    for name in (*serving.INPUTS, "start_logits", "end_logits"):
        assert re.search(rf"\['{name}'\] tensor_info:\s+dtype: DT_(INT32|FLOAT)", shown), name


# ----------------------------------------------------------------------------- bad input


def _fails(argv, capsys, pattern):
    with pytest.raises(SystemExit) as exc:
        export_savedmodel.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code != 0 and len(err) == 1, err
    assert re.search(pattern, err[0]), err
    return err[0]


def test_bad_input_is_one_line(runs, tmp_path, capsys):
    _, made = runs
    out = str(tmp_path / "out")
    _fails([str(tmp_path / "missing"), "--output_dir", out], capsys, "checkpoint not found")
    gpt2 = tmp_path / "gpt2_run"
    gpt2.mkdir()
    GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=11, n_positions=8).to_json_file(
        str(gpt2 / "config.json")
    )
    _fails([str(gpt2), "--output_dir", out], capsys, r"has config.json but no weights")
    _fails([bert_run := made["bert"][0], "--output_dir", out, "--input-len", "8"], capsys,
           r"--input-len: GPT-2 exports only")  # fmt: skip
    other = tmp_path / "t5"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "t5"}))
    _fails([str(other), "--output_dir", out], capsys, "model_type 't5' is not one this exports")
    empty = tmp_path / "empty"
    empty.mkdir()
    _fails([str(empty), "--output_dir", out], capsys, "no checkpoint in directory")
    _fails([bert_run, "--output_dir", out, "--task", "squad"], capsys, "has no squad head")
    _fails([bert_run, "--output_dir", out, "--task", "gpt"], capsys, "--task: must be one of")
    assert not os.path.exists(out)
    assert sorted(os.listdir(tmp_path)) == ["empty", "gpt2_run", "t5"]  # no temporary left


def test_existing_output_needs_force(runs, tmp_path, capsys):
    _, made = runs
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    run = made["squad"][0]
    _fails([run, "--output_dir", str(out)], capsys, r"not empty; pass --force")
    assert os.listdir(out) == ["keep.txt"]
    assert export_savedmodel.main([run, "--output_dir", str(out), "--force"]) == 0
    printed = capsys.readouterr().out
    assert "signatures: serving_default, squad" in printed
    assert "keep.txt" not in os.listdir(out) and "saved_model.pb" in os.listdir(out)
    assert sorted(os.listdir(tmp_path)) == ["out"]  # the stage and the replaced copy are gone

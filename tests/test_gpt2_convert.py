"""convert_ckpt.py hf2graphcore / graphcore2hf for GPT-2 and interop_gpt2.resolve_gpt2_source:
transformers' GPT2LMHeadModel folder -> ours -> folder is bitwise, the folder loads in transformers
with no missing/unexpected keys and the same logits, a (simulated) training run converts, and every
bad input is one line with a non-zero exit and nothing written."""

import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf
from safetensors.numpy import load_file

import checkpoints
import convert_ckpt
import interop_gpt2
import modeling_gpt2
from common.errors import UserError
from common.fileio import atomic_write_json
from model_config_gpt2 import GPT2Config

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

# Odd tiny sizes so swapped axes fail.
SIZES = dict(vocab_size=101, n_positions=24, n_embd=36, n_layer=2, n_head=3)
TOKENIZER = {"vocab.json": '{"a": 0}\n', "merges.txt": "#version: 0.2\na b\n"}


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    """A random GPT2LMHeadModel (biases and LayerNorms random too) saved by transformers, with a
    tokenizer's vocab.json and merges.txt."""
    folder = str(tmp_path_factory.mktemp("hf"))
    config = transformers.GPT2Config(
        **SIZES, bos_token_id=100, eos_token_id=100, attn_implementation="eager"
    )
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for _, tensor in hf.named_parameters():
            tensor.copy_(torch.randn_like(tensor) * 0.1 + (tensor == 1).float())
    hf.save_pretrained(folder, safe_serialization=True)
    for name, text in TOKENIZER.items():
        with open(os.path.join(folder, name), "w") as f:
            f.write(text)
    return folder


def ids(vocab=SIZES["vocab_size"], batch=2, seq=9):
    return np.random.default_rng(1).integers(0, vocab, (batch, seq), np.int64)


def hf_logits(folder):
    """Logits of transformers' GPT2LMHeadModel loaded from `folder`, after checking the load was
    complete (no missing, unexpected or mismatched keys)."""
    hf, info = transformers.GPT2LMHeadModel.from_pretrained(
        folder, output_loading_info=True, attn_implementation="eager"
    )
    assert {k: list(v) for k, v in info.items()} == {k: [] for k in info}
    with torch.no_grad():
        return hf.eval()(input_ids=torch.tensor(ids())).logits.numpy()


def run(*argv):
    """convert_ckpt.main in-process; returns the exit code (0 on success)."""
    try:
        return convert_ckpt.main(list(argv))
    except SystemExit as exit_:
        return exit_.code


def assert_same_bits(a, b):
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name].dtype == b[name].dtype and a[name].shape == b[name].shape, name
        assert a[name].tobytes() == b[name].tobytes(), name


def test_round_trip_is_bitwise_and_transformers_loads_it(hf_folder, tmp_path):
    ours, back = str(tmp_path / "ours"), str(tmp_path / "back")
    assert run("hf2graphcore", hf_folder, "--output-dir", ours) == 0
    assert run("graphcore2hf", ours, "--output-dir", back) == 0
    source = load_file(os.path.join(hf_folder, "model.safetensors"))
    assert "lm_head.weight" not in source  # transformers does not store the tied head either
    assert_same_bits(source, load_file(os.path.join(back, "model.safetensors")))
    np.testing.assert_array_equal(hf_logits(back), hf_logits(hf_folder))
    for name, text in TOKENIZER.items():
        for folder in (ours, back):
            with open(os.path.join(folder, name)) as f:
                assert f.read() == text
    # The hf2graphcore output is a run directory: the directory and its prefix both resolve, to the
    # folder's tensors under our names, and GPT2Model computes transformers' logits from them.
    config, params, notes = interop_gpt2.resolve_gpt2_source(ours)
    _, from_prefix, _ = interop_gpt2.resolve_gpt2_source(os.path.join(ours, "ckpt-0"))
    assert_same_bits(params, from_prefix)
    assert_same_bits({modeling_gpt2.hf_name(n): v for n, v in params.items()}, source)
    assert list(params) == list(modeling_gpt2.variable_shapes(config))
    assert notes and all("\n" not in n for n in notes)
    model = modeling_gpt2.GPT2Model(config, seed=5)
    for name, var in model.params.items():
        var.assign(params[name])
    logits = model(tf.constant(ids(), tf.int32))["logits"].numpy()
    np.testing.assert_allclose(logits, hf_logits(hf_folder), atol=1e-5, rtol=0)


def test_vocab_size_pads_and_truncates_the_embedding(hf_folder, tmp_path):
    padded, back = str(tmp_path / "padded"), str(tmp_path / "back")
    assert run("hf2graphcore", hf_folder, "--output-dir", padded, "--vocab-size", "112") == 0
    config, params, _ = interop_gpt2.resolve_gpt2_source(padded)
    wte = params["transformer/wte/weight"]
    assert config.vocab_size == 112 and wte.shape == (112, 36) and not wte[101:].any()
    assert run("graphcore2hf", padded, "--output-dir", back, "--vocab-size", "101") == 0
    assert_same_bits(
        load_file(os.path.join(hf_folder, "model.safetensors")),
        load_file(os.path.join(back, "model.safetensors")),
    )


def simulated_run(run_dir, n_embd=SIZES["n_embd"], step=7):
    """What train_gpt2.py leaves: config.json, arguments.json, a checkpoint with optimizer slots."""
    config = GPT2Config(**{**SIZES, "n_embd": n_embd}, activation_function="gelu")
    model = modeling_gpt2.GPT2Model(config, seed=3)
    rng = np.random.default_rng(3)
    for var in model.params.values():
        var.assign(var + rng.normal(0, 0.1, var.shape.as_list()).astype(np.float32))
    state = {f"{n}/adam_m": tf.Variable(tf.ones_like(v)) for n, v in model.params.items()}
    state["global_step"] = tf.Variable(step, dtype=tf.int64)
    checkpoints.save(run_dir, step, {**model.params, **state})
    atomic_write_json(os.path.join(run_dir, "config.json"), config.to_hf_dict())
    atomic_write_json(os.path.join(run_dir, "arguments.json"), {"max_len": 24})
    return model


def test_training_run_converts_to_transformers(tmp_path):
    run_dir, out = str(tmp_path / "run"), str(tmp_path / "hf")
    model = simulated_run(run_dir)
    config, params, notes = interop_gpt2.resolve_gpt2_source(run_dir)
    assert config == model.config
    assert_same_bits(params, {n: v.numpy() for n, v in model.params.items()})
    assert any(f"ignored {len(params) + 1} optimizer slot" in n for n in notes)
    assert run("graphcore2hf", os.path.join(run_dir, "ckpt-7"), "--output-dir", out) == 0
    written = load_file(os.path.join(out, "model.safetensors"))
    assert_same_bits(written, {modeling_gpt2.hf_name(n): v for n, v in params.items()})
    ours = model(tf.constant(ids(), tf.int32))["logits"].numpy()
    np.testing.assert_allclose(hf_logits(out), ours, atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- bad inputs


def copy_folder(hf_folder, tmp_path, config_changes=None, drop=()):
    folder = str(tmp_path / "src")
    shutil.copytree(hf_folder, folder)
    for name in drop:
        os.remove(os.path.join(folder, name))
    if config_changes:
        path = os.path.join(folder, "config.json")
        with open(path) as f:
            d = json.load(f)
        atomic_write_json(path, {**d, **config_changes})
    return folder


def torch_only(hf_folder, tmp_path):
    folder = copy_folder(hf_folder, tmp_path, drop=["model.safetensors"])
    with open(os.path.join(folder, "pytorch_model.bin"), "wb") as f:
        f.write(b"PK\x03\x04 not read")
    return folder, ["pytorch_model.bin", "safe_serialization=True"]


def other_architecture(hf_folder, tmp_path):
    folder = copy_folder(hf_folder, tmp_path, {"model_type": "llama"})
    return folder, ["config.json", "'llama'"]


def missing_folder(hf_folder, tmp_path):
    folder = str(tmp_path / "no_such_folder")
    return folder, [folder]


def wider_config(hf_folder, tmp_path):
    folder = copy_folder(hf_folder, tmp_path, {"n_embd": 48})
    shapes = ["transformer.wte.weight", "[101, 36]", "[101, 48]", "model.safetensors"]
    return folder, shapes


def truncated(hf_folder, tmp_path):
    folder = copy_folder(hf_folder, tmp_path)
    path = os.path.join(folder, "model.safetensors")
    os.truncate(path, os.path.getsize(path) - 100)
    return folder, [path, "truncated or corrupt"]


def corrupt_header(hf_folder, tmp_path):
    folder = copy_folder(hf_folder, tmp_path)
    path = os.path.join(folder, "model.safetensors")
    with open(path, "r+b") as f:
        f.seek(8)
        f.write(b"}{garbage")
    return folder, [path, "truncated or corrupt"]


def run_wider_config(hf_folder, tmp_path):
    run_dir = str(tmp_path / "run")
    simulated_run(run_dir)
    atomic_write_json(
        os.path.join(run_dir, "config.json"), GPT2Config(**{**SIZES, "n_embd": 48}).to_hf_dict()
    )
    return run_dir, ["ckpt-7.index", "transformer/wte/weight", "[101, 36]", "[101, 48]"]


BAD = [torch_only, other_architecture, missing_folder, wider_config, truncated, corrupt_header]


@pytest.mark.parametrize("bad", [*BAD, run_wider_config], ids=lambda f: f.__name__)
def test_bad_input_is_one_line_and_writes_nothing(bad, hf_folder, tmp_path, capsys):
    source, expected = bad(hf_folder, tmp_path)
    command = "graphcore2hf" if bad is run_wider_config else "hf2graphcore"
    out = str(tmp_path / "out")
    capsys.readouterr()
    assert run(command, source, "--output-dir", out) != 0
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    for text in expected:
        assert text in err, (text, err)
    assert not os.path.exists(out)
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".out")]  # no staging left
    with pytest.raises(UserError) as info:
        interop_gpt2.resolve_gpt2_source(source)
    assert all(text in str(info.value) for text in expected)


def test_bert_folder_is_not_a_gpt2_source(hf_folder, tmp_path):
    folder = copy_folder(hf_folder, tmp_path, {"model_type": "bert"})
    with pytest.raises(UserError, match=r"config\.json: model_type is 'bert', not 'gpt2'"):
        interop_gpt2.resolve_gpt2_source(folder)


def test_existing_output_is_left_unchanged(hf_folder, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.json").write_text("mine\n")
    assert run("hf2graphcore", hf_folder, "--output-dir", str(out)) != 0
    assert "--force" in capsys.readouterr().err
    source, _ = truncated(hf_folder, tmp_path)
    assert run("hf2graphcore", source, "--output-dir", str(out), "--force") != 0
    assert os.listdir(out) == ["config.json"] and (out / "config.json").read_text() == "mine\n"
    assert run("hf2graphcore", hf_folder, "--output-dir", str(out), "--force") == 0
    assert sorted(os.listdir(out)) == sorted(
        ["checkpoint", "ckpt-0.data-00000-of-00001", "ckpt-0.index", "config.json",
         "conversion_report.json", *TOKENIZER]
    )  # fmt: skip


def test_wrong_direction_and_bert_options_are_refused(hf_folder, tmp_path, capsys):
    out = str(tmp_path / "out")
    assert run("graphcore2hf", hf_folder, "--output-dir", out) != 0
    assert "use hf2graphcore" in capsys.readouterr().err
    assert run("hf2graphcore", hf_folder, "--output-dir", out, "--fuse-qkv") != 0
    assert "does not take --fuse-qkv" in capsys.readouterr().err
    assert not os.path.exists(out)

"""interop_gpt2 against transformers' GPT2LMHeadModel: folders it saves load into GPT2Model with the
same logits, folders we write load into it with no missing/unexpected keys and the same logits,
ours -> folder -> ours is bitwise, and bad folders are one-line errors."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

import modeling_gpt2
from common.errors import UserError
from interop_gpt2 import load_hf_gpt2, read_hf_gpt2, write_hf_gpt2
from model_config_gpt2 import GPT2Config

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

# Odd tiny sizes so swapped axes fail; erf GELU and the inverse-layer scaling exercise the config.
CONFIG = GPT2Config(
    vocab_size=99,
    n_positions=11,
    n_embd=36,
    n_layer=2,
    n_head=3,
    n_inner=37,
    activation_function="gelu",
    scale_attn_by_inverse_layer_idx=True,
)
TOL = 1e-5


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def ids(batch=2, seq=7, seed=1):
    return np.random.default_rng(seed).integers(0, CONFIG.vocab_size, (batch, seq), np.int32)


def torch_logits(hf, input_ids):
    with torch.no_grad():
        return hf(input_ids=torch.tensor(input_ids, dtype=torch.long)).logits.numpy()


def random_hf_model(seed=0):
    """A GPT2LMHeadModel with random weights everywhere (biases and LayerNorms too)."""
    hf_config = transformers.GPT2Config(**CONFIG.to_hf_dict(), attn_implementation="eager")
    torch.manual_seed(seed)
    hf = transformers.GPT2LMHeadModel(hf_config).eval()
    with torch.no_grad():
        for _, tensor in hf.named_parameters():
            tensor.copy_(torch.randn_like(tensor) * 0.1 + (tensor == 1).float())
    return hf


def randomized_ours(seed=3):
    model = modeling_gpt2.GPT2Model(CONFIG, seed=seed)
    rng = np.random.default_rng(seed)
    for var in model.params.values():
        var.assign(var + rng.normal(0, 0.1, var.shape.as_list()).astype(np.float32))
    return model


def test_variable_shapes_are_create_params():
    model = modeling_gpt2.GPT2Model(CONFIG)
    shapes = {n: tuple(v.shape.as_list()) for n, v in model.params.items()}
    assert list(modeling_gpt2.variable_shapes(CONFIG).items()) == list(shapes.items())


def test_transformers_folder_loads_with_equal_logits(tmp_path):
    hf = random_hf_model()
    hf.save_pretrained(tmp_path, safe_serialization=True)
    model = modeling_gpt2.GPT2Model(CONFIG, seed=9)
    notes = load_hf_gpt2(str(tmp_path), model)
    assert all("\n" not in n for n in notes)
    x = ids()
    ours = model(tf.constant(x))["logits"].numpy()
    diff = np.abs(ours - torch_logits(hf, x)).max()
    print(f"hf -> ours max |logit diff| {diff:.2e}")
    assert diff < TOL


def test_written_folder_loads_into_transformers_with_equal_logits(tmp_path):
    model = randomized_ours()
    write_hf_gpt2(str(tmp_path), CONFIG, model.params)
    hf, info = transformers.GPT2LMHeadModel.from_pretrained(
        str(tmp_path), output_loading_info=True, attn_implementation="eager"
    )
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert not info["mismatched_keys"] and not info["error_msgs"]
    hf.eval()
    x = ids(seed=2)
    ours = model(tf.constant(x))["logits"].numpy()
    diff = np.abs(ours - torch_logits(hf, x)).max()
    print(f"ours -> hf max |logit diff| {diff:.2e}")
    assert diff < TOL
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp")]


def test_round_trip_is_bitwise(tmp_path):
    model = randomized_ours(seed=5)
    write_hf_gpt2(str(tmp_path), CONFIG, model.params)
    config, params, notes = read_hf_gpt2(str(tmp_path))
    assert config == CONFIG and notes == []
    assert list(params) == list(model.params)
    for name, var in model.params.items():
        assert params[name].dtype == np.float32
        np.testing.assert_array_equal(params[name], var.numpy())
    again = modeling_gpt2.GPT2Model(CONFIG, seed=11)
    load_hf_gpt2(str(tmp_path), again)
    for name, var in model.params.items():
        np.testing.assert_array_equal(again.params[name].numpy(), var.numpy())


def test_half_precision_is_widened_with_a_note(tmp_path):
    hf = random_hf_model().to(torch.bfloat16)
    hf.save_pretrained(tmp_path, safe_serialization=True)
    _, params, notes = read_hf_gpt2(str(tmp_path))
    assert any("bfloat16" in n and "float32" in n for n in notes)
    wte = hf.transformer.wte.weight.float().detach().numpy()
    np.testing.assert_array_equal(params["transformer/wte/weight"], wte)


def test_sharded_float16_folder_reads_like_the_model(tmp_path):
    hf = random_hf_model().to(torch.float16)
    hf.save_pretrained(tmp_path, safe_serialization=True, max_shard_size="20KB")
    assert os.path.isfile(tmp_path / "model.safetensors.index.json")
    assert not os.path.isfile(tmp_path / "model.safetensors")
    _, params, notes = read_hf_gpt2(str(tmp_path))
    assert any("float16" in n for n in notes)
    for name, tensor in hf.state_dict().items():
        ours = modeling_gpt2.ours_name(name)
        if ours is not None:
            np.testing.assert_array_equal(params[ours], tensor.float().numpy())


def _rewrite(folder, change):
    """Apply change(tensors) to a folder's model.safetensors in place."""
    from safetensors.numpy import load_file, save_file

    path = os.path.join(folder, "model.safetensors")
    tensors = load_file(path)
    change(tensors)
    save_file(tensors, path, {"format": "pt"})


def _bert_folder(folder):
    config = transformers.BertConfig(
        vocab_size=99, hidden_size=36, num_hidden_layers=1, num_attention_heads=3,
        intermediate_size=37,
    )  # fmt: skip
    transformers.BertForMaskedLM(config).save_pretrained(folder, safe_serialization=True)


def _drop_tensor(folder):
    write_hf_gpt2(folder, CONFIG, randomized_ours().params)
    _rewrite(folder, lambda t: t.pop("transformer.h.1.mlp.c_fc.bias"))


def _untied_head(folder):
    write_hf_gpt2(folder, CONFIG, randomized_ours().params)
    _rewrite(folder, lambda t: t.update({"lm_head.weight": t["transformer.wte.weight"] + 1}))


def _unknown_tensor(folder):
    write_hf_gpt2(folder, CONFIG, randomized_ours().params)
    _rewrite(folder, lambda t: t.update({"score.weight": np.zeros([2, 36], np.float32)}))


@pytest.mark.parametrize(
    "make, message",
    [
        (_bert_folder, "model_type is 'bert', not 'gpt2'"),
        (_drop_tensor, "1 missing: transformer.h.1.mlp.c_fc.bias"),
        (_untied_head, "untied LM head"),
        (_unknown_tensor, "not GPT2LMHeadModel's: score.weight"),
    ],
)
def test_bad_folders_are_one_line_errors(tmp_path, make, message):
    make(str(tmp_path))
    with pytest.raises(UserError) as err:
        read_hf_gpt2(str(tmp_path))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_tied_head_stored_equal_is_accepted(tmp_path):
    write_hf_gpt2(str(tmp_path), CONFIG, randomized_ours().params)
    _rewrite(str(tmp_path), lambda t: t.update({"lm_head.weight": t["transformer.wte.weight"]}))
    _, _, notes = read_hf_gpt2(str(tmp_path))
    assert any("tied" in n for n in notes)


def test_shape_and_config_mismatches_are_one_line_errors(tmp_path):
    write_hf_gpt2(str(tmp_path), CONFIG, randomized_ours().params)
    other = modeling_gpt2.GPT2Model(CONFIG.replace(n_inner=41))
    with pytest.raises(UserError, match=r"n_inner 37 \(model: 41\)"):
        load_hf_gpt2(str(tmp_path), other)
    params = dict(randomized_ours().params)
    params["transformer/ln_f/bias"] = np.zeros([35], np.float32)
    with pytest.raises(UserError, match=r"transformer/ln_f/bias has shape \[35\].*\[36\]"):
        write_hf_gpt2(str(tmp_path / "bad"), CONFIG, params)
    with open(tmp_path / "config.json") as f:
        assert json.load(f)["architectures"] == ["GPT2LMHeadModel"]

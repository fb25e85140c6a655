"""Every shipped pretraining config parses and keeps the reference recipe (REFERENCE_APP.md §2.2)."""

import glob
import json
import os

import pytest

import options

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")

# Reference recipe per config, from the §2.2 tables: global batch (mbs x GA x replicas on the IPUs),
# steps, peak lr, warm-up, seq, masks, hidden, layers, heads, intermediate, seed, loss scale.
RECIPE = {
    "pretrain_tiny_128_lamb": (1 * 12 * 1, 1000, 0.001, 10, 128, 20, 128, 2, 2, 512, 1234, 1),
    "pretrain_base_128_phase1": (32 * 510 * 4, 7032, 0.006, 2000, 128, 20, 768, 12, 12, 3072, 1234, 512),
    # Phase 2 masks: 56, as the reference README and data script; its configs said 58 (REFERENCE §12).
    "pretrain_base_384_phase2": (8 * 510 * 4, 2142, 0.002828, 277, 384, 56, 768, 12, 12, 3072, 1234, 512),
    "pretrain_large_128_phase1": (8 * 2050 * 4, 7032, 0.006, 2000, 128, 20, 1024, 24, 16, 4096, 1994, 32768),
    "pretrain_large_128_phase1_POD32": (8 * 1040 * 8, 7032, 0.006, 2000, 128, 20, 1024, 24, 16, 4096, 1234, 32768),
    "pretrain_large_128_phase1_POD64": (8 * 520 * 16, 7032, 0.006, 2000, 128, 20, 1024, 24, 16, 4096, 1234, 32768),
    "pretrain_large_384_phase2": (2 * 2050 * 4, 2099, 0.002828, 274, 384, 56, 1024, 24, 16, 4096, 1234, 128),
    "pretrain_large_384_phase2_POD32": (2 * 1040 * 8, 2099, 0.002828, 270, 384, 56, 1024, 24, 16, 4096, 1234, 32),
    "pretrain_large_384_phase2_POD64": (2 * 520 * 16, 2099, 0.002828, 270, 384, 56, 1024, 24, 16, 4096, 1234, 64),
}  # fmt: skip
GBS_TABLE = {  # the published GBS column of §2.2, to check the products above
    "pretrain_tiny_128_lamb": 12,
    "pretrain_base_128_phase1": 65280,
    "pretrain_base_384_phase2": 16320,
    "pretrain_large_128_phase1": 65600,
    "pretrain_large_128_phase1_POD32": 66560,
    "pretrain_large_128_phase1_POD64": 66560,
    "pretrain_large_384_phase2": 16400,
    "pretrain_large_384_phase2_POD32": 16640,
    "pretrain_large_384_phase2_POD64": 16640,
}


def parse(name, *extra):
    return options.parse_options(["--config", os.path.join(CONFIG_DIR, f"{name}.json"), *extra])


def test_shipped_configs_are_exactly_the_recipes():
    paths = glob.glob(os.path.join(CONFIG_DIR, "pretrain_*.json"))
    shipped = {os.path.basename(p)[:-5] for p in paths if "roberta" not in p}
    assert shipped == set(RECIPE)
    assert all(RECIPE[name][0] == gbs for name, gbs in GBS_TABLE.items())


@pytest.mark.parametrize("name", sorted(RECIPE))
def test_config_parses_with_reference_recipe(capsys, name):
    opts = parse(name)
    assert capsys.readouterr().err == ""  # no IPU-only keys in shipped configs
    gbs, steps, lr, warmup, seq, masks, hidden, layers, heads, inter, seed, scale = RECIPE[name]
    assert opts["global_batch_size"] == gbs
    assert opts["micro_batch_size"] * opts["gradient_accumulation_count"] * opts["replicas"] == gbs
    assert opts["replicas"] == 1
    assert opts.loop.tokens_per_step == gbs * seq
    assert (opts["num_train_steps"], opts["base_learning_rate"], opts["warmup"]) == (
        steps,
        lr,
        warmup,
    )
    assert (opts["seq_length"], opts["max_predictions_per_seq"]) == (seq, masks)
    assert (opts["hidden_size"], opts["num_hidden_layers"]) == (hidden, layers)
    assert (opts["num_attention_heads"], opts["intermediate_size"]) == (heads, inter)
    assert (opts["seed"], opts["loss_scaling"]) == (seed, scale)
    assert opts["optimizer"] == "lamb" and opts["lr_schedule"] == "polynomial_decay"
    assert (opts["beta1"], opts["beta2"], opts["epsilon"]) == (0.9, 0.999, 1e-6)
    assert opts["weight_decay_rate"] == 0.01 and opts["vocab_size"] == 30400
    assert opts["static_mask"] is True and opts["use_qkv_split"] is True
    assert opts["use_cls_layer"] is False and opts["use_attention_projection_bias"] is False
    assert opts["use_prediction_bias"] is (name != "pretrain_tiny_128_lamb")
    assert opts["precision"] == "bf16" and opts["enable_recomputation"] is False
    assert f"tokenised_{seq}_dup5_mask{masks}" in opts["train_file"]
    if "phase2" in name:
        assert opts["init_checkpoint"] is None  # pretrain.sh passes phase 1's last checkpoint


@pytest.mark.parametrize("name", sorted(n for n in RECIPE if "tiny" not in n))
@pytest.mark.parametrize("replicas", [2, 8])
def test_more_replicas_keep_the_global_batch(name, replicas):
    opts = parse(name, "--replicas", str(replicas))
    assert opts["global_batch_size"] == RECIPE[name][0]
    assert (
        opts["gradient_accumulation_count"] * opts["micro_batch_size"] * replicas == RECIPE[name][0]
    )


def test_config_keys_are_schema_keys_and_not_ipu_only():
    for path in glob.glob(os.path.join(CONFIG_DIR, "*.json")):
        with open(path) as f:
            keys = json.load(f)
        for key in keys:
            if key.startswith("_"):  # comments
                continue
            assert key in options.SCHEMA, (path, key)
            assert not options.SCHEMA[key].ipu_only, (path, key)


# Fine-tuning recipes of §2.3: (task, global batch, epochs, optimizer, peak lr, warm-up, epsilon,
# seed, hidden, layers, v2). squad_base trains 2 epochs instead of the reference's 2100 steps.
FINE_TUNING = {
    "squad_base": ("SQuAD", 1040, 2, "adamw", 3e-5, 276, 1e-4, 1234, 768, 12, False),
    "squad_large": ("SQuAD", 1040, 2, "adamw", 9e-5, 0.4, 1e-6, 2243, 1024, 24, False),
    "squad_large_V2": ("SQuAD", 200, 2, "mpadamw", 5e-5, 0.1, 1e-6, 7801, 1024, 24, True),
    "glue_base": ("GLUE", 40, 3, "adamw", 1.5e-5, 0.1, 1e-6, 7801, 768, 12, None),
    "glue_large": ("GLUE", 40, 3, "adamw", 1.5e-5, 0.1, 1e-6, 7801, 1024, 24, None),
}


@pytest.mark.parametrize("name", sorted(FINE_TUNING))
def test_fine_tuning_configs_keep_the_reference_recipe(capsys, name):
    task, gbs, epochs, optimizer, lr, warmup, eps, seed, hidden, layers, v2 = FINE_TUNING[name]
    scope = "squad" if task == "SQuAD" else "glue"
    opts = options.parse_options(
        ["--config", os.path.join(CONFIG_DIR, f"{name}.json")], groups=("common", scope)
    )
    assert capsys.readouterr().err == ""
    assert (opts["task"], opts["global_batch_size"], opts["epochs"]) == (task, gbs, epochs)
    assert (opts["optimizer"], opts["base_learning_rate"], opts["warmup"]) == (
        optimizer,
        lr,
        warmup,
    )
    assert (opts["epsilon"], opts["seed"], opts["weight_decay_rate"]) == (eps, seed, 0.01)
    assert (opts["hidden_size"], opts["num_hidden_layers"], opts["seq_length"]) == (
        hidden,
        layers,
        384,
    )
    assert opts["vocab_size"] is None  # taken from the checkpoint, not the reference's 30400
    if v2 is not None:
        assert opts["version_2_with_negative"] is v2

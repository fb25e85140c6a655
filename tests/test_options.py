"""Tests of options.py: flags from the schema, config merging, derived settings, errors."""

import json
import os

import pytest

import options
from common.errors import cli_main

# Reference defaults (REFERENCE_APP.md §3.1 and §13), written out here independently of options.py.
REFERENCE_DEFAULTS = {
    "base_learning_rate": 2e-5,
    "loss_scaling": 1,
    "steps_per_ckpts": 256,
    "optimizer": "momentum",
    "momentum": 0.984375,
    "beta1": 0.9,
    "beta2": 0.999,
    "weight_decay_rate": 0.0,
    "epsilon": 1e-4,
    "warmup": 0.1,
    "max_to_keep": 5,
    "use_qkv_bias": False,
    "use_qkv_split": False,
    "use_attention_projection_bias": True,
    "use_cls_layer": True,
    "use_prediction_bias": True,
    "use_debiasing": False,
    "static_mask": False,
    "max_predictions_per_seq": 20,
    "duplicate_factor": 5,
    "seq_length": 128,
    "replicas": 1,
    "precision": "16",
    "device_iterations": 1,
    "reduction_type": "mean",
    "parallel_io_threads": 4,
    "steps_per_logs": 1,
    "steps_per_tensorboard": 0,
    "save_path": "checkpoints",
    "groupbert_ffn_output_groups": 4,
    "groupbert_conv_kernel_size": 7,
    "groupbert_conv_group_size": 16,
    "matmul_serialize_factor": 6,
    "min_remote_tensor_size": 128,
    "partials_type": "half",
    "layer_norm_eps": 1e-3,
    "lr_schedule": "polynomial_decay",
    "wandb_project": "tf-bert",
}

# Odd tiny sizes so that a swapped key fails.
TINY = {
    "task": "pretraining",
    "vocab_size": 99,
    "hidden_size": 36,
    "num_hidden_layers": 3,
    "num_attention_heads": 3,
    "intermediate_size": 37,
    "max_position_embeddings": 11,
    "seq_length": 7,
    "max_predictions_per_seq": 3,
    "micro_batch_size": 5,
}


@pytest.fixture
def write_config(tmp_path):
    def write(extra=None, drop=(), name="config.json"):
        data = {k: v for k, v in TINY.items() if k not in drop}
        data.update(extra or {})
        path = tmp_path / name
        path.write_text(json.dumps(data))
        return str(path)

    return write


def run(argv, **kwargs):
    """Parse through the CLI wrapper, so a UserError becomes SystemExit like in a script."""
    return cli_main(lambda: options.parse_options(argv, **kwargs))()


def exit_code_and_stderr(capsys, argv, **kwargs):
    with pytest.raises(SystemExit) as info:
        run(argv, **kwargs)
    err = capsys.readouterr().err
    return info.value.code, err


def test_reference_defaults():
    opts = options.parse_options([], require_config=False)
    for key, value in REFERENCE_DEFAULTS.items():
        assert opts[key] == value, key
    assert isinstance(opts["precision"], str)


def test_every_option_has_one_line_help_and_a_unique_kebab_flag():
    seen = set()
    for opt in options.OPTIONS:
        assert opt.help and "\n" not in opt.help, opt.key
        assert f"--{opt.key.replace('_', '-')}" in opt.flags
        assert not seen & set(opt.flags), opt.key
        seen.update(opt.flags)
    assert "--enable_recomputation" in seen and "--enable-recomputation" in seen


def test_unknown_config_key_exits_64_with_one_line(capsys, write_config):
    path = write_config({"micro_batch_sise": 2})
    code, err = exit_code_and_stderr(capsys, ["--config", path])
    assert code == 64 == os.EX_USAGE
    assert err.count("\n") == 1
    assert "micro_batch_sise" in err and path in err
    assert "micro_batch_size" in err  # the suggestion


def test_task_options_are_unknown_to_pretraining(capsys, write_config):
    path = write_config({"do_training": True, "doc_stride": 64})
    code, err = exit_code_and_stderr(capsys, ["--config", path])
    assert code == 64 and "do_training" in err and "doc_stride" in err
    opts = options.parse_options(["--config", path], groups=("common", "squad"))
    assert opts["do_training"] is True and opts["doc_stride"] == 64
    assert "version_2_with_negative" in opts and "task_name" not in opts


@pytest.mark.parametrize("flag", [["--no-such-flag", "1"], ["--seq", "9"], ["--micro-batch-size"]])
def test_unknown_abbreviated_or_incomplete_flag_exits_64(capsys, write_config, flag):
    code, err = exit_code_and_stderr(capsys, ["--config", write_config(), *flag])
    assert code == 64 and err.count("\n") == 1 and flag[0] in err


def test_precedence_flag_over_config_over_default(write_config):
    stages = [["emb", "pos", "hid"], ["hid", "hid", "mlm", "nsp"]]
    path = write_config(
        {
            "use_cls_layer": False,  # default true
            "use_qkv_bias": True,  # default false
            "epsilon": 1e-6,
            "beta1": 0.8,
            "pipeline_stages": [["emb", "pos"], ["hid", "hid", "hid"], ["mlm", "nsp"]],
            "loss_scaling_by_step": {"0": 4, "10": 8},
        }
    )
    argv = ["--config", path, "--use-cls-layer", "--no-use-qkv-bias", "--beta1", "0.7"]
    argv += ["--pipeline-stages", json.dumps(stages), "--loss-scaling-by-step", '{"0": 2}']
    argv += ["--precision", "32"]  # a static loss-scale schedule needs dynamic scaling off
    opts = options.parse_options(argv)
    assert opts["use_cls_layer"] is True  # bare flag beats the config's false
    assert opts["use_qkv_bias"] is False
    assert opts["beta1"] == 0.7
    assert opts["epsilon"] == 1e-6  # config beats default
    assert opts["beta2"] == 0.999  # default
    assert opts["pipeline_stages"] == stages
    assert opts["loss_scaling_by_step"] == {"0": 2}
    explicit = opts.explicit
    assert explicit["use_cls_layer"] == "cli" and explicit["epsilon"] == "config"
    assert "beta2" not in explicit


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--xla"], True),
        (["--xla", "true"], True),
        (["--xla", "false"], False),
        (["--xla", "0"], False),
        (["--no-xla"], False),
        (["--xla", "false", "--xla"], True),  # the last flag wins
    ],
)
def test_boolean_flag_forms(write_config, args, expected):
    path = write_config({"xla": not expected})
    assert options.parse_options(["--config", path, *args])["xla"] is expected


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--enable_recomputation"], True),
        (["--enable-recomputation"], True),
        (["--enable_recomputation", "false"], False),
        (["--no-enable_recomputation"], False),
        ([], False),
    ],
)
def test_enable_recomputation_spellings(write_config, args, expected):
    opts = options.parse_options(["--config", write_config(), *args])
    assert opts["enable_recomputation"] is expected
    assert options.bert_config_fields(opts)["recompute"] is expected


def test_ipu_only_key_warns_once_only_when_changed(capsys, write_config):
    path = write_config({"partials_type": "float", "stochastic_rounding": True})
    options.parse_options(["--config", path, "--matmul-serialize-factor", "5"])
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1
    assert "partials_type" in lines[0] and "matmul_serialize_factor" in lines[0]
    assert "stochastic_rounding" not in lines[0]  # set, but to its default
    options.parse_options(["--config", write_config({"stochastic_rounding": True})])
    assert capsys.readouterr().err == ""


def test_bad_type_in_config_names_key_and_file(capsys, write_config):
    for bad in ({"micro_batch_size": "5"}, {"micro_batch_size": 5.0}, {"use_cls_layer": "no"}):
        path = write_config(bad)
        code, err = exit_code_and_stderr(capsys, ["--config", path])
        key = next(iter(bad))
        assert code == 64 and err.count("\n") == 1 and key in err and path in err


def test_bad_flag_value_is_one_line(capsys, write_config):
    for argv in (["--micro-batch-size", "x"], ["--precision", "64"], ["--lr-power", "[0.5,"]):
        code, err = exit_code_and_stderr(capsys, ["--config", write_config(), *argv])
        assert code == 64 and err.count("\n") == 1 and argv[0] in err


def test_unreadable_config_names_file(capsys, tmp_path):
    missing = str(tmp_path / "missing.json")
    code, err = exit_code_and_stderr(capsys, ["--config", missing])
    assert code != 0 and missing in err and err.count("\n") == 1
    broken = tmp_path / "broken.json"
    broken.write_text('{"seq_length": 7,')
    code, err = exit_code_and_stderr(capsys, ["--config", str(broken)])
    assert code != 0 and str(broken) in err and err.count("\n") == 1


def test_value_normalisation(write_config):
    path = write_config({"precision": 16, "lr_schedule": "polynomial", "init_checkpoint": ""})
    opts = options.parse_options(["--config", path])
    assert opts["precision"] == "16"
    assert opts["lr_schedule"] == "polynomial_decay"
    assert opts["init_checkpoint"] is None
    assert opts["loss_scaling"] == 1.0 and isinstance(opts["loss_scaling"], float)


@pytest.mark.parametrize("precision, dynamic", [("16", True), ("32", False), ("bf16", False)])
def test_dynamic_loss_scaling_auto(write_config, precision, dynamic):
    opts = options.parse_options(["--config", write_config({"precision": precision})])
    assert opts["dynamic_loss_scaling"] is dynamic
    forced = options.parse_options(["--config", write_config(), "--dynamic-loss-scaling", "false"])
    assert forced["dynamic_loss_scaling"] is False


@pytest.mark.parametrize(
    "gbs, mbs, replicas, ga",
    [(60, 5, 1, 12), (60, 5, 3, 4), (35, 5, 7, 1), (512, 8, 4, 16)],
)
def test_gradient_accumulation_from_global_batch(write_config, gbs, mbs, replicas, ga):
    path = write_config({"global_batch_size": gbs, "micro_batch_size": mbs, "replicas": replicas})
    opts = options.parse_options(["--config", path])
    assert opts["gradient_accumulation_count"] == ga
    assert opts["global_batch_size"] == gbs
    assert opts.loop.tokens_per_step == gbs * 7


def test_global_batch_from_accumulation(write_config):
    opts = options.parse_options(["--config", write_config({"gradient_accumulation_count": 3})])
    assert opts["global_batch_size"] == 15
    opts = options.parse_options(["--config", write_config(), "--replicas", "2"])
    assert (opts["gradient_accumulation_count"], opts["global_batch_size"]) == (1, 10)


def test_inexact_global_batch_is_an_error_with_suggestions(capsys, write_config):
    # The reference rounded GA up past the exact value (512 -> 520 for d = 8); we refuse.
    path = write_config({"global_batch_size": 512, "micro_batch_size": 6})
    code, err = exit_code_and_stderr(capsys, ["--config", path])
    assert code == 64 and err.count("\n") == 1
    assert "510" in err and "516" in err  # nearest multiples of 6
    assert "micro_batch_size 4" in err  # largest micro batch <= 6 dividing 512


def test_conflicting_global_batch_and_accumulation(capsys, write_config):
    # Same source and disagreeing: error (the reference exited 0 silently).
    path = write_config({"global_batch_size": 512, "gradient_accumulation_count": 65600})
    code, err = exit_code_and_stderr(capsys, ["--config", path])
    assert code == 64 and "512" in err and "65600" in err
    code, _ = exit_code_and_stderr(
        capsys,
        [
            "--config",
            write_config(),
            "--global-batch-size",
            "10",
            "--gradient-accumulation-count",
            "3",
        ],
    )
    assert code == 64
    # Both given and consistent: fine.
    path = write_config({"global_batch_size": 30, "gradient_accumulation_count": 6})
    assert options.parse_options(["--config", path])["gradient_accumulation_count"] == 6
    # A flag beats the config's value of the other key, which is derived again.
    path = write_config({"global_batch_size": 30})
    opts = options.parse_options(["--config", path, "--gradient-accumulation-count", "2"])
    assert opts["global_batch_size"] == 10
    path = write_config({"gradient_accumulation_count": 6})
    opts = options.parse_options(["--config", path, "--global-batch-size", "20"])
    assert opts["gradient_accumulation_count"] == 4


def test_vocab_size_from_vocab_file(capsys, tmp_path, write_config):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("".join(f"tok{i}\n" for i in range(97)))
    path = write_config({"vocab_file": str(vocab)}, drop=("vocab_size",))
    assert options.parse_options(["--config", path])["vocab_size"] == 97
    # Padding rows are allowed (vocab_size larger than the file).
    path = write_config({"vocab_file": str(vocab), "vocab_size": 104})
    assert options.parse_options(["--config", path])["vocab_size"] == 104
    # A flag vocab file replaces the config's vocab_size.
    opts = options.parse_options(["--config", write_config(), "--vocab-file", str(vocab)])
    assert opts["vocab_size"] == 97
    # Too small: ids would overflow the embedding table.
    path = write_config({"vocab_file": str(vocab), "vocab_size": 96})
    code, err = exit_code_and_stderr(capsys, ["--config", path])
    assert code == 64 and "96" in err and "97" in err and str(vocab) in err
    code, err = exit_code_and_stderr(capsys, ["--config", write_config({"vocab_file": "nope.txt"})])
    assert code == 64 and "nope.txt" in err


def test_seed_random_when_null_and_recorded(tmp_path, write_config):
    seeds = {options.parse_options(["--config", write_config()])["seed"] for _ in range(3)}
    assert all(isinstance(s, int) and 0 <= s < 2**32 for s in seeds)
    assert len(seeds) > 1
    opts = options.parse_options(["--config", write_config({"seed": None})])
    saved = tmp_path / "run" / "arguments.json"
    opts.save(saved)
    assert json.loads(saved.read_text())["seed"] == opts["seed"]
    assert options.parse_options(["--config", write_config({"seed": 1234})])["seed"] == 1234


@pytest.mark.parametrize(
    "extra, words",
    [
        ({"pipeline_stages": [["emb", "pos", "hid"], ["hid", "mlm", "nsp"]]}, ["2", "3"]),
        ({"seq_length": 12}, ["12", "11"]),
        ({"max_predictions_per_seq": 8}, ["8", "7"]),
        ({"hidden_size": 37}, ["37", "3"]),
        ({"warmup": 1.5}, ["1.5"]),
        ({"micro_batch_size": 0}, ["micro_batch_size"]),
        ({"hidden_dropout_prob": 1.0}, ["hidden_dropout_prob"]),
    ],
)
def test_validation_errors_are_one_line(capsys, write_config, extra, words):
    code, err = exit_code_and_stderr(capsys, ["--config", write_config(extra)])
    assert code == 64 and err.count("\n") == 1
    for word in words:
        assert word in err


@pytest.mark.parametrize("warmup", [0, 10, 10.0, 0.0, 0.25])
def test_valid_warmup_forms(write_config, warmup):
    assert options.parse_options(["--config", write_config({"warmup": warmup})])["warmup"] == warmup


def test_help_exits_0_with_usage(capsys):
    for argv in (["--help"], ["-h"], []):
        with pytest.raises(SystemExit) as info:
            options.parse_options(argv, script_name="run_pretraining.py")
        assert info.value.code == 0
        out = capsys.readouterr().out
        assert out.startswith("usage: run_pretraining.py")
        assert "--micro-batch-size" in out and "--enable_recomputation" in out


def test_no_config_needed_when_not_required():
    opts = options.parse_options(["--seq-length", "29"], require_config=False)
    assert opts["seq_length"] == 29 and opts.config_path is None
    assert opts["gradient_accumulation_count"] is None and opts.loop.tokens_per_step is None


def test_script_defaults(write_config):
    path = write_config(drop=("task",))
    opts = options.parse_options(["--config", path], defaults={"task": "SQuAD"})
    assert opts["task"] == "SQuAD"


def test_format_and_save_resolved_round_trip(capsys, tmp_path, write_config):
    path = write_config({"global_batch_size": 20, "lr_power": [0.5, 1]})
    opts = options.parse_options(["--config", path, "--seed", "7"])
    lines = options.format_resolved(opts).splitlines()
    keys = [line.split(": ", 1)[0] for line in lines]
    assert keys == sorted(keys) and "_explicit" not in keys
    assert "micro_batch_size: 5" in lines and 'precision: "16"' in lines
    assert "gradient_accumulation_count: 4" in lines

    saved = tmp_path / "out" / "arguments.json"
    opts.save(saved)
    assert sorted(os.listdir(saved.parent)) == ["arguments.json"]  # no temp file left
    capsys.readouterr()
    again = options.parse_options(["--config", str(saved)])
    assert capsys.readouterr().err == ""  # IPU keys at their defaults stay silent
    for key in options.SCHEMA:
        if key in opts:
            assert again[key] == opts[key], key
    assert again.loop.tokens_per_step == opts.loop.tokens_per_step == 20 * 7


def test_bert_config_from_options(write_config):
    opts = options.parse_options(["--config", write_config({"hidden_act": "relu"})])
    fields = options.bert_config_fields(opts)
    assert fields["hidden_size"] == 36 and fields["num_attention_heads"] == 3
    assert fields["intermediate_size"] == 37 and fields["vocab_size"] == 99
    assert fields["hidden_act"] == "relu" and fields["layer_norm_eps"] == 1e-3
    assert fields["use_cls_layer"] is True and fields["recompute"] is False
    assert "hidden_dropout_prob" not in fields  # null: BertConfig's default applies
    assert "micro_batch_size" not in fields

"""Options of the shared loop that now do what they say: evaluation during training, histograms,
device_iterations, --compile-only, the profiler, disable_acc; and the typed run config."""

import dataclasses
import glob
import os
import re

import numpy as np
import pytest

import options
from tests.run_outputs import read_events
from tests.test_run_pretraining import cli, run_dirs, small_run_args


def fast_args(save_path, *extra):
    """The tiny run of test_run_pretraining without XLA (faster to build; bitwise as well)."""
    return small_run_args(save_path, "--xla", "false", *extra)


def run_in_process(capsys, *args):
    """run_pretraining.main in this process (no interpreter and TensorFlow start-up): stdout."""
    import run_pretraining

    code = run_pretraining.main(list(args))
    out = capsys.readouterr().out
    assert code == 0, out[-2000:]
    return out


def losses(run_dir, tag="loss/total"):
    return {step: float(v) for step, v in read_events(run_dir)[tag].items()}


@pytest.fixture(scope="module")
def featured_run(tmp_path_factory, sample_vocab, sample_records):
    """One run with held-out evaluation, histograms, a profile and no training accuracies."""
    save = tmp_path_factory.mktemp("featured")
    data = ["--train-file", sample_records["remask"], "--eval-file", sample_records["remask"]]
    result = cli(*fast_args(save, *data, "--vocab-file", sample_vocab,
                            "--num-train-steps", "4", "--steps-per-eval", "2",
                            "--steps-per-tensorboard", "2", "--execution-profile",
                            "--profile-start-step", "1", "--profile-steps", "1",
                            "--disable-acc"))  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    (run_dir,) = run_dirs(save)
    return result.stdout, run_dir


def test_steps_per_eval_evaluates_during_training(featured_run):
    stdout, run_dir = featured_run
    evals = re.findall(
        r"^eval at step (\d+) \(\d+ sequences\): mlm_loss: ([\d.]+), mlm_acc", stdout, re.M
    )
    assert [int(step) for step, _ in evals] == [1, 3]
    assert stdout.rstrip().splitlines()[-1].startswith("final: eval_mlm_loss:")
    events = read_events(run_dir)
    assert sorted(events["eval/mlm_loss"]) == [1, 3]
    assert float(events["eval/mlm_loss"][3]) == pytest.approx(float(evals[1][1]), abs=1e-5)


def test_steps_per_tensorboard_writes_histograms_and_norms(featured_run):
    events = read_events(featured_run[1])
    kernel = "bert/encoder/layer_0/intermediate/dense/kernel"
    assert sorted(events[f"weights/{kernel}"]) == [0, 2]
    assert sorted(events[f"gradients/{kernel}"]) == [0, 2]
    histogram = events[f"weights/{kernel}"][2]  # [buckets, (left, right, count)]
    assert histogram.shape[1] == 3 and histogram[:, 2].sum() == 36 * 37
    assert float(events[f"L2/gradients/{kernel}"][0]) > 0


def test_execution_profile_writes_a_trace(featured_run):
    pattern = os.path.join(featured_run[1], "event", "plugins", "profile", "*", "*.xplane.pb")
    traces = glob.glob(pattern)
    assert traces and os.path.getsize(traces[0]) > 0


def test_disable_acc_reports_nan_accuracies(featured_run):
    lines = [line for line in featured_run[0].splitlines() if line.startswith("step: ")]
    assert lines and all("mlm_acc: nan %" in line and "nsp_acc: nan %" in line for line in lines)
    assert "mlm_loss: nan" not in featured_run[0]


def test_device_iterations_same_losses_and_exact_resume(
    tmp_path, capsys, sample_vocab, sample_records
):
    data = ["--train-file", sample_records["remask"], "--vocab-file", sample_vocab]
    run_in_process(capsys, *fast_args(tmp_path / "one", *data, "--num-train-steps", "8"))
    four = run_in_process(capsys, *fast_args(tmp_path / "four", *data, "--num-train-steps", "8",
                                             "--device-iterations", "4"))  # fmt: skip
    assert "device_iterations 4" in four
    steps = [int(s) for s in re.findall(r"^step: (\d+),", four, re.M)]
    assert steps == [3, 7]  # one line per compiled call that reaches a log step
    base, fused = losses(run_dirs(tmp_path / "one")[0]), losses(run_dirs(tmp_path / "four")[0])
    assert sorted(fused) == list(range(8))
    np.testing.assert_allclose([fused[s] for s in range(8)], [base[s] for s in range(8)], rtol=1e-6)
    # Resume: 4 steps, then --restore-dir to 8, equals the uninterrupted device_iterations 4 run.
    half = tmp_path / "half"
    run_in_process(capsys, *fast_args(half, *data, "--num-train-steps", "4",
                                      "--device-iterations", "4"))  # fmt: skip
    (half_dir,) = run_dirs(half)
    rest = run_in_process(capsys, *fast_args(half, *data, "--num-train-steps", "8",
                                             "--device-iterations", "4",
                                             "--restore-dir", half_dir))  # fmt: skip
    assert "resumed from" in rest
    resumed = losses(half_dir)
    assert [resumed[s] for s in range(4, 8)] == [fused[s] for s in range(4, 8)]


def test_compile_only_compiles_and_reports(tmp_path):
    result = cli(*small_run_args(tmp_path, "--generated-data", "--compile-only"))
    assert result.returncode == 0, result.stderr[-2000:]
    seconds = re.search(r"^Compile time: ([\d.]+) s \(compiled with XLA", result.stdout, re.M)
    assert seconds and float(seconds.group(1)) > 0
    memory = re.search(r"^memory estimate: weights ([\d.,]+) MiB", result.stdout, re.M)
    assert memory and float(memory.group(1).replace(",", "")) > 0
    assert "Training graph successfully compiled" in result.stdout
    assert not os.listdir(tmp_path)  # nothing written


# ----------------------------------------------------------------------------- typed config


def test_run_config_is_frozen_typed_and_grouped(tmp_path):
    path = tmp_path / "c.json"
    path.write_text('{"micro_batch_size": 4, "global_batch_size": 32, "num_train_steps": 10}')
    cfg = options.parse_options(["--config", str(path), "--device-iterations", "4"])
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.loop.num_train_steps = 3
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.loop = None
    # Derived once, before anything reads them: accumulation, rounded steps and periods.
    assert cfg.loop.gradient_accumulation_count == 8 and cfg.loop.num_train_steps == 8
    assert cfg.logging.steps_per_logs == 4 and cfg.checkpoint.steps_per_ckpts == 256
    assert cfg.loop.tokens_per_step == 32 * 128 and cfg.loop.compute_dtype == "float16"
    # A value learned later gives a new config with the derived values resolved again.
    longer = cfg.updated(num_train_steps=23)
    assert longer.loop.num_train_steps == 20 and cfg.loop.num_train_steps == 8
    assert not any(k.startswith("_") for k in cfg.flat())  # no runtime objects in the config
    assert {f.name for f in dataclasses.fields(cfg.optimizer)} == {
        o.key for o in options.OPTIONS if o.concern == "optimizer"
    }


# ----------------------------------------------------------------------------- every option is read

PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _project_sources():
    paths = glob.glob(os.path.join(PROJECT, "*.py"))
    for package in ("bert_data", "common", "lr_schedules", "objectives"):
        paths += glob.glob(os.path.join(PROJECT, package, "*.py"))
    skip = {os.path.join(PROJECT, "options.py")}  # the schema itself does not count
    return "\n".join(open(p, encoding="utf-8").read() for p in sorted(paths) if p not in skip)


def unread_options(option_list, source):
    """Keys of options (not IPU-only, not marked unused) that no project code reads: neither as an
    attribute (`cfg.loop.seed`, `config.hidden_size`) nor by its quoted name."""
    unread = []
    for o in option_list:
        if o.ipu_only or o.unused:
            continue
        pattern = rf"\.{o.key}\b|[\"']{o.key}[\"']"
        if not re.search(pattern, source):
            unread.append(o.key)
    return unread


def test_every_option_is_read_or_marked():
    source = _project_sources()
    assert unread_options(options.OPTIONS, source) == []
    # The check can fail: an option nobody reads is reported.
    ghost = options.Option("option_nobody_reads", "int", 1, "ghost")
    assert unread_options([ghost], source) == ["option_nobody_reads"]


@pytest.mark.parametrize("bad", [float("inf"), float("nan"), 1e20])
def test_update_is_skipped_when_the_gradient_norm_is_not_finite(tmp_path, bad):
    """One global norm serves the finite check and the optimizer: an inf or NaN anywhere, or
    finite values whose square sum overflows float32, skip the update (weights and slots kept,
    the step counted); finite gradients are applied."""
    import tensorflow as tf

    import training
    from objectives import pretraining

    cfg = options.parse_options(fast_args(tmp_path, "--generated-data", "--optimizer", "lamb"))
    task = pretraining.PretrainingTask(cfg)
    strategy = training.make_strategy(1)
    trainer = training.Trainer(task.cfg, strategy, task.build_model(strategy), task.loss)
    names = trainer.train_names
    state = lambda: {k: v.numpy().copy() for k, v in trainer.state.items()}  # noqa: E731
    grads = [tf.fill(trainer.model.params[n].shape, 1e-3) for n in names]
    poisoned = list(grads)
    poisoned[len(names) // 2] = tf.tensor_scatter_nd_update(
        tf.reshape(grads[len(names) // 2], [-1]), [[0]], [bad]
    )
    poisoned[len(names) // 2] = tf.reshape(poisoned[len(names) // 2], grads[len(names) // 2].shape)
    before = state()
    out = trainer._apply(names, poisoned, {"loss": tf.constant(1.0)})
    assert float(out["applied"]) == 0.0 and not np.isfinite(float(out["grad_norm"]))
    after = state()
    assert int(after.pop("global_step")) == int(before.pop("global_step")) + 1
    for key, value in before.items():
        np.testing.assert_array_equal(after[key], value, err_msg=key)
    out = trainer._apply(names, grads, {"loss": tf.constant(1.0)})
    assert float(out["applied"]) == 1.0
    expected = np.sqrt(sum(float(tf.size(g)) for g in grads)) * 1e-3
    assert float(out["grad_norm"]) == pytest.approx(expected, rel=1e-5)
    changed = state()
    assert any(not np.array_equal(changed[k], after[k]) for k in trainer.model.params)

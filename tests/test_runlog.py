"""runlog.Run.histograms (TensorBoard histograms + L2 scalars, mirrored to W&B) and read_scalars."""

import numpy as np
import pytest
import tensorflow as tf

import runlog
from tests.run_outputs import read_events, wandb_history

# Odd sizes and dtypes: a float32 array, a bfloat16 tensor and a variable.
WEIGHT = np.array([[3.0, -4.0, 0.5], [0.0, 1.0, -2.0]], np.float32)
GRADIENT_VALUES = [1.0, -2.0, 2.0, 0.25, -0.125]  # exact in bfloat16
GRADIENT = tf.constant(GRADIENT_VALUES, tf.bfloat16)
BIAS = tf.Variable([7.0])


def write(run_dir, wandb=False, **extra):
    run = runlog.Run(str(run_dir), wandb=wandb)
    run.scalars(2, {"loss/total": 1.5})
    tensors = {"weights/w": WEIGHT, "gradients/w": GRADIENT, "weights/b": BIAS}
    run.histograms(5, {**tensors, **extra})
    run.scalars(5, {"loss/total": 1.25})
    run.close()


def test_histograms_and_l2_norms_in_the_event_file(tmp_path):
    write(tmp_path)
    events = read_events(str(tmp_path))
    for tag, values in (("weights/w", WEIGHT), ("gradients/w", GRADIENT_VALUES)):
        norm = np.sqrt(np.sum(np.float64(values) ** 2))
        assert float(events[f"L2/{tag}"][5]) == pytest.approx(norm, rel=1e-6)
    assert float(events["L2/weights/b"][5]) == pytest.approx(7.0)
    histogram = events["weights/w"][5]  # [buckets, 3]: left edge, right edge, count
    assert histogram.shape[1] == 3 and histogram[:, 2].sum() == WEIGHT.size
    assert histogram[0, 0] == pytest.approx(-4.0) and histogram[-1, 1] == pytest.approx(3.0)
    assert events["gradients/w"][5][:, 2].sum() == 5


def test_read_scalars_leaves_out_histograms(tmp_path):
    write(tmp_path)
    scalars = runlog.read_scalars(str(tmp_path))
    assert set(scalars) == {"loss/total", "L2/weights/w", "L2/gradients/w", "L2/weights/b"}
    steps, values = scalars["loss/total"]
    assert steps.tolist() == [2, 5] and values.tolist() == [1.5, 1.25]


def test_read_scalars_without_events_is_a_user_error(tmp_path):
    with pytest.raises(runlog.UserError, match="no TensorBoard events"):
        runlog.read_scalars(str(tmp_path))


def test_histograms_mirrored_to_offline_wandb(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    overflow = np.array([1.0, np.inf, np.nan, -2.0], np.float16)  # an fp16 overflow step
    write(tmp_path, wandb=True, **{"gradients/overflow": overflow})
    history = wandb_history(str(tmp_path))
    assert sum(history["gradients/overflow.values"][5]) == 2  # the finite elements
    assert history["L2/gradients/overflow"] == {5: "NaN"}  # W&B's JSON spelling
    assert history["weights/w._type"] == {5: "histogram"}
    assert sum(history["gradients/w.values"][5]) == 5
    assert history["L2/weights/b"] == {5: 7.0}
    assert history["loss/total"] == {2: 1.5, 5: 1.25}  # a histogram step merges with its scalars


def test_online_without_credentials_is_a_user_error_not_a_prompt(tmp_path, monkeypatch):
    for name in ("HOME", "NETRC", "WANDB_CONFIG_DIR"):  # no ~/.netrc or W&B settings with a key
        monkeypatch.setenv(name, str(tmp_path / "home"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "online")
    with pytest.raises(runlog.UserError, match="WANDB_MODE=online needs W&B credentials"):
        runlog.Run(str(tmp_path / "run"), wandb=True)
    assert not (tmp_path / "run" / "log.txt").exists()

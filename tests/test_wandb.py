"""--wandb: an offline W&B run under the run directory holding exactly the TensorBoard scalars."""

import glob
import os
import pathlib
import subprocess
import sys

import numpy as np

from tests.run_outputs import read_events, wandb_history

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_offline_wandb_run_holds_the_tensorboard_scalars(tmp_path):
    env = dict(os.environ, WANDB_MODE="offline", TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("WANDB_API_KEY", None)
    args = [
        "--config", os.path.join(ROOT, "configs", "pretrain_tiny_128_lamb.json"),
        "--generated-data", "--num-train-steps", "5", "--steps-per-logs", "1", "--wandb",
        "--micro-batch-size", "4", "--global-batch-size", "4", "--save-path", str(tmp_path),
        "--hidden-size", "36", "--num-attention-heads", "3", "--intermediate-size", "37",
        "--xla", "false",  # an XLA compile would triple the time
    ]  # fmt: skip
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "run_pretraining.py"), *args],
        capture_output=True, text=True, timeout=300, env=env, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = glob.glob(os.path.join(tmp_path, "pretraining_*"))
    assert "wandb sync" in pathlib.Path(run_dir, "log.txt").read_text()

    board = {
        tag: {step: float(v) for step, v in steps.items()}
        for tag, steps in read_events(run_dir).items()
    }
    assert {"loss/MLM", "accuracy/NSP", "learning_rate"} <= set(board)
    assert sorted(board["loss/MLM"]) == [0, 1, 2, 3, 4]
    history = wandb_history(run_dir)
    for tag, steps in board.items():
        assert tag in history, f"{tag} is in TensorBoard but not in W&B"
        got = {step: history[tag].get(step, np.nan) for step in steps}
        np.testing.assert_allclose(
            np.float32(list(got.values())), list(steps.values()), rtol=1e-6, err_msg=tag
        )
    # No duplicates from a TensorBoard sync (it would add e.g. "global_step" or doubled steps).
    assert set(history) - set(board) <= {"_step", "_runtime", "_timestamp"}

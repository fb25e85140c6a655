"""kill -9 during a checkpoint write, at every point of it: what `--restore-dir` then picks is a
complete checkpoint (weights, step and data position of one and the same save), never a mixture.

Each case runs `checkpoints.save` in a child process that SIGKILLs itself just before its k-th
rename (the points where files become visible), for every k until a save completes."""

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

import checkpoints
from common.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHILD = textwrap.dedent(
    """
    import os, signal, sys
    sys.path.insert(0, sys.argv[1])
    import numpy as np
    import tensorflow as tf
    import checkpoints

    directory, kill_at, mode = sys.argv[2], int(sys.argv[3]), sys.argv[4]
    w = tf.Variable(np.zeros([256, 64], np.float32))
    step = tf.Variable(0, dtype=tf.int64)
    variables = {"w": w, "global_step": step}
    data = iter(tf.data.Dataset.range(1000))

    def save(number, value):  # state of step `number`: w = value, data at `number` elements read
        w.assign(np.full([256, 64], value, np.float32))
        step.assign(number)
        while int(step.numpy()) > save.read:
            next(data)
            save.read += 1
        checkpoints.save(directory, number, variables, data)

    save.read = 0
    save(1, 1.0)
    save(2, 2.0)
    real, calls = os.replace, [0]

    def replace(src, dst):
        if calls[0] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        calls[0] += 1
        real(src, dst)

    os.replace = replace
    if mode == "next":
        save(3, 3.0)
    else:  # the same step saved again with other values (a resumed run passing an old step)
        w.assign(np.full([256, 64], 7.0, np.float32))
        checkpoints.save(directory, 2, variables, data)
    print("completed after", calls[0], "renames")
    """
)

# The values a complete checkpoint of each step can hold, by mode.
EXPECTED = {"next": {1: {1.0}, 2: {2.0}, 3: {3.0}}, "same": {1: {1.0}, 2: {2.0, 7.0}}}


def _picked(directory):
    """(step, w value, next data element) of what --restore-dir would resume from."""
    prefix = checkpoints.resolve(directory)
    w = tf.Variable(np.zeros([256, 64], np.float32))
    step = tf.Variable(-1, dtype=tf.int64)
    checkpoints.restore(prefix, {"w": w, "global_step": step})
    data = iter(tf.data.Dataset.range(1000))
    assert checkpoints.restore_iterator(prefix, data), f"{prefix} has no data position"
    values = np.unique(w.numpy())
    assert len(values) == 1, f"{prefix}: weights from two saves {values}"
    return int(step.numpy()), float(values[0]), int(next(data))


@pytest.mark.parametrize("mode", ["next", "same"])
def test_kill_during_checkpoint_write_leaves_a_complete_checkpoint(tmp_path, mode):
    picked, completed = set(), None
    for kill_at in range(20):
        directory = tmp_path / f"{mode}-{kill_at}"
        proc = subprocess.run(
            [sys.executable, "-c", CHILD, ROOT, str(directory), str(kill_at), mode],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if proc.returncode == 0:
            completed = kill_at
            assert "completed after" in proc.stdout
            step, value, following = _picked(str(directory))
            assert (step, value) == ((3, 3.0) if mode == "next" else (2, 7.0))
            break
        assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
        step, value, following = _picked(str(directory))
        assert value in EXPECTED[mode][step], (kill_at, step, value)
        assert following == step, (kill_at, step, following)  # the data position of that save
        picked.add((step, value))
    assert completed is not None and completed >= 3  # data, iterator files, index, state file
    # Some kills left the previous save, none a mixture. "next": never less than step 2. "same":
    # the old copy of step 2 is hidden before the new files move in, so a kill then falls back to
    # step 1 (a later checkpoint written again by a resumed run is the one save that can be lost).
    if mode == "next":
        assert picked == {(2, 2.0), (3, 3.0)} or picked == {(2, 2.0)}
    else:
        assert (1, 1.0) in picked and (2, 2.0) not in picked


def test_a_killed_save_leaves_no_temporary_files_after_the_next_save(tmp_path):
    directory = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, ROOT, str(directory), "1", "next"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == -signal.SIGKILL
    assert list(directory.glob(".tmp-ckpt-3-*")), "the kill should have left temporary files"
    w = tf.Variable(np.full([256, 64], 3.0, np.float32))
    checkpoints.save(str(directory), 3, {"w": w, "global_step": tf.Variable(3, dtype=tf.int64)})
    assert not list(directory.glob(".tmp-*"))
    assert checkpoints.resolve(str(directory)).endswith("ckpt-3")


def test_a_directory_without_a_complete_checkpoint_is_one_line(tmp_path):
    (tmp_path / "ckpt-5.data-00000-of-00001").write_bytes(b"partial")
    with pytest.raises(UserError, match="no checkpoint in directory"):
        checkpoints.resolve(str(tmp_path))

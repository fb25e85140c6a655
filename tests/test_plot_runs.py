"""plot_runs.py: curves of several runs from their event files into one PNG; one-line errors."""

import os
import subprocess

import matplotlib.image
import numpy as np
import pytest
import tensorflow as tf

import plot_runs
import runlog

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def fake_run(run_dir, tags, steps=7):
    """A run directory whose event file holds `tags` (each a decreasing curve) at 0..steps-1."""
    writer = tf.summary.create_file_writer(os.path.join(run_dir, "event"))
    with writer.as_default():
        for step in range(steps):
            for i, tag in enumerate(tags):
                tf.summary.scalar(tag, (i + 1) / (step + 1), step=step)
    writer.close()
    return str(run_dir)


@pytest.fixture
def two_runs(tmp_path):
    # The second run lacks the learning rate and throughput and has an extra accuracy: skipped.
    a = fake_run(tmp_path / "lamb", ["loss/MLM", "loss/NSP", "learning_rate", "samples_per_sec"])
    b = fake_run(tmp_path / "adam", ["loss/MLM", "accuracy/NSP"], steps=5)
    return a, b


def test_command_writes_a_png(tmp_path, two_runs):
    out = tmp_path / "curves.png"
    result = subprocess.run(
        [os.path.join(ROOT, "plot_runs.py"), *two_runs, "-o", str(out), "--labels", "A", "B"],
        capture_output=True, text=True, timeout=120, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(str(out))  # [height, width, RGBA] in [0, 1]
    assert image.shape[:2] == (2 * 240, 3 * 336)  # 4 panels, 3 a row, 4.2 x 3 inches at dpi 80
    assert image[..., :3].std() > 0.05  # not blank


def test_tags_pick_the_panels(tmp_path, two_runs):
    out = tmp_path / "loss.png"
    plot_runs.main([*two_runs, "-o", str(out), "--tags", "loss/*", "--dpi", "50"])
    height, width = matplotlib.image.imread(str(out)).shape[:2]
    assert width < height * 2  # one panel only


@pytest.mark.parametrize(
    "argv, message",
    [
        (["{tmp}/missing"], "no TensorBoard events"),
        (["{a}", "{a}", "--labels", "only-one"], "--labels gives 1 labels for 2 runs"),
        (["{a}", "--tags", "no/such/*"], "none of the runs has a tag matching no/such/*"),
    ],
)
def test_errors_are_one_line(tmp_path, capsys, two_runs, argv, message):
    argv = [arg.format(tmp=tmp_path, a=two_runs[0]) for arg in argv]
    out = tmp_path / "out.png"
    with pytest.raises(SystemExit) as exit_info:
        plot_runs.main([*argv, "-o", str(out)])
    assert exit_info.value.code != 0
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    assert not out.exists()


def test_overlaid_runs_share_a_panel(two_runs):
    runs = [(os.path.basename(d), runlog.read_scalars(d)) for d in two_runs]
    series = plot_runs.panel_series(runs, ("loss/*", "eval/*loss"))
    assert [(label, tag) for label, tag, _, _ in series] == [
        ("lamb", "loss/MLM"), ("lamb", "loss/NSP"), ("adam", "loss/MLM"),
    ]  # fmt: skip
    np.testing.assert_allclose(series[2][3], 1 / np.arange(1, 6), rtol=1e-6)

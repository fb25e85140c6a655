"""Damaged TFRecords (issue 13): a file cut short or with flipped bytes stops the run with one line
naming the file and the byte where its records stop, after checkpointing the last completed step
(resuming from it with --skip-corrupt-records continues exactly as a run with the flag from the
start); --skip-corrupt-records skips the rest of a damaged file and counts it; on undamaged data
the flag changes nothing."""

import os
import re

import numpy as np
import pytest

from bert_data import records
from bert_data.pretraining import SHUFFLE_BUFFER
from tests.run_outputs import read_events, run_script
from tests.test_run_pretraining import SCRIPT, STEP_LINE, local, run_dirs, small_run_args
from tests.test_train_gpt2 import tiny_config  # noqa: F401 (a fixture)

STEPS = 30
SKIP = "--skip-corrupt-records"
ERROR = re.compile(
    r"error: (\S+): damaged TFRecord data at byte (\d+) of (\d+) \(.*\); "
    r"the last completed step (\d+) is saved as (\S+); resume from (\S+) once the file is fixed "
    r"or removed, or with --skip-corrupt-records"
)


@pytest.fixture(scope="module")
def long_records(tmp_path_factory, sample_vocab):
    """(path, byte offset of every record and of the end): remask records from the sample, more
    than the shuffle buffer holds, so damage after its first fill is met a few steps in."""
    from bert_data import create_pretraining_data as cpd

    path = str(tmp_path_factory.mktemp("long") / "long.tfrecord")
    argv = ["--input-file", os.path.join(os.path.dirname(SCRIPT), "bert_data", "sample.txt"),
            "--output-file", path, "--vocab-file", sample_vocab, "--do-lower-case", "--quiet",
            "--duplication-factor", "90", "--remask"]  # fmt: skip
    cpd.run(cpd.build_parser().parse_args(argv))
    offsets = np.cumsum([0] + [len(r) + 16 for r in records.read_records(path)])
    assert len(offsets) > SHUFFLE_BUFFER + 300
    return path, offsets


def args(save_path, train_file, vocab, *extra):
    return [str(a) for a in small_run_args(save_path, "--train-file", train_file, "--vocab-file", vocab,
                          "--num-train-steps", STEPS, "--steps-per-ckpts", 3, "--xla", "false", *extra)]  # fmt: skip


def damaged(tmp_path, source, offsets, how):
    """A copy of `source` damaged at record SHUFFLE_BUFFER + 200; returns (path, record offset).
    The readers meet it while refilling the shuffle buffer, around step 15-25 (tf.data reads up to
    about a hundred records ahead), so some steps complete before and the run ends after."""
    k = SHUFFLE_BUFFER + 200
    start = int(offsets[k])
    with open(source, "rb") as f:
        data = bytearray(f.read())
    if how == "truncated":
        data = data[: start + 50]
    else:  # two bytes flipped inside the record's data: its checksum fails
        middle = (start + int(offsets[k + 1])) // 2
        data[middle] ^= 0xFF
        data[middle + 1] ^= 0x5A
    path = tmp_path / "data" / "long.tfrecord"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(bytes(data))
    return str(path), start


def _losses(out):
    return [tuple(s) for s in STEP_LINE.findall(out)]


@pytest.mark.parametrize("how", ["intact", "truncated", "flipped"])
def test_reader_reads_up_to_the_damage_and_notes_file_and_byte(tmp_path, long_records, how):
    """common.tfrecords against TensorFlow's own reader: the same records in the same order up to
    the damage, TensorFlow's DataLossError at that record, and the damage's file and byte noted."""
    import tensorflow as tf

    from common import tfrecords

    source, offsets = long_records
    path, offset = (source, None) if how == "intact" else damaged(tmp_path, source, offsets, how)
    log = tfrecords.DamageLog()
    got = [r.numpy() for r in tfrecords.records([path], log)]
    expected = []
    try:
        for record in tf.data.TFRecordDataset(path):
            expected.append(record.numpy())
    except tf.errors.DataLossError as err:
        assert how != "intact" and re.search(r"(corrupted|truncated) record at \d+", err.message)
    assert got == expected
    if how == "intact":
        assert log.damages == [] and len(got) == len(offsets) - 1
    else:
        assert log.damages == [tfrecords.Damage(path, offset, os.path.getsize(path))]
        assert int(offsets[len(got)]) == offset


@pytest.mark.parametrize("how,iterations", [("truncated", 1), ("flipped", 2)])
def test_damage_stops_with_one_line_and_a_checkpoint_that_resumes(
    tmp_path, capsys, long_records, sample_vocab, how, iterations
):
    """Stop: exit 2, one `error:` line naming file and byte, no traceback, `ckpt-<last step>`.
    Resuming it with --skip-corrupt-records continues exactly as a run that had the flag from the
    start (which counts the damage in one summary line)."""
    source, offsets = long_records
    path, offset = damaged(tmp_path, source, offsets, how)
    size = os.path.getsize(path)
    extra = ["--device-iterations", iterations]
    skipping = local(capsys, *args(tmp_path / "skip", path, sample_vocab, *extra, SKIP))
    assert skipping.returncode == 0, skipping.stderr[-2000:]
    reference = _losses(skipping.stdout)  # the last step of each call is logged
    assert [int(s[0]) for s in reference] == list(range(iterations - 1, STEPS, iterations))
    summary = [line for line in skipping.stdout.splitlines() if line.startswith("skipped damaged")]
    assert len(summary) == 1, skipping.stdout[-3000:]
    assert summary[0].startswith(
        f"skipped damaged TFRecord data: 1 file(s), {size - offset:,} bytes"
    ) and summary[0].endswith(f"{path} from byte {offset} of {size}")
    (skip_dir,) = run_dirs(tmp_path / "skip")
    with open(os.path.join(skip_dir, "log.txt")) as f:
        assert summary[0] in f.read()
    events = read_events(skip_dir)
    assert list(events["input/damaged_files"].values()) == [1]
    assert list(events["input/skipped_bytes"].values()) == [size - offset]

    broken = run_script(SCRIPT, *args(tmp_path / "run", path, sample_vocab, *extra))
    assert broken.returncode == 2, broken.stderr[-2000:]
    assert "Traceback" not in broken.stderr
    errors = [line for line in broken.stderr.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and broken.stderr.strip().splitlines()[-1] == errors[0], errors
    match = ERROR.fullmatch(errors[0])
    assert match, errors[0]
    named, byte, size_named, step, prefix, run_dir = match.groups()
    assert (named, int(byte), int(size_named)) == (path, offset, size)
    # The steps before the stop are the skipping run's; the checkpoint is the last of them.
    done = _losses(broken.stdout)
    assert 1 <= len(done) < len(reference) and done == reference[: len(done)]
    assert int(step) == int(done[-1][0]) and (int(step) + 1) % iterations == 0
    assert prefix == os.path.join(run_dir, f"ckpt-{step}") and os.path.isfile(prefix + ".index")
    import tensorflow as tf

    assert int(tf.train.load_checkpoint(prefix).get_tensor("global_step")) == int(step) + 1

    resumed = local(capsys, *args(tmp_path / "run", path, sample_vocab, *extra, SKIP,
                                  "--restore-dir", run_dir))  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"ckpt-{step} at step {int(step) + 1}" in resumed.stdout
    assert done + _losses(resumed.stdout) == reference


def test_skip_flag_leaves_undamaged_data_alone(tmp_path, capsys, long_records, sample_vocab):
    source, _ = long_records
    plain = local(capsys, *args(tmp_path / "a", source, sample_vocab))
    flagged = local(capsys, *args(tmp_path / "b", source, sample_vocab, "--skip-corrupt-records"))
    assert plain.returncode == flagged.returncode == 0, flagged.stderr[-2000:]
    assert len(_losses(plain.stdout)) == STEPS
    assert _losses(plain.stdout) == _losses(flagged.stdout)
    assert "skipped damaged" not in flagged.stdout


def test_gpt2_tfrecords_stop_or_skip_alike(tmp_path, capsys, tiny_config):  # noqa: F811
    """train_gpt2.py --dataset tfrecord reads through the same checked reader: damage found while
    counting the records (no .index file) or while training (counted from .index) stops in one
    line naming the file and byte; --skip-corrupt-records trains on the records before it."""
    import tensorflow as tf

    from tests.test_train_gpt2 import fails, run, tiny_args

    path = tmp_path / "docs.tfrecord"
    rng = np.random.default_rng(0)
    with tf.io.TFRecordWriter(str(path)) as w:
        for _ in range(300):
            ids = tf.train.Int64List(value=rng.integers(1, 97, 13).tolist())
            feature = {"input_ids": tf.train.Feature(int64_list=ids)}
            w.write(
                tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()
            )
    data = path.read_bytes()
    offsets = np.cumsum([0] + [len(r) + 16 for r in records.read_records(str(path))])
    offset = int(offsets[200])
    path.write_bytes(data[: offset + 10])

    def argv(out, *extra):
        a = tiny_args(tiny_config, tmp_path / out, "--input-files", path, "--training-steps", 4)
        a[a.index("generated")] = "tfrecord"
        return [*a, *extra]

    where = f"{path}: damaged TFRecord data at byte {offset} of {offset + 10}"
    fails(capsys, argv("a"), where)
    code, out, err = run(capsys, *argv("b", SKIP))
    assert code == 0, err
    assert "Samples per epoch: 200" in out
    assert "skipped damaged TFRecord data: 1 file(s), 10 bytes" in out
    # With an .index file the count comes from it and the damage is met by the training input
    # (filling the shuffle buffer for the first call, which trains on the good records it got).
    (tmp_path / "docs.index").write_text("".join(f"{o} 0\n" for o in offsets[:300]))
    fails(capsys, argv("c"), where + " (a record cut short or failing its checksum); the last")

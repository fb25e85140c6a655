"""Test helpers: running a script in a subprocess, and reading a run's outputs: TensorBoard summaries
record by record with tf.data (independent of runlog.read_scalars, which goes through TensorBoard's
event accumulator) and the offline W&B history with wandb's own transaction-log reader."""

import glob
import json
import os
import subprocess
import sys
import warnings

import tensorflow as tf


def run_script(script, *args, timeout=600):
    """`python3 script args` as a CompletedProcess (text output), with Python's fault handler on.

    A process killed by a signal (a native crash, seen once in about 40 CI runs of the tiny
    RoBERTa job, not reproduced since) is run once more, and the first attempt's stderr (with
    the fault handler's Python stack) becomes a test warning: a deterministic failure still
    fails, and a rare crash leaves its trace in the report instead of turning CI red.
    """
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONFAULTHANDLER="1")
    command = [sys.executable, script, *map(str, args)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    if result.returncode < 0:
        warnings.warn(
            f"{os.path.basename(script)} died of signal {-result.returncode}; ran it again. "
            f"stderr:\n{result.stderr[-4000:]}",
            stacklevel=2,
        )
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    return result


def read_events(run_dir):
    """{tag: {step: ndarray}} of every tensor summary in run_dir/event (scalars are 0-d; a
    histogram is [buckets, 3] of left edge, right edge, count)."""
    found = {}
    for path in sorted(glob.glob(os.path.join(run_dir, "event", "events.out.tfevents.*"))):
        for record in tf.data.TFRecordDataset(path):
            event = tf.compat.v1.Event.FromString(record.numpy())
            for value in event.summary.value:
                found.setdefault(value.tag, {})[event.step] = tf.make_ndarray(value.tensor)
    return found


def wandb_history(run_dir):
    """{tag: {step: value}} from the run's .wandb transaction log, read by wandb's own reader."""
    (sync_dir,) = glob.glob(os.path.join(run_dir, "wandb", "offline-run-*"))
    result = subprocess.run(
        [sys.executable, "-m", "wandb", "leet", "inspect", "--json", sync_dir],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    history = {}
    for line in result.stdout.splitlines():
        record = json.loads(line)
        if record["type"] == "history":
            item = record["history"]["item"]
            for tag, value in item.items():
                history.setdefault(tag, {})[item["_step"]] = value
    return history

"""Test helpers reading a run's outputs: TensorBoard summaries record by record with tf.data
(independent of runlog.read_scalars, which goes through TensorBoard's event accumulator) and the
offline W&B history with wandb's own transaction-log reader."""

import glob
import json
import os
import subprocess
import sys

import tensorflow as tf


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

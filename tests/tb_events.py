"""Test helper: a run's TensorBoard summaries read record by record with tf.data (independent
of runlog.read_scalars, which goes through TensorBoard's event accumulator)."""

import glob
import os

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

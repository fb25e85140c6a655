"""TFRecord input that says where it is damaged, and can read past the damage.

TensorFlow's reader stops a file at its first record that is cut short or fails its checksum
(`DataLossError: corrupted record at N`, an offset but no file name), and
`Dataset.ignore_errors()` makes it skip the REST of that file: after a data error the reader moves
on to its next file (TensorFlow does so on purpose, or the same error would repeat). So the
records of a damaged file from its first damaged record to its end are lost, even those after the
damage that would still read; records before it and every other file are read as usual.

`reader(log)(path)` reads one file that way and then checks that the records it read add up
to the file's size (each record is its data plus 16 bytes of framing). If they do not, the records
stopped at byte `sum` of that file and the `DamageLog` notes (file, byte offset). The reader never
raises: whoever owns the log decides (training.py stops the run at the next step boundary, or with
`skip` goes on without the rest of the file). An error raised inside tf.data would be kept in its
read-ahead buffers, and so in a checkpoint's data position, and come back on resume even after the
file is fixed. Sizes are summed in the graph per block of BLOCK records (so a file is read up to
that many records ahead) and compared in Python once per file and pass; undamaged data gives
exactly the records, in exactly the order, of a plain `tf.data.TFRecordDataset`, whichever the
setting. A file cut exactly at a record boundary cannot be told from a shorter file and reads as
one.
"""

import dataclasses
import os
import threading


@dataclasses.dataclass(frozen=True)
class Damage:
    """Where a TFRecord file stopped reading: `offset` is the first byte of the first record that
    could not be read (the records before it are good), `size` the file's size."""

    path: str
    offset: int
    size: int

    def describe(self):
        return (
            f"{self.path}: damaged TFRecord data at byte {self.offset} of {self.size} "
            "(a record cut short or failing its checksum)"
        )


class DamageLog:
    """The damaged TFRecord files met by a run's input pipelines (thread-safe: tf.data calls it
    from its own threads).

    Args:
      skip: what the owner of the log does with damage: False: stop (training.py: checkpoint the
        last completed step and exit in one line); True: go on without the rest of the file.
    Attributes:
      damages: the distinct Damage met, in the order met.
      passes: how many times damaged files were read (a file is met again on every pass).
    """

    def __init__(self, skip=False):
        self.skip = bool(skip)
        self.damages = []
        self.passes = 0
        self._lock = threading.Lock()

    def met(self, path, good_bytes):
        """Called at the end of each file read: True if it stopped short of the file's end."""
        size = os.path.getsize(path)
        if good_bytes == size:
            return False
        damage = Damage(path, good_bytes, size)
        with self._lock:
            self.passes += 1
            if damage not in self.damages:
                self.damages.append(damage)
        return True

    def summary(self):
        """One line on what was skipped, or None if nothing was."""
        if not self.damages:
            return None
        lost = sum(d.size - d.offset for d in self.damages)
        where = "; ".join(f"{d.path} from byte {d.offset} of {d.size}" for d in self.damages)
        return (
            f"skipped damaged TFRecord data: {len(self.damages)} file(s), {lost:,} bytes "
            f"(the rest of each file from its first damaged record), met {self.passes} time(s): "
            + where
        )


BLOCK = 64  # records summed at a time (per-record tf.data functions would double the reading cost)


def reader(log):
    """A function path -> tf.data.Dataset of the serialised records of one TFRecord file, checked
    as the module docstring says (path a string tensor: for `interleave` and `flat_map`).

    Its functions are plain TensorFlow ops, kept out of AutoGraph (which would convert this
    dataset-building Python and its closures, and trips over them)."""
    import numpy as np
    import tensorflow as tf

    plain = tf.autograph.experimental.do_not_convert

    def check(name, good_bytes):
        return np.int64(log.met(name.decode(), int(good_bytes)))

    @plain
    def mark(block):
        return block, tf.constant(False)

    @plain
    def keep(block, last, verdict):
        return tf.logical_and(tf.logical_not(last), verdict == 0)

    @plain
    def drop_marks(block, last, verdict):
        return block

    @plain
    def read(path):
        def count(good, item):
            block, last = item
            # stateful=False: tf.data does not checkpoint iterators whose functions are stateful.
            # The call only notes the file and offset (idempotently); its output is used by
            # `keep`, so it is not pruned.
            verdict = tf.cond(
                last,
                lambda: tf.numpy_function(check, [path, good], tf.int64, stateful=False),
                lambda: tf.constant(0, tf.int64),
            )
            framed = tf.reduce_sum(tf.cast(tf.strings.length(block), tf.int64) + 16)
            return good + framed, (block, last, verdict)

        blocks = tf.data.TFRecordDataset(path).ignore_errors().batch(BLOCK).map(mark)
        end = tf.data.Dataset.from_tensors((tf.zeros([0], tf.string), tf.constant(True)))
        scanned = blocks.concatenate(end).scan(tf.constant(0, tf.int64), plain(count))
        return scanned.filter(keep).map(drop_marks).unbatch()

    return read


def records(files, log):
    """The records of `files`, file after file (what `tf.data.TFRecordDataset(files)` reads)."""
    import tensorflow as tf

    return tf.data.Dataset.from_tensor_slices(list(files)).flat_map(reader(log))

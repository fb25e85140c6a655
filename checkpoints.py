"""Name-based checkpoints: TF1 format, keys = Google BERT variable names, written atomically.

`ckpt-<step>.index` + `ckpt-<step>.data-00000-of-00001` are what TF1's Saver wrote, so
`tf.train.list_variables`, `tf.train.load_checkpoint`, Google's `init_from_checkpoint` and Hugging Face's
TF-checkpoint loader all read them by name (`bert/encoder/layer_0/attention/self/query/kernel`, optimizer
slots as `<var>/lamb_m`, `global_step`, ...). The data-pipeline position is saved beside them
(`ckpt-<step>.input*`, an object-based checkpoint of the tf.data iterator). A `checkpoint` state file lists
them as TF1 did, so `tf.train.latest_checkpoint(dir)` works.

Atomicity: everything is written under a temporary prefix and renamed into place, index last, then the
state file is replaced; an interrupted save leaves the previous checkpoints intact.
"""

import glob
import os
import re

import tensorflow as tf

from common.errors import UserError
from common.fileio import atomic_write_text

STATE_FILE = "checkpoint"
_STEP = re.compile(r"ckpt-(\d+)$")


def step_of(prefix):
    """The step number in a `.../ckpt-N` prefix (None if the name has no number)."""
    match = _STEP.search(prefix)
    return int(match.group(1)) if match else None


def _files(prefix):
    return sorted(glob.glob(glob.escape(prefix) + ".*"))


def write_state(directory, prefixes):
    """The TF1 `checkpoint` state file listing `prefixes` (the last is the latest)."""
    names = [os.path.basename(p) for p in prefixes]
    lines = [f'model_checkpoint_path: "{names[-1]}"']
    lines += [f'all_model_checkpoint_paths: "{n}"' for n in names]
    atomic_write_text(os.path.join(directory, STATE_FILE), "\n".join(lines) + "\n")


def listed(directory):
    """Checkpoint prefixes named in the directory's state file whose index exists, oldest first."""
    path = os.path.join(directory, STATE_FILE)
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        names = re.findall(r'all_model_checkpoint_paths: "([^"]+)"', f.read())
    prefixes = [n if os.path.isabs(n) else os.path.join(directory, n) for n in names]
    return [p for p in prefixes if os.path.isfile(p + ".index")]


def write_tensors(prefix, tensors, also=None):
    """Writes {name: tensor or array} as a TF1 checkpoint at `prefix`, atomically.

    Files go under a temporary prefix and are renamed into place, the index last (it is what makes a
    checkpoint visible), so an interrupted write leaves nothing that looks complete. `also(temp)` may
    write more files under the temporary prefix; they are renamed with the rest.
    """
    directory = os.path.dirname(os.path.abspath(prefix))
    os.makedirs(directory, exist_ok=True)
    for stale in glob.glob(
        os.path.join(glob.escape(directory), f".tmp-{glob.escape(os.path.basename(prefix))}-*")
    ):
        os.remove(stale)  # left by a save of this name that was killed
    temp = os.path.join(directory, f".tmp-{os.path.basename(prefix)}-{os.getpid()}")
    names = list(tensors)
    tf.raw_ops.SaveV2(
        prefix=temp,
        tensor_names=names,
        shape_and_slices=[""] * len(names),
        tensors=[tf.convert_to_tensor(tensors[n]) for n in names],
    )
    if also is not None:
        also(temp)
    moves = [(f, prefix + f[len(temp) :]) for f in _files(temp)]
    moves.sort(key=lambda m: m[1] == prefix + ".index")  # the index last: it makes the checkpoint
    if os.path.exists(prefix + ".index"):
        # Overwriting a checkpoint of the same name: hide the old one first, so that a kill between
        # the renames never pairs the old index (and its checksums) with the new data files.
        os.remove(prefix + ".index")
    for src, dst in moves:
        os.replace(src, dst)


def save(directory, step, variables, iterator=None, max_to_keep=5):
    """Writes `ckpt-<step>` with every variable under its name; returns the prefix.

    Args:
      directory: run directory (created if missing).
      step: checkpoint number.
      variables: ordered dict {name: tf.Variable} (model weights, optimizer slots, counters).
      iterator: optional tf.data iterator whose position is saved too.
      max_to_keep: older checkpoints beyond this many are deleted (0 or None keeps all).
    """
    prefix = os.path.join(directory, f"ckpt-{step}")

    def save_iterator(temp):
        if iterator is not None:
            tf.train.Checkpoint(iterator=iterator).write(temp + ".input")

    write_tensors(prefix, {n: v.read_value() for n, v in variables.items()}, save_iterator)
    kept = [p for p in listed(directory) if p != prefix] + [prefix]
    if max_to_keep and len(kept) > max_to_keep:
        for old in kept[:-max_to_keep]:
            for f in _files(old):
                os.remove(f)
        kept = kept[-max_to_keep:]
    write_state(directory, kept)
    return prefix


def resolve(path):
    """A checkpoint prefix from a prefix or a directory (its latest checkpoint); one-line errors."""
    if os.path.isdir(path):
        found = listed(path)
        if not found:
            raise UserError(f"no checkpoint in directory {path}")
        return found[-1]
    if path.endswith(".index"):
        path = path[: -len(".index")]
    if not os.path.isfile(path + ".index"):
        raise UserError(f"checkpoint not found: {path} (expected {path}.index)")
    return path


def read_shapes(prefix):
    try:
        return dict(tf.train.list_variables(prefix))
    except (tf.errors.OpError, ValueError) as err:
        raise UserError(f"cannot read checkpoint {prefix}: {err.message}") from None


def restore(prefix, variables, required=None):
    """Loads variables by name from a checkpoint.

    Args:
      prefix: checkpoint prefix.
      variables: dict {name: tf.Variable} to fill where the checkpoint has the name.
      required: names that must be present (default: all of `variables`); missing ones are an error
        listing them. Shape mismatches are always an error naming the variable and both shapes.
    Returns:
      (loaded names, missing names, unexpected names in the checkpoint).
    """
    shapes = read_shapes(prefix)
    required = list(variables) if required is None else list(required)
    missing_required = [n for n in required if n not in shapes]
    if missing_required:
        shown = ", ".join(missing_required[:8]) + (" ..." if len(missing_required) > 8 else "")
        raise UserError(
            f"checkpoint {prefix} lacks {len(missing_required)} required variable(s): {shown}"
        )
    names = [n for n in variables if n in shapes]
    for n in names:
        want = variables[n].shape.as_list()
        if list(shapes[n]) != want:
            raise UserError(
                f"checkpoint {prefix}: variable {n} has shape {list(shapes[n])}, the model has {want}"
            )
    if names:
        values = tf.raw_ops.RestoreV2(
            prefix=prefix,
            tensor_names=names,
            shape_and_slices=[""] * len(names),
            dtypes=[variables[n].dtype for n in names],
        )
        for n, value in zip(names, values):
            variables[n].assign(value)
    missing = [n for n in variables if n not in shapes]
    unexpected = sorted(set(shapes) - set(variables))
    return names, missing, unexpected


def restore_iterator(prefix, iterator):
    """Restores the data position saved with `save`; returns False if the checkpoint has none."""
    if not glob.glob(glob.escape(prefix) + ".input*"):
        return False
    tf.train.Checkpoint(iterator=iterator).read(prefix + ".input").assert_consumed()
    return True

"""Data fingerprints: what a data set was made with, written beside it and checked by training.

A data tool writes `<output>.fingerprint.json` next to each output (for a Megatron corpus, next to
`<prefix>.bin/.idx`): the tool, the vocabulary's file name, sha256 and size, and the settings that
training must agree with (casing, sequence length, masks, layout). It holds no paths and no counts,
so the shards of a sharded build (`common.shards`) write the same fingerprint as the single run.

Training calls `check(files, run)` before it builds anything: the first disagreement is one
UserError naming both values, the data file and the fingerprint. Data without a fingerprint
(older data, other tools) is not checked here.
"""

import hashlib
import json
import os

from common.errors import UserError
from common.fileio import atomic_write_text, read_json

SUFFIX = ".fingerprint.json"
VERSION = 1

# How each checked key is named in messages.
_LABELS = {
    "do_lower_case": "do_lower_case",
    "sequence_length": "sequence length",
    "mask_tokens": "mask tokens per sequence",
    "layout": "layout",
}


def path_of(data_path):
    """The fingerprint file of a data file (or of a Megatron prefix)."""
    return data_path + SUFFIX


def is_fingerprint(path):
    return path.endswith(SUFFIX)


def file_entry(path, size=None):
    """{"file": base name, "sha256": hex, "size": entries (if given)} of a vocab/tokenizer file."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    except OSError as err:
        raise UserError(f"cannot read {path}: {err.strerror}") from None
    entry = {"file": os.path.basename(path), "sha256": digest.hexdigest()}
    if size is not None:
        entry["size"] = int(size)
    return entry


def make(tool, tool_version, **facts):
    """A fingerprint dict: the tool, its output-format version, and the settings in `facts`."""
    return {"fingerprint_version": VERSION, "tool": tool, "tool_version": tool_version, **facts}


def text(fingerprint):
    """The file's text: sorted keys, so equal fingerprints are equal bytes."""
    return json.dumps(fingerprint, indent=2, sort_keys=True) + "\n"


def write(data_path, fingerprint):
    """Writes `fingerprint` beside `data_path` (atomically); returns the fingerprint's path."""
    path = path_of(data_path)
    atomic_write_text(path, text(fingerprint))
    return path


def load(data_path):
    """The fingerprint dict of `data_path`, or None when it has none."""
    path = path_of(data_path)
    if not os.path.isfile(path):
        return None
    found = read_json(path, "data fingerprint")
    if not isinstance(found, dict) or "tool" not in found:
        raise UserError(f"data fingerprint {path} is not a fingerprint (no 'tool' key)")
    return found


def agreed(paths):
    """The fingerprint the parts `paths` of a sharded build share (None if none has one).

    Raises:
      UserError: two parts made with different settings (both fingerprints named).
    """
    found = [load(p) for p in paths]
    for part, other in zip(paths, found):
        if other != found[0]:
            raise UserError(
                f"the parts were made with different settings: {path_of(part)} differs from "
                f"{path_of(paths[0])}"
            )
    return found[0]


def describe_file(entry):
    size = f"{entry['size']} entries, " if "size" in entry else ""
    return f"{entry['file']} ({size}sha256 {entry['sha256'][:12]})"


def check(files, run):
    """Compares the fingerprints of `files` (those that have one) with the run's settings.

    Args:
      files: data files (or Megatron prefixes).
      run: {key: (value, source)}: the run's value of a fingerprint key and where it comes from
        (e.g. "--vocab-file /data/vocab.txt"). Keys: "vocab" and "merges" (a `file_entry` dict of
        the run's file; compared by sha256), "vocab_size" (the model's rows: the data's vocab
        must not be larger), or a plain setting such as "do_lower_case", "sequence_length",
        "mask_tokens", "layout".
    Raises:
      UserError: the first disagreement, in one line naming both values, the data file and its
        fingerprint.
    """
    for data_path in files:
        found = load(data_path)
        if found is None:
            continue
        where = f"{data_path} (fingerprint {path_of(data_path)})"
        for key, (value, source) in run.items():
            if key == "vocab_size":
                data_size = found.get("vocab", {}).get("size")
                if data_size is not None and value is not None and data_size > value:
                    raise UserError(
                        f"{where} was made with a {data_size}-token vocab "
                        f"{describe_file(found['vocab'])} but the model has vocab_size {value} "
                        f"({source}): use the vocab the data was made with"
                    )
            elif key in ("vocab", "merges"):
                data_entry = found.get(key)
                if data_entry and value and data_entry["sha256"] != value["sha256"]:
                    raise UserError(
                        f"{where} was made with {key} {describe_file(data_entry)} but this run "
                        f"uses {source}: {describe_file(value)}; use the {key} file the data was "
                        "made with"
                    )
            elif key in found and found[key] != value:
                label = _LABELS.get(key, key)
                raise UserError(
                    f"{where} was made with {label} {_show(found[key])} but this run has "
                    f"{label} {_show(value)} ({source})"
                )


def _show(value):
    return str(value).lower() if isinstance(value, bool) else str(value)

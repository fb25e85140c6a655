"""Small file helpers every tool shares: checked output directories, JSON input, atomic writes."""

import contextlib
import json
import os
import tempfile

from common.errors import UserError


def ensure_output_dir(path):
    """Creates the directory that will hold `path` and checks it is writable; returns it."""
    directory = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create output directory {directory}: {err.strerror}") from None
    if not os.access(directory, os.W_OK):
        raise UserError(f"output directory is not writable: {directory}")
    return directory


def read_json(path, what):
    """Parses a JSON file; unreadable or invalid files are one-line errors naming `what` and path."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except OSError as err:
        raise UserError(f"cannot read {what} {path}: {err.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{what} {path} is not valid JSON: {err}") from None


def atomic_write_text(path, text):
    """Writes `text` to a temporary file beside `path`, then renames it over `path`."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_write_json(path, data):
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


@contextlib.contextmanager
def atomic_outputs(paths):
    """Open binary temporary files beside `paths`; rename them all into place on success.

    Yields the list of open handles (one per path). If the block raises, no output appears and the
    temporary files are removed; Ctrl-C becomes a one-line UserError (exit 130). Handles are
    closed before the renames.
    """
    temps = [f"{path}.tmp-{os.getpid()}" for path in paths]
    try:
        with contextlib.ExitStack() as stack:
            yield [stack.enter_context(open(t, "wb")) for t in temps]  # noqa: SIM115
        for temp, path in zip(temps, paths):
            os.replace(temp, path)
    except KeyboardInterrupt:
        raise UserError("interrupted; no output file was written", exit_code=130) from None
    finally:
        for temp in temps:
            if os.path.exists(temp):
                os.remove(temp)

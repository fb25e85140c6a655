"""Reading raw corpora document by document, and tokenizing them in order on N processes.

Input formats (`detect_format` picks one per file when asked for "auto"):

* `jsonl`: one JSON object per line (Megatron's input, WikiExtractor `--json`); the document is
  the value of a key such as "text". Chosen for names ending in `.json`/`.jsonl`, or when the
  first non-blank line starts with `{`.
* `wikiextractor`: WikiExtractor's plain output, `<doc id=... title=...>` ... `</doc>` blocks.
  The title line and blank lines are dropped (`bert_data.wiki_preprocess.iter_documents`); the
  paragraphs are joined by newlines. Chosen when the first non-blank line starts with `<doc`.
* `text`: plain text, documents separated by one or more blank lines; a document's lines are
  kept as written, joined by newlines (no trailing newline). Everything else.

Each document comes with its place, `file:line` (the line where it starts; for WikiExtractor
blocks, the `</doc>` line), for error messages.
"""

import glob
import json
import multiprocessing
import os
import sys

from tqdm import tqdm

from bert_data.wiki_preprocess import iter_documents
from common.cli import parse_tool_args
from common.errors import UserError

FORMATS = ("jsonl", "text", "wikiextractor")


def expand_inputs(patterns, flag="--input"):
    """Sorted, de-duplicated files matching comma-separated globs (str) or a list of them.

    Raises:
      UserError: a pattern matching no file, named with `flag`.
    """
    if isinstance(patterns, str):
        patterns = patterns.split(",")
    files = []
    for pattern in (p.strip() for p in patterns):
        if not pattern:
            continue
        matched = sorted(f for f in glob.glob(pattern) if os.path.isfile(f))
        if not matched:
            raise UserError(f"{flag} {pattern} matches no file")
        files.extend(f for f in matched if f not in files)
    if not files:
        raise UserError(f"{flag} is empty; give a file or a glob")
    return files


def detect_format(path):
    """'jsonl', 'wikiextractor' or 'text' for `path` (see the module docstring)."""
    if path.endswith((".json", ".jsonl")):
        return "jsonl"
    try:
        with open(path, "rb") as f:
            for line in f:
                if line.strip():
                    if line.lstrip().startswith(b"{"):
                        return "jsonl"
                    return "wikiextractor" if line.lstrip().startswith(b"<doc") else "text"
    except OSError as err:
        raise UserError(f"cannot read {path}: {err.strerror}") from None
    return "text"


class _Lines:
    """Decoded lines of a file with the current 1-based line number and bytes read so far."""

    def __init__(self, path, progress):
        self.path, self.progress, self.number = path, progress, 0

    def __iter__(self):
        try:
            with open(self.path, "rb") as f:
                for raw in f:
                    self.number += 1
                    if self.progress is not None:
                        self.progress.update(len(raw))
                    try:
                        yield raw.decode("utf-8")
                    except UnicodeDecodeError as err:
                        raise UserError(f"{self.place}: not UTF-8 ({err.reason})") from None
        except OSError as err:
            raise UserError(f"cannot read {self.path}: {err.strerror}") from None

    @property
    def place(self):
        return f"{self.path}:{self.number}"


def read_documents(path, fmt, progress=None):
    """Yields (place "file:line", payload) per document of `path` in format `fmt`.

    The payload is the raw JSON line (str) for `jsonl`, parsed later by `document_texts` in the
    workers; the document text for the other formats. `progress.update(n_bytes)` is called as
    lines are read.
    """
    lines = _Lines(path, progress)
    if fmt == "jsonl":
        for line in lines:
            if line.strip():
                yield lines.place, line
    elif fmt == "wikiextractor":
        for paragraphs in iter_documents(lines):
            yield lines.place, "\n".join(paragraphs)
    else:
        block, start = [], None
        for line in lines:
            if line.strip():
                start = start or lines.place
                block.append(line.rstrip("\r\n"))
            elif block:
                yield start, "\n".join(block)
                block, start = [], None
        if block:
            yield start, "\n".join(block)


def document_texts(place, payload, fmt, keys):
    """[text per key] of one document: the JSON line's `keys` for jsonl, else [payload].

    Raises:
      UserError: a line that is not a JSON object, or lacks a key or has a non-string value.
    """
    if fmt != "jsonl":
        return [payload]
    try:
        record = json.loads(payload)
    except json.JSONDecodeError as err:
        raise UserError(f"{place}: not valid JSON ({err.msg} at column {err.colno})") from None
    if not isinstance(record, dict):
        raise UserError(f"{place}: expected a JSON object, got {type(record).__name__}")
    texts = []
    for key in keys:
        if not isinstance(record.get(key), str):
            got = "no such key" if key not in record else type(record[key]).__name__
            raise UserError(f"{place}: key {key!r} must hold a string ({got}); see --json-keys")
        texts.append(record[key])
    return texts


def ordered_map(func, items, workers, initializer=None, initargs=(), chunk_size=25):
    """Yields func(item) for each item, in input order, on `workers` processes.

    Items are taken `workers * chunk_size * 4` at a time, so memory stays bounded however long
    the input is, and the output does not depend on `workers`. With one worker everything runs
    here (after `initializer(*initargs)`). A UserError raised by `func` reaches the caller.
    """
    if workers <= 1:
        if initializer is not None:
            initializer(*initargs)
        yield from map(func, items)
        return
    batch_size = workers * chunk_size * 4
    with multiprocessing.Pool(workers, initializer, initargs) as pool:
        batch = []
        for item in items:
            batch.append(item)
            if len(batch) == batch_size:
                yield from pool.imap(func, batch, chunk_size)
                batch = []
        if batch:
            yield from pool.imap(func, batch, chunk_size)


def check_positive(**flags):
    """UserError naming the first flag (given as key=value, e.g. workers=0) whose value is < 1."""
    for key, value in flags.items():
        if value < 1:
            raise UserError(f"--{key.replace('_', '-')} must be at least 1, got {value}")


def byte_progress(files, desc):
    """A tqdm bar over the bytes of `files`, on stderr, hidden when stderr is not a terminal."""
    total = sum(map(os.path.getsize, files))
    return tqdm(total=total, unit="B", unit_scale=True, desc=desc, file=sys.stderr, disable=None)


def tool_args(options, argv, module, description):
    """The namespace of a gpt2_data tool's command line (`python3 -m gpt2_data.<module>`)."""
    return parse_tool_args(
        options, argv, prog=f"python3 -m gpt2_data.{module}", description=description
    )

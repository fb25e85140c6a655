#!/usr/bin/env python3
"""Joins the parts of a sharded create_pretraining_data.py run into the single run's bytes.

    # on machine K of N (same input, flags and vocab everywhere)
    python3 bert_data/create_pretraining_data.py ... --output-file a.tfrecord,b.tfrecord \
        --shard-index K --num-shards N
    # once all parts are in one place
    python3 -m bert_data.merge_shards --output-file a.tfrecord,b.tfrecord

Shard K wrote `OUTPUT.part-K-of-N` for each output, its records dealt round-robin over the outputs
starting from the first. In the single run, its first record goes to output R mod S (R = records of
the shards before it, S = outputs), so output j is the concatenation, over K, of shard K's part of
output (j - R_K) mod S. Records are counted from the parts' length fields. The parts'
fingerprints must agree; the merged outputs get the same one. The parts are left in place (they
are valid TFRecord files; training can also read them directly).
"""

import os
import sys

if __package__ in (None, ""):  # run as a file: import from the repository root, not bert_data/
    sys.path[0] = os.path.dirname(os.path.abspath(sys.path[0]))

from bert_data.records import count_records
from common import fingerprint
from common.cli import Option, parse_tool_args
from common.errors import UserError, cli_main
from common.fileio import atomic_outputs, ensure_output_dir
from common.shards import find_parts

CLI_OPTIONS = [
    Option("output_file", "str", None, "the --output-file of the sharded runs (comma-separated)",
           required=True, metavar="FILE"),
]  # fmt: skip


def part_table(outputs):
    """parts[j][k]: the part of output j written by shard k (one-line errors for missing parts)."""
    parts = [find_parts(path) for path in outputs]
    counts = {len(p) for p in parts}
    if len(counts) > 1:
        raise UserError(f"the outputs {', '.join(outputs)} have parts of different --num-shards")
    return parts


def merge(outputs):
    """Writes each output from its parts (atomically); returns the records per output."""
    parts = part_table(outputs)
    num_outputs, num_shards = len(outputs), len(parts[0])
    try:
        records = [
            [count_records(parts[j][k]) for k in range(num_shards)] for j in range(num_outputs)
        ]
    except ValueError as err:
        raise UserError(f"cannot merge: {err}") from None
    stamp = fingerprint.agreed([p for row in parts for p in row])
    paths = list(outputs) + ([fingerprint.path_of(p) for p in outputs] if stamp else [])
    for path in outputs:
        ensure_output_dir(path)
    totals = [0] * num_outputs
    with atomic_outputs(paths) as handles:
        before = 0  # records of the shards before shard k
        for k in range(num_shards):
            for j in range(num_outputs):
                source = (j - before) % num_outputs
                with open(parts[source][k], "rb") as f:
                    while block := f.read(1 << 22):
                        handles[j].write(block)
                totals[j] += records[source][k]
            before += sum(records[j][k] for j in range(num_outputs))
        if stamp:
            for handle in handles[num_outputs:]:
                handle.write(fingerprint.text(stamp).encode())
    return totals


@cli_main
def main(argv=None):
    args = parse_tool_args(
        CLI_OPTIONS,
        argv,
        prog="python3 -m bert_data.merge_shards",
        description=__doc__.split("\n\n")[0],
    )
    outputs = [p.strip() for p in args.output_file.split(",") if p.strip()]
    if not outputs:
        raise UserError("no output file given (--output-file)")
    totals = merge(outputs)
    for path, count in zip(outputs, totals):
        print(f"wrote {path}: {count} records")


if __name__ == "__main__":
    main()

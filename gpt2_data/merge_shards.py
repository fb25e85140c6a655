#!/usr/bin/env python3
"""Joins the parts of a sharded preprocess_data.py run into the single run's `.bin/.idx` bytes.

    # on machine K of N (same input, flags, vocab and merges everywhere)
    python3 -m gpt2_data.preprocess_data --input docs.json --output-prefix P --vocab-file V \
        --merge-file M --append-eod --shard-index K --num-shards N
    # once all parts are in one place
    python3 -m gpt2_data.merge_shards --output-prefix P

Shard K tokenized input documents K, K+N, K+2N, ... into `P_<key>_document.part-K-of-N.bin/.idx`,
empty documents included as empty sequences. The merge takes the documents back in input order
(document i is sequence i // N of part i mod N), drops the empty ones as Megatron does, and writes
`P_<key>_document.bin/.idx` and the parts' common fingerprint. The parts are left in place.
"""

import os
import sys

if __package__ in (None, ""):  # run as a file: import from the repository root
    sys.path[0] = os.path.dirname(os.path.abspath(sys.path[0]))

import numpy as np

from common import fingerprint
from common.cli import Option
from common.errors import UserError, cli_main
from common.fileio import atomic_outputs, ensure_output_dir
from common.shards import find_parts
from gpt2_data import corpus, megatron

CLI_OPTIONS = [
    Option("output_prefix", "str", None, "The --output-prefix of the sharded runs.", required=True,
           metavar="PREFIX"),
    Option("json_keys", "str", ["text"], "The --json-keys of the sharded runs.", nargs="+",
           metavar="KEY"),
]  # fmt: skip


def merge(prefix):
    """Writes `prefix.bin/.idx` (and fingerprint) from its parts; returns (documents, tokens)."""
    parts = find_parts(prefix, ".bin")
    data = [megatron.IndexedDataset(p) for p in parts]
    num_shards, dtypes = len(parts), {d.dtype for d in data}
    if len(dtypes) > 1:
        raise UserError(
            f"the parts of {prefix} have different token dtypes: {sorted(map(str, dtypes))}"
        )
    total = sum(len(d) for d in data)
    for k, part in enumerate(data):  # shard k holds documents k, k + N, ...
        expected = len(range(k, total, num_shards))
        if len(part) != expected:
            raise UserError(
                f"{parts[k]}.idx has {len(part)} documents but shard {k} of {num_shards} should "
                f"have {expected} (of {total}): were all parts made from the same input?"
            )
    stamp = fingerprint.agreed(parts)
    paths = [f"{prefix}.bin", f"{prefix}.idx"] + ([fingerprint.path_of(prefix)] if stamp else [])
    ensure_output_dir(prefix)
    tokens = 0
    with atomic_outputs(paths) as handles:
        writer = megatron.IndexWriter(handles[0], handles[1], data[0].dtype.newbyteorder("="))
        for i in range(total):
            ids = data[i % num_shards][i // num_shards]
            if ids.size:  # Megatron skips empty documents
                writer.add(np.asarray(ids), name=f"document {i}")
                tokens += ids.size
        documents = writer.finish()
        if stamp:
            handles[2].write(fingerprint.text(stamp).encode())
    return documents, tokens


@cli_main
def main(argv=None):
    description = "Join the parts of a sharded preprocess_data.py run into one .bin/.idx pair."
    args = corpus.tool_args(CLI_OPTIONS, argv, "merge_shards", description)
    for key in dict.fromkeys(args.json_keys):
        prefix = f"{args.output_prefix}_{key}_document"
        documents, tokens = merge(prefix)
        print(f"wrote {prefix}.bin/.idx: {documents} documents, {tokens} tokens")


if __name__ == "__main__":
    main()

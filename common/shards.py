"""Building one data set on several machines: the `--shard-index K --num-shards N` flags, the names
of the parts each machine writes, and finding them again to merge.

Shard K of N writes `<output>.part-K-of-N` for every output `<output>` of the single run (the data
tools decide which share of the work is theirs); a merge step turns the N parts back into the
single run's bytes.
"""

import os
import re

from common.errors import UserError

_PART = re.compile(r"\.part-(\d+)-of-(\d+)$")


def check_shard(index, count):
    """Checks `--shard-index` / `--num-shards` (0 <= index < count); one-line UserError otherwise."""
    if count < 1:
        raise UserError(f"--num-shards {count} must be at least 1")
    if not 0 <= index < count:
        raise UserError(
            f"--shard-index {index} is out of range for --num-shards {count}: use 0 to {count - 1}"
        )


def part_path(path, index, count):
    """The file shard `index` of `count` writes in place of `path` (`path` itself for one shard)."""
    return path if count == 1 else f"{path}.part-{index}-of-{count}"


def contiguous_share(total, index, count):
    """range of the items of shard `index` when `total` ordered items are cut into `count` runs
    as equal as possible (earlier shards are never smaller)."""
    return range(index * total // count, (index + 1) * total // count)


def find_parts(path, suffix=""):
    """The parts written for `path` by a sharded run, in shard order.

    Args:
      path: an output of the single run (for a Megatron corpus, its prefix).
      suffix: the part files' ending after the part number (".bin" for a Megatron prefix).
    Returns:
      list of N paths `path.part-K-of-N`, K = 0..N-1 (without `suffix`).
    Raises:
      UserError: no parts, parts of two different N, or a missing part (named).
    """
    directory = os.path.dirname(os.path.abspath(path))
    base = os.path.basename(path)
    counts = {}
    for name in os.listdir(directory) if os.path.isdir(directory) else ():
        if not name.endswith(suffix):
            continue
        match = _PART.search(name[: len(name) - len(suffix)])
        if match and name[: match.start()] == base:
            counts.setdefault(int(match.group(2)), set()).add(int(match.group(1)))
    if not counts:
        raise UserError(f"no parts found for {path} (expected {path}.part-K-of-N{suffix} files)")
    if len(counts) > 1:
        found = ", ".join(f"of-{n}" for n in sorted(counts))
        raise UserError(f"parts of {path} from runs with different --num-shards ({found})")
    ((count, indices),) = counts.items()
    missing = [k for k in range(count) if k not in indices]
    if missing:
        first = part_path(path, missing[0], count) + suffix
        raise UserError(f"missing part {first}: run shard {missing[0]}")
    return [part_path(path, k, count) for k in range(count)]

"""Sequence packing without cross-contamination (Krell et al. 2021, arXiv 2107.02027).

Several short pretraining instances share one row of `sequence_length` tokens; `sequence_ids` and
`positions` (records.py, "packed layout") let the model keep them apart: attention only within a
sequence, positions restarting at 0, one NSP prediction per sequence.

The packing works on the histogram of sequence lengths, not on the sequences: lengths are taken
from the longest to the shortest, and every length goes into an open pack (fewer than
`max_per_pack` sequences, space left) chosen by one of two rules:
  * "spfhp", the paper's shortest-pack-first histogram packing: the pack with the most space left
    (worst fit);
  * "best-fit": the pack with the least space left that still fits.
Ties go to the pack changed last; a length that fits nowhere opens a new pack. Packs with the
same contents and the same space left are one group (count, lengths), so the work is
proportional to the number of distinct packs, not to the number of sequences, and the result is
the one a sequence-by-sequence loop with the same rule gives (tests/test_packing_data.py).
"""

import bisect
import time

import numpy as np

from common.errors import UserError

ALGORITHMS = ("spfhp", "best-fit")


def pack_histogram(histogram, max_length, max_per_pack, algorithm="spfhp"):
    """Packs of a histogram of sequence lengths.

    Args:
      histogram: ints [max_length + 1], histogram[l] = number of sequences of length l
        (histogram[0] is ignored).
      max_length: tokens in a pack.
      max_per_pack: most sequences in a pack.
      algorithm: one of ALGORITHMS.
    Returns:
      list of (count, lengths): `count` packs holding sequences of these lengths (a tuple, longest
      first); every sequence of the histogram is in exactly one pack.
    """
    best = algorithm == "best-fit"
    stacks = [[] for _ in range(max_length)]  # stacks[space]: open groups (count, lengths)
    spaces = []  # sorted spaces whose stack is not empty
    done = []

    def push(count, lengths, space):
        if count <= 0:
            return
        if space == 0 or len(lengths) == max_per_pack:
            done.append((count, lengths))
            return
        if not stacks[space]:
            bisect.insort(spaces, space)
        stacks[space].append((count, lengths))

    for length in range(max_length, 0, -1):
        n = int(histogram[length])
        while n:
            if best:
                at = bisect.bisect_left(spaces, length)
                space = spaces[at] if at < len(spaces) else None
            else:
                space = spaces[-1] if spaces and spaces[-1] >= length else None
            if space is None:  # fits nowhere: new packs (count unbounded)
                count, lengths, space = n, (), max_length
            else:
                count, lengths = stacks[space].pop()
                if not stacks[space]:
                    spaces.remove(space)
            # Copies of `length` a pack takes before another pack is chosen: a new pack, or the
            # best fit, keeps being the choice while the length still fits in it; with the
            # worst fit an existing pack's siblings (same space) come first.
            fill = min(space // length, max_per_pack - len(lengths))
            if lengths and not best:
                fill = 1
            full = min(count, n // fill)  # packs taking `fill` copies
            part = n - full * fill if full < count else 0  # one more pack takes the rest
            rest = count - full - (part > 0)
            if lengths:  # the untouched packs of the group stay where they were, last
                push(rest, lengths, space)
            push(full, lengths + (length,) * fill, space - fill * length)
            push(int(part > 0), lengths + (length,) * part, space - part * length)
            n -= full * fill + part
    for space in spaces:
        done += stacks[space]
    return done


def pack(lengths, max_length, max_per_pack, algorithm="spfhp"):
    """Which sequences go together: the packing of `pack_histogram`, realised.

    Sequences of equal length fill that length's slots in index order, so the result depends only
    on the inputs.

    Args:
      lengths: ints [n], each in 1..max_length.
    Returns:
      int64 [packs, max_per_pack]: indices into `lengths`, longest sequence first, -1 for an empty
      slot; in the order of `pack_histogram`'s groups.
    """
    lengths = np.asarray(lengths, np.int64)
    histogram = np.bincount(lengths, minlength=max_length + 1)
    groups = pack_histogram(histogram, max_length, max_per_pack, algorithm)
    counts = np.array([c for c, _ in groups], np.int64)
    table = np.zeros((len(groups), max_per_pack), np.int64)  # each group's lengths, 0 = empty
    for row, (_, group) in zip(table, groups):
        row[: len(group)] = group
    slot_length = np.repeat(table, counts, axis=0).ravel()  # [packs * max_per_pack]
    used = np.flatnonzero(slot_length)
    members = np.full(slot_length.shape, -1, np.int64)
    # Both sorted by length (stably): the k-th slot of length l gets the k-th sequence of length l.
    by_length = np.argsort(slot_length[used], kind="stable")
    members[used[by_length]] = np.argsort(lengths, kind="stable")
    return members.reshape(-1, max_per_pack)


def packed_features(features, members, is_random):
    """Standard-layout instances -> packed rows (records.py, "packed layout").

    Args:
      features: {name: array [n, width]} of the standard layout (records.STANDARD_FEATURES
        without next_sentence_labels): input_ids, input_mask, segment_ids [n, seq];
        masked_lm_positions, masked_lm_ids, masked_lm_weights [n, mask_tokens], the real
        predictions first.
      members: int [packs, K] from `pack` (-1 = empty slot).
      is_random: bool [n], the NSP labels.
    Returns:
      list of (feature name, values [packs, width], None), in records.PACKED_FEATURES order.
    """
    rows, K = members.shape
    seq = features["input_ids"].shape[1]
    P = features["masked_lm_ids"].shape[1]
    used = members >= 0
    row, slot = np.nonzero(used)  # one entry per packed sequence, row by row
    order = members[used]  # the instances in that order
    lengths = features["input_mask"].sum(axis=1)[order]  # real tokens: a prefix of each instance
    preds = (features["masked_lm_weights"] > 0).sum(axis=1)[order]  # also a prefix
    slot_len = np.zeros((rows, K), np.int64)
    slot_len[used] = lengths
    offsets = np.cumsum(slot_len, axis=1) - slot_len  # [packs, K] first token of each sequence

    def concatenation(count, width, row_width):
        """Each row's items back to back: the first count[i] of the `width` items of packed
        sequence i. Returns (index of each item within its sequence, its flat index in the
        [n, width] instance matrix, where the items go: bool [packs, row_width])."""
        first = np.cumsum(count) - count
        within = np.arange(int(count.sum())) - np.repeat(first, count)
        source = np.repeat(order * width, count) + within
        in_row = np.bincount(row, weights=count, minlength=rows)
        return within, source, np.arange(row_width) < in_row[:, None]

    def place(values, where):
        out = np.zeros(where.shape, values.dtype)
        out[where] = values
        return out

    within, source, token = concatenation(lengths, seq, seq)
    ids, segments = (features[k].ravel()[source] for k in ("input_ids", "segment_ids"))
    _, p_source, lm = concatenation(preds, P, K * P)
    lm_positions = features["masked_lm_positions"].ravel()[p_source] + np.repeat(
        offsets[row, slot], preds
    )
    lm_ids = features["masked_lm_ids"].ravel()[p_source]
    return [
        ("input_ids", place(ids, token), None),
        ("input_mask", token, None),
        ("segment_ids", place(segments, token), None),
        ("sequence_ids", place(np.repeat(slot + 1, lengths), token), None),
        ("positions", place(within, token), None),
        ("masked_lm_positions", place(lm_positions, lm), None),
        ("masked_lm_ids", place(lm_ids, lm), None),
        ("masked_lm_weights", lm.astype(np.float32), None),
        ("masked_lm_sequence_ids", place(np.repeat(slot + 1, preds), lm), None),
        ("next_sentence_labels", np.where(used, is_random[np.maximum(members, 0)], 0), None),
        ("next_sentence_weights", used.astype(np.float32), None),
        ("cls_positions", np.where(used, offsets, 0), None),
    ]


# ----------------------------------------------------------------------------- the data tool's side


def pack_chunk(features, cfg, gen, stats):
    """The chunk's instances packed into rows (create_pretraining_data's chunks), the rows in random order.

    The packing uses no random numbers before the rows' order: the instances are those of the
    unpacked run. Returns (packed features, number of rows)."""
    started = time.perf_counter()
    by_name = {name: values for name, values, _ in features}
    members = pack(
        by_name["input_mask"].sum(axis=1),
        cfg["sequence_length"],
        cfg["max_sequences_per_pack"],
        cfg["packing_algorithm"],
    )
    members = members[gen.permutation(len(members))]
    packed = packed_features(by_name, members, by_name["next_sentence_labels"][:, 0])
    stats["packs"] = len(members)
    stats["packing_seconds"] = time.perf_counter() - started
    return packed, len(members)


def check_args(args):
    """create_pretraining_data's packing flags: one UserError line when they do not fit together."""
    if not args.packing:
        for key in ("max_sequences_per_pack", "packing_algorithm"):
            if getattr(args, key) is not None:
                flag = f"--{key.replace('_', '-')}"
                raise UserError(f"{flag} applies to packed data only: add --packing or drop {flag}")
        return
    if args.remask:
        raise UserError(
            "--packing writes the packed layout, --remask the static-mask one: choose one"
        )
    if args.max_samples >= 0:
        raise UserError(
            "--max-samples counts unpacked instances: not with --packing (use a smaller input)"
        )
    if args.max_sequences_per_pack is not None and args.max_sequences_per_pack < 1:
        raise UserError(
            f"--max-sequences-per-pack {args.max_sequences_per_pack} must be at least 1"
        )


def format_stats(stats, seq, sequences_per_pack):
    """The data tool's packing statistics (rows, sequences per row, real-token fraction, time)."""
    inst, rows = max(stats["instances"], 1), max(stats["packs"], 1)
    build = max(stats["build_seconds"], 1e-9)
    return "\n".join(
        [
            f"packed rows: {stats['packs']} from {stats['instances']} instances "
            f"(mean {stats['instances'] / rows:.2f} sequences per row, at most {sequences_per_pack})",
            f"real-token fraction unpacked -> packed: {stats['real_tokens'] / (inst * seq):.4f} -> "
            f"{stats['real_tokens'] / (rows * seq):.4f}",
            f"packing seconds: {stats['packing_seconds']:.2f} of {build:.2f} spent building chunks "
            f"({stats['packing_seconds'] / build:.1%})",
        ]
    )

"""Packed pretraining data (create_pretraining_data.py --packing): the packing algorithm against a
sequence-by-sequence reference, the packed layout against the unpacked run, shards, inspect, errors.
"""

import collections
import subprocess
import sys

import numpy as np
import pytest

from bert_data import create_pretraining_data as cpd
from bert_data import packing
from bert_data.records import (
    PACKED_FEATURES,
    feature_lengths,
    parse_example,
    read_records,
    to_standard,
    unpack,
)
from common import fingerprint
from tests.test_create_pretraining_data import ROOT, SAMPLE, generate, run_cli


def reference_pack(lengths, max_length, max_per_pack, algorithm):
    """Sequence by sequence, longest first: into the open pack with the most (spfhp) or the least
    (best-fit) space left that fits, ties to the pack changed last; else a new pack.
    Returns the sorted list of packs (tuples of lengths)."""
    packs = []  # [space left, last changed, lengths]
    for step, length in enumerate(sorted(lengths, reverse=True)):
        fits = [p for p in packs if p[0] >= length and len(p[2]) < max_per_pack]
        if fits:
            sign = 1 if algorithm == "best-fit" else -1
            chosen = min(fits, key=lambda p: (sign * p[0], -p[1]))
        else:
            chosen = [max_length, 0, []]
            packs.append(chosen)
        chosen[0] -= length
        chosen[1] = step
        chosen[2].append(length)
    return sorted(tuple(p[2]) for p in packs)


def histogram_packs(lengths, max_length, max_per_pack, algorithm):
    histogram = np.bincount(lengths, minlength=max_length + 1)
    groups = packing.pack_histogram(histogram, max_length, max_per_pack, algorithm)
    return sorted(group for count, group in groups for _ in range(count))


@pytest.mark.parametrize(
    "lengths, max_length, max_per_pack, spfhp, best_fit",
    [
        # The two rules differ: 3 goes into the emptier pack [5] (spfhp) or fills [7] (best fit).
        ([7, 5, 3, 2], 10, 3, [(5, 3), (7, 2)], [(5, 2), (7, 3)]),
        ([6, 4, 4, 3, 3, 2], 10, 3, [(2,), (4, 3, 3), (6, 4)], [(2,), (4, 3, 3), (6, 4)]),
        ([1] * 5, 10, 2, [(1,), (1, 1), (1, 1)], [(1,), (1, 1), (1, 1)]),  # the count limit
        # A new pack takes further copies of its length while they fit.
        ([30] * 4, 128, 3, [(30,), (30, 30, 30)], [(30,), (30, 30, 30)]),
        ([128, 128, 127, 1, 1], 128, 3, [(1,), (127, 1), (128,), (128,)], [(1,), (127, 1), (128,), (128,)]),
    ],
)  # fmt: skip
def test_crafted_histograms(lengths, max_length, max_per_pack, spfhp, best_fit):
    for algorithm, expected in (("spfhp", spfhp), ("best-fit", best_fit)):
        args = (lengths, max_length, max_per_pack, algorithm)
        assert histogram_packs(*args) == reference_pack(*args) == sorted(expected), algorithm


@pytest.mark.parametrize("algorithm", packing.ALGORITHMS)
def test_random_histograms_match_the_reference(algorithm):
    rng = np.random.default_rng(5)
    for trial in range(400):
        max_length, max_per_pack = int(rng.integers(4, 40)), int(rng.integers(1, 5))
        n = int(rng.integers(1, 80))
        if trial % 2:  # uniform lengths, or mostly short ones
            lengths = rng.integers(1, max_length + 1, n)
        else:
            lengths = np.minimum(max_length, rng.geometric(0.15, n))
        args = (lengths.tolist(), max_length, max_per_pack, algorithm)
        assert histogram_packs(*args) == reference_pack(*args), args


@pytest.mark.parametrize("algorithm", packing.ALGORITHMS)
def test_packs_respect_the_limits_and_use_every_sequence_once(algorithm):
    rng = np.random.default_rng(9)
    for max_length, max_per_pack in ((128, 3), (384, 2), (37, 5)):
        lengths = np.minimum(max_length, rng.geometric(8 / max_length, 5000))
        members = packing.pack(lengths, max_length, max_per_pack, algorithm)
        assert members.shape[1] == max_per_pack
        used = members >= 0
        assert sorted(members[used].tolist()) == list(range(len(lengths)))
        totals = np.where(used, lengths[np.maximum(members, 0)], 0).sum(axis=1)
        assert (totals <= max_length).all() and used.any(axis=1).all()
        assert (used[:, :-1] | ~used[:, 1:]).all()  # the sequences of a row come first
        again = packing.pack(lengths.copy(), max_length, max_per_pack, algorithm)
        assert np.array_equal(members, again)
        # Not many more rows than the tokens or the count limit need (a loose lower bound).
        need = max(np.ceil(lengths.sum() / max_length), np.ceil(len(lengths) / max_per_pack))
        assert need <= len(members) <= 1.1 * need


def _instance_key(std):
    """An instance as plain tuples: tokens, segments, masked positions and ids, NSP label."""
    n = int(std["input_mask"].sum())
    w = std["masked_lm_weights"] > 0
    return (
        tuple(std["input_ids"][:n].tolist()),
        tuple(std["segment_ids"][:n].tolist()),
        tuple(std["masked_lm_positions"][w].tolist()),
        tuple(std["masked_lm_ids"][w].tolist()),
        int(std["next_sentence_labels"][0]),
    )


def _check_row(ex, seq, P, K, cls_id):
    """The packed layout's own invariants (records.py docstring) for one parsed row."""
    a = {k: np.asarray(v) for k, v in ex.items()}
    assert set(a) == set(PACKED_FEATURES)
    assert {k: len(v) for k, v in a.items()} == feature_lengths(seq, P, False, K)
    k = int(a["next_sentence_weights"].sum())
    assert 1 <= k <= K and (a["next_sentence_weights"][:k] == 1).all()
    sid = a["sequence_ids"]
    assert np.array_equal(a["input_mask"], sid > 0)
    n = int((sid > 0).sum())
    assert (sid[:n] > 0).all() and (np.diff(sid[:n]) >= 0).all() and sid.max() == k
    for i in range(1, k + 1):
        where = np.flatnonzero(sid == i)
        assert where[0] == a["cls_positions"][i - 1] and a["input_ids"][where[0]] == cls_id
        assert np.array_equal(a["positions"][where], np.arange(len(where)))
        preds = a["masked_lm_positions"][a["masked_lm_sequence_ids"] == i]
        assert (sid[preds] == i).all() and len(preds) <= P
    assert (a["positions"][n:] == 0).all() and (a["input_ids"][n:] == 0).all()
    used = int(a["masked_lm_weights"].sum())
    assert (a["masked_lm_sequence_ids"][:used] > 0).all()
    assert (a["masked_lm_sequence_ids"][used:] == 0).all()
    assert (np.diff(a["masked_lm_positions"][:used]) > 0).all()


@pytest.mark.parametrize("algorithm", packing.ALGORITHMS)
def test_packed_rows_unpack_to_the_unpacked_instances(tmp_path, sample_vocab, algorithm):
    extra = ["--duplication-factor", "3", "--seed", "11", "--sequence-length", "160",
             "--mask-tokens", "14", "--short-seq-prob", "0.5"]  # fmt: skip
    plain, plain_stats = generate(tmp_path, SAMPLE, "plain.tfrecord", sample_vocab, extra)
    packed_flags = ["--packing", "--max-sequences-per-pack", "4", "--packing-algorithm", algorithm]
    packed, stats = generate(
        tmp_path, SAMPLE, "packed.tfrecord", sample_vocab, extra + packed_flags
    )
    instances = [to_standard(parse_example(r)) for r in read_records(plain)]
    rows = [parse_example(r) for r in read_records(packed)]
    cls_id = instances[0]["input_ids"][0]
    for ex in rows:
        _check_row(ex, 160, 14, 4, cls_id)
    unpacked = [std for ex in rows for std in unpack(ex)]
    assert collections.Counter(map(_instance_key, unpacked)) == collections.Counter(
        map(_instance_key, instances)
    )
    assert stats["instances"] == plain_stats["instances"] == len(instances)
    assert stats["packs"] == len(rows) < 0.8 * len(instances)
    assert max(len(unpack(ex)) for ex in rows) > 2


def test_packed_bytes_do_not_depend_on_workers_and_shards_merge(tmp_path, sample_vocab):
    """Same seed -> same bytes for 1 or 2 workers; the merged parts of 2 shards are the single
    run's bytes (rows are packed within a chunk, and chunks are the single run's)."""
    from bert_data import merge_shards

    outputs = {}
    for name, flags in (("w1", ["--num-workers", "1"]), ("w2", ["--num-workers", "2"])):
        (tmp_path / name).mkdir()
        result = run_cli(*_argv(tmp_path / name, sample_vocab), *flags)
        assert result.returncode == 0, result.stderr
        outputs[name] = [(tmp_path / name / o).read_bytes() for o in ("a.tfrecord", "b.tfrecord")]
    assert outputs["w1"] == outputs["w2"] and all(outputs["w1"])
    (tmp_path / "parts").mkdir()
    rows = []
    for k in range(2):
        flags = ["--shard-index", str(k), "--num-shards", "2"]
        argv = _argv(tmp_path / "parts", sample_vocab, *flags)
        rows.append(cpd.run(cpd.build_parser().parse_args(argv))["packs"])
    assert rows[0] % 2  # shard 1's rows start on the second output: the rotation is exercised
    merge_shards.main(["--output-file", f"{tmp_path}/parts/a.tfrecord,{tmp_path}/parts/b.tfrecord"])
    for index, name in enumerate(("a.tfrecord", "b.tfrecord")):
        assert (tmp_path / "parts" / name).read_bytes() == outputs["w1"][index]
        stamp = (tmp_path / "parts" / (name + ".fingerprint.json")).read_text()
        assert stamp == (tmp_path / "w1" / (name + ".fingerprint.json")).read_text()


def _argv(directory, vocab, *extra):
    return ["--input-file", SAMPLE, "--vocab-file", vocab, "--do-lower-case", "--quiet",
            "--output-file", f"{directory}/a.tfrecord,{directory}/b.tfrecord",
            "--chunk-size-mb", "0.002", "--duplication-factor", "2", "--seed", "4", "--packing", *extra]  # fmt: skip


def test_fingerprint_summary_and_inspect_show_the_packing(tmp_path, sample_vocab):
    out = str(tmp_path / "p.tfrecord")
    result = run_cli("--input-file", SAMPLE, "--output-file", out, "--vocab-file", sample_vocab,
                     "--do-lower-case", "--duplication-factor", "2", "--packing",
                     "--max-sequences-per-pack", "2", "--short-seq-prob", "0.5")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "real-token fraction unpacked -> packed: " in result.stderr
    assert "packed rows: " in result.stderr and "packing seconds: " in result.stderr
    stamp = fingerprint.load(out)
    assert stamp["layout"] == "packed_sequences"
    assert stamp["packing"] == "spfhp" and stamp["max_sequences_per_pack"] == 2
    rows = [parse_example(r) for r in read_records(out)]
    sequences = sum(len(unpack(ex)) for ex in rows)
    shown = subprocess.run(
        [sys.executable, "-m", "bert_data.inspect_records", out, "--vocab-file", sample_vocab, "-n", "3"],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    assert "layout: packed" in shown.stdout and f"records: {len(rows)}" in shown.stdout
    assert f"packing: {sequences} sequences in {len(rows)} rows" in shown.stdout
    assert "real-token fraction unpacked -> packed: " in shown.stdout
    assert shown.stdout.count("--- ") == 3 and " sequence 1/" in shown.stdout
    # Training reads the packed layout (tests/test_packed_model.py): K from the records.
    from bert_data import pretraining

    assert pretraining.check_files([out], 128, 20, False, None)[1] == 2


def test_tensorflow_parses_the_packed_layout(tmp_path, sample_vocab):
    import tensorflow as tf

    from bert_data.records import parse_spec

    out, _ = generate(tmp_path, SAMPLE, "p.tfrecord", sample_vocab, ["--packing"])
    raw = list(read_records(out))
    parsed = tf.io.parse_example(tf.constant(raw), parse_spec(128, 20, False, 3))
    for name in PACKED_FEATURES:
        ours = np.array([parse_example(r)[name] for r in raw])
        np.testing.assert_array_equal(parsed[name].numpy(), ours, err_msg=name)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--packing", "--remask"], "--packing writes the packed layout, --remask the static-mask one"),
        (["--packing", "--max-samples", "5"], "--max-samples counts unpacked instances: not with --packing"),
        (["--max-sequences-per-pack", "2"], "--max-sequences-per-pack applies to packed data only"),
        (["--packing-algorithm", "best-fit"], "--packing-algorithm applies to packed data only"),
        (["--packing", "--max-sequences-per-pack", "0"], "--max-sequences-per-pack 0 must be at least 1"),
        (["--packing", "--packing-algorithm", "lpfhp"], "must be one of spfhp, best-fit"),
    ],
)  # fmt: skip
def test_bad_packing_flags_are_one_line(tmp_path, sample_vocab, flags, message):
    out = str(tmp_path / "o.tfrecord")
    result = run_cli("--input-file", SAMPLE, "--output-file", out, "--vocab-file", sample_vocab,
                     "--do-lower-case", *flags)  # fmt: skip
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert not list(tmp_path.glob("o.tfrecord*"))

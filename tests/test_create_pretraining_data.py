"""create_pretraining_data.py: statistics vs the Google algorithm, determinism, layouts, errors."""

import os
import struct
import subprocess
import sys

import numpy as np
import pytest

from bert_data import create_pretraining_data as cpd
from bert_data.records import parse_example, read_records, to_standard
from tests import google_reference as ref

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "..", "shared", "data")
VOCAB = os.path.join(DATA, "vocab", "bert-base-uncased", "vocab.txt")
WIKI = os.path.join(DATA, "wikitext-2", "wiki.valid.raw")
SAMPLE = os.path.join(ROOT, "bert_data", "sample.txt")
needs_data = pytest.mark.skipif(
    not os.path.isfile(WIKI), reason="../shared/data (WikiText-2, BERT vocab) is not present"
)
SCRIPT = os.path.join(ROOT, "bert_data", "create_pretraining_data.py")
SPECIALS = ("[CLS]", "[SEP]")


def _read_bytes(path):
    with open(path, "rb") as f:
        return f.read()


def run_cli(*args):
    """Runs the script as a user would (as a file); returns the CompletedProcess."""
    return subprocess.run(
        [sys.executable, SCRIPT, "--quiet", *args], capture_output=True, text=True, timeout=300
    )


def generate(tmp_path, inputs, name="out.tfrecord", vocab=VOCAB, extra=()):
    out = str(tmp_path / name)
    argv = ["--input-file", inputs, "--output-file", out, "--vocab-file", vocab, "--quiet"]
    stats = cpd.run(cpd.build_parser().parse_args([*argv, "--do-lower-case", *extra]))
    return out, stats


def records_of(path):
    return [to_standard(parse_example(r)) for r in read_records(path)]


@pytest.fixture
def small_vocab(sample_vocab):
    return sample_vocab


def _describe(instances):
    """Statistics of standard-layout records or google_reference Instances."""
    n = len(instances)
    if isinstance(instances[0], ref.Instance):
        real = [len(i.tokens) for i in instances]
        masked = [len(i.masked_lm_positions) for i in instances]
        rnd = [i.is_random_next for i in instances]
        shown = [i.tokens[p] for i in instances for p in i.masked_lm_positions]
        labels = [lab for i in instances for lab in i.masked_lm_labels]
        as_mask = sum(s == "[MASK]" for s in shown)
        kept = sum(s == lab for s, lab in zip(shown, labels))
    else:
        real = [int(r["input_mask"].sum()) for r in instances]
        masked = [int((r["masked_lm_weights"] > 0).sum()) for r in instances]
        rnd = [int(r["next_sentence_labels"][0]) for r in instances]
        as_mask = kept = 0
        for r in instances:
            w = r["masked_lm_weights"] > 0
            at = r["input_ids"][r["masked_lm_positions"]][w]
            as_mask += int((at == 103).sum())
            kept += int((at == r["masked_lm_ids"][w]).sum())
    total = sum(masked)
    return {
        "instances": n,
        "real": np.mean(real),
        "masked": np.mean(masked),
        "random_next": np.mean(rnd),
        "as_mask": as_mask / total,
        "kept": kept / total,
        "random": 1 - (as_mask + kept) / total,
    }


@needs_data
def test_statistics_match_google_algorithm(tmp_path):
    """The issue's tolerances: count ±3%, real and masked tokens ±2%, NSP ±0.02, 80/10/10 ±0.01."""
    out, _ = generate(tmp_path, WIKI, extra=["--duplication-factor", "3", "--num-workers", "2"])
    ours = _describe(records_of(out))
    tok = ref.ReferenceTokenizer(VOCAB, True)
    docs = ref.read_documents([WIKI], tok)
    theirs = _describe(ref.create_instances(docs, list(tok.vocab), 128, 20, 3, seed=7))
    assert abs(ours["instances"] / theirs["instances"] - 1) <= 0.03, (ours, theirs)
    assert abs(ours["real"] / theirs["real"] - 1) <= 0.02, (ours, theirs)
    assert abs(ours["masked"] / theirs["masked"] - 1) <= 0.02, (ours, theirs)
    assert abs(ours["random_next"] - theirs["random_next"]) <= 0.02, (ours, theirs)
    for key, target in (("as_mask", 0.8), ("kept", 0.1), ("random", 0.1)):
        assert abs(ours[key] - target) <= 0.01, (key, ours)
        assert abs(ours[key] - theirs[key]) <= 0.01, (key, ours, theirs)


@needs_data
def test_byte_identical_for_any_worker_count(tmp_path):
    outs = []
    for workers in (1, 2):
        shards = f"{tmp_path}/w{workers}_a.tfrecord,{tmp_path}/w{workers}_b.tfrecord"
        result = run_cli(
            "--input-file", WIKI, "--output-file", shards, "--vocab-file", VOCAB, "--do-lower-case",
            "--duplication-factor", "2", "--num-workers", str(workers), "--chunk-size-mb", "0.1",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        outs.append([_read_bytes(p) for p in shards.split(",")])
    assert outs[0] == outs[1]
    assert all(len(shard) > 0 for shard in outs[0])


def test_records_are_valid_bert_instances(tmp_path, small_vocab):
    out, stats = generate(
        tmp_path, SAMPLE, vocab=small_vocab, extra=["--duplication-factor", "2", "--seed", "3"]
    )
    recs = records_of(out)
    assert len(recs) == stats["instances"] > 20
    for r in recs:
        length = int(r["input_mask"].sum())
        ids = r["input_ids"]
        assert ids[0] == 2 and ids[length - 1] == 3  # [CLS] ... [SEP] in the sample vocab
        assert (ids[length:] == 0).all() and (r["input_mask"][:length] == 1).all()
        original = ids.copy()  # random replacements may be special ids: look at the originals
        w0 = r["masked_lm_weights"] > 0
        original[r["masked_lm_positions"][w0]] = r["masked_lm_ids"][w0]
        seps = np.flatnonzero(original[:length] == 3)
        assert len(seps) == 2 and seps[1] == length - 1
        # Segment ids: 0 up to and including the first [SEP], then 1 up to the last one.
        assert (r["segment_ids"][: seps[0] + 1] == 0).all()
        assert (r["segment_ids"][seps[0] + 1 : length] == 1).all()
        w = r["masked_lm_weights"] > 0
        k = int(w.sum())
        assert w[:k].all() and not w[k:].any()  # real predictions first
        pos = r["masked_lm_positions"][:k]
        assert (np.diff(pos) > 0).all() and (pos > 0).all() and (pos < length).all()
        assert not np.isin(pos, seps).any()
        # Google's count rule plus the reference's floor, at seq 128 and 20 masks.
        expected = min(20, max(1, round(length * 0.15)))
        assert k == max(expected, length - 128 + 20)


def test_remask_layout_equals_standard_layout(tmp_path, small_vocab):
    """Same seed, two layouts: the remask records put back in order are the standard records."""
    std, _ = generate(tmp_path, SAMPLE, "s.tfrecord", small_vocab, ["--duplication-factor", "2"])
    rem, _ = generate(
        tmp_path, SAMPLE, "r.tfrecord", small_vocab, ["--duplication-factor", "2", "--remask"]
    )
    raw = [parse_example(r) for r in read_records(rem)]
    assert "input_position" in raw[0] and "input_mask" not in raw[0]
    for ex in raw:
        k = ex["mask_padding_index"][0]
        assert ex["input_position"][0:k] == ex["masked_lm_positions"]
        assert ex["input_position"][20] == 0  # [CLS] sits at slot mask_tokens
        assert ex["input_position"][k:20] == [384] * (20 - k)  # pad position value
    for a, b in zip(records_of(std), [to_standard(ex) for ex in raw], strict=True):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_tensorflow_reads_both_layouts(tmp_path, small_vocab):
    tf = pytest.importorskip("tensorflow")
    from bert_data.records import parse_spec

    for remask in (False, True):
        extra = ["--duplication-factor", "1"] + (["--remask"] if remask else [])
        out, stats = generate(tmp_path, SAMPLE, f"tf{remask}.tfrecord", small_vocab, extra)
        spec = parse_spec(128, 20, remask)
        parsed = [tf.io.parse_single_example(r, spec) for r in tf.data.TFRecordDataset(out)]
        assert len(parsed) == stats["instances"]
        ours = [parse_example(r) for r in read_records(out)]
        for t, o in zip(parsed, ours):
            for key, value in t.items():
                value = tf.sparse.to_dense(value) if isinstance(value, tf.SparseTensor) else value
                np.testing.assert_allclose(value.numpy(), o[key], err_msg=key)


def test_whole_word_masking_masks_whole_words(tmp_path, small_vocab):
    out, _ = generate(tmp_path, SAMPLE, vocab=small_vocab, extra=["--whole-word-masking"])
    with open(small_vocab, encoding="utf-8") as f:
        vocab = [line.strip() for line in f]
    continuation = 0
    for r in records_of(out):
        w = r["masked_lm_weights"] > 0
        masked = set(r["masked_lm_positions"][w].tolist())
        length = int(r["input_mask"].sum())
        original = r["input_ids"].copy()
        original[r["masked_lm_positions"][w]] = r["masked_lm_ids"][w]
        for p in range(1, length):
            # (a piece right after [CLS]/[SEP] starts a group: the special token is no candidate)
            if vocab[original[p]].startswith("##") and vocab[original[p - 1]] not in SPECIALS:
                continuation += 1
                assert (p in masked) == (p - 1 in masked), "a word was masked in part"
    assert continuation > 50  # the check above really ran on word pieces


def test_max_samples_and_shards(tmp_path, small_vocab):
    out = f"{tmp_path}/a.tfrecord,{tmp_path}/b.tfrecord,{tmp_path}/c.tfrecord"
    _, stats = generate(tmp_path, SAMPLE, out, small_vocab, ["--max-samples", "10"])
    counts = [len(list(read_records(p))) for p in out.split(",")]
    assert stats["instances"] == 10 and counts == [4, 3, 3]  # round-robin


def test_undecodable_bytes_are_replaced_and_counted(tmp_path, small_vocab):
    text = _read_bytes(SAMPLE).replace(b"\n\n", b"\nbad \xff\xfe bytes here.\n\n", 1)
    path = tmp_path / "bad.txt"
    path.write_bytes(text)
    _, stats = generate(tmp_path, str(path), vocab=small_vocab)
    assert stats["replaced_bytes"] == 2 and stats["instances"] > 0


def test_truncation_cuts_equal_googles_loop():
    for la in range(0, 15):
        for lb in range(0, 15):
            for limit in range(1, 20):
                a, b = la, lb
                while a + b > limit:
                    if a > b:
                        a -= 1
                    else:
                        b -= 1
                cut_a, cut_b = cpd._truncation_cuts(np.array([la]), np.array([lb]), limit)
                assert (la - cut_a[0], lb - cut_b[0]) == (a, b)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--input-file", "/nonexistent/*.txt"], "error: input file not found: /nonexistent/*.txt"),
        (["--input-file", "{empty}"], "error: input is empty: "),
        (["--input-file", "{blank}"], "error: input has no text (only blank lines): "),
        (["--vocab-file", "{badvocab}"], "lacks the special token(s) [CLS] [SEP] [MASK]"),
        (["--mask-tokens", "126"], "--mask-tokens 126 is impossible for --sequence-length 128"),
        (["--output-file", "{readonly}/x.tfrecord"], "error: output directory is not writable: "),
        (["--output-file", "{empty}/x.tfrecord"], "error: cannot create output directory "),
    ],
)
def test_errors_are_one_line_with_nonzero_exit(tmp_path, small_vocab, args, message):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "blank.txt").write_text("\n  \n\n")
    (tmp_path / "badvocab.txt").write_text("[PAD]\n[UNK]\nthe\n")
    readonly = tmp_path / "ro"
    readonly.mkdir()
    readonly.chmod(0o500)
    names = {
        "empty": tmp_path / "empty.txt",
        "blank": tmp_path / "blank.txt",
        "badvocab": tmp_path / "badvocab.txt",
        "readonly": readonly,
    }
    if os.geteuid() == 0 and "{readonly}" in str(args):
        pytest.skip("root can write into a read-only directory")
    args = [a.format(**names) for a in args]
    base = {
        "--input-file": SAMPLE,
        "--output-file": str(tmp_path / "o.tfrecord"),
        "--vocab-file": small_vocab,
    }
    base.update(dict(zip(args[::2], args[1::2])))
    argv = [x for kv in base.items() for x in kv] + ["--do-lower-case"]
    result = run_cli(*argv)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert not list(tmp_path.glob("*.tfrecord")) and not list(tmp_path.glob("*.tmp-*"))


def test_interrupt_leaves_no_partial_output(tmp_path, small_vocab, monkeypatch):
    """An error in the middle (here a simulated Ctrl-C) removes the temporary files."""
    calls = {"n": 0}
    real = cpd.build_chunk

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(cpd, "build_chunk", flaky)
    out = tmp_path / "x.tfrecord"
    argv = ["--input-file", SAMPLE, "--output-file", str(out), "--vocab-file", small_vocab]
    argv += ["--chunk-size-mb", "0.002", "--num-workers", "1", "--quiet", "--do-lower-case"]
    with pytest.raises(cpd.UserError, match="interrupted; no output file was written"):
        cpd.run(cpd.build_parser().parse_args(argv))
    assert calls["n"] == 2 and list(tmp_path.iterdir()) == []


def test_help_states_the_memory_bound():
    result = run_cli("--help")
    assert result.returncode == 0
    assert "usage: create_pretraining_data.py" in result.stdout
    assert "Memory is bounded by chunks" in result.stdout


def test_unwritable_output_directory_even_as_root(tmp_path, small_vocab, monkeypatch, capsys):
    """Root ignores directory permissions, so the check itself is exercised with os.access denied."""
    real_access = os.access
    target = str(tmp_path / "out")
    os.makedirs(target)
    monkeypatch.setattr(cpd.os, "access", lambda p, m: False if p == target else real_access(p, m))
    argv = ["--input-file", SAMPLE, "--output-file", f"{target}/x.tfrecord"]
    argv += ["--vocab-file", small_vocab, "--quiet", "--do-lower-case"]
    with pytest.raises(SystemExit) as exit_info:
        cpd.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: output directory is not writable: {target}"]


# ---------------------------------------------------------------------------------------------
# The fast paths, each against a plain reference written here.


def _pb_varint(value):
    out = b""
    while True:
        byte, value = value & 0x7F, value >> 7
        out += bytes([byte | (0x80 if value else 0)])
        if not value:
            return out


def _pb_field(number, payload):
    """A length-delimited protobuf field (wire type 2)."""
    return _pb_varint(number << 3 | 2) + _pb_varint(len(payload)) + payload


def _reference_tfrecord(example):
    """One framed TFRecord of a tf.train.Example, byte by byte from the protobuf and TFRecord specs."""
    import google_crc32c

    features = b""
    for name, values in example:
        if isinstance(values[0], float):
            feature = _pb_field(2, _pb_field(1, struct.pack(f"<{len(values)}f", *values)))
        else:
            feature = _pb_field(3, _pb_field(1, b"".join(_pb_varint(v) for v in values)))
        features += _pb_field(1, _pb_field(1, name.encode()) + _pb_field(2, feature))
    data = _pb_field(1, features)

    def masked(b):
        crc = google_crc32c.value(b)
        return struct.pack("<I", ((crc >> 15 | crc << 17) + 0xA282EAD8) & 0xFFFFFFFF)

    length = struct.pack("<Q", len(data))
    return length + masked(length) + data + masked(data)


def test_encode_records_equals_protobuf_reference():
    """Every varint width, constant and varying rows, variable-length rows and floats, byte for byte."""
    from bert_data.records import encode_records

    rng = np.random.default_rng(5)
    edges = np.array(
        [0, 1, 127, 128, 16383, 16384, 2**21 - 1, 2**21, 2**28, 2**35, 2**56, 2**63 - 1]
    )
    n = 7
    for trial in range(30):
        features = []
        for f in range(int(rng.integers(1, 5))):
            width = int(rng.integers(1, 6))
            kind = trial % 4 if f == 0 else int(rng.integers(0, 4))
            if kind == 0:  # mixed varint widths
                values = rng.choice(edges[: int(rng.integers(1, edges.size + 1))], (n, width))
            elif kind == 1:  # vocabulary-like ids (the lookup-table path)
                values = rng.integers(0, 30522, (n, width)).astype(np.int32)
            elif kind == 2:
                values = rng.random((n, width)) < 0.5  # booleans, as input_mask
            else:
                values = rng.random((n, width)).astype(np.float32)
            name = "masked_lm_weights" if kind == 3 else f"feature_{f}"
            lengths = rng.integers(1, width + 1, n) if rng.random() < 0.3 else None
            features.append((name, values, lengths))
        data, framed = encode_records(features, n)
        expected = []
        for r in range(n):
            example = []
            for name, values, lengths in features:
                row = values[r] if lengths is None else values[r, : lengths[r]]
                example.append(
                    (name, row.tolist() if row.dtype.kind == "f" else list(map(int, row)))
                )
            expected.append(_reference_tfrecord(example))
        assert data.tobytes() == b"".join(expected), trial
        assert framed.tolist() == [len(e) for e in expected]


def _write_text_files(tmp_path):
    """Files with CRLF, lone CR, whitespace-only lines, no final newline and undecodable bytes."""
    rng = np.random.default_rng(3)
    parts = [
        b"a line.",
        b"  ",
        b"",
        b"\t",
        "Ünïcödé".encode(),
        b"x\x0by",
        b"\x0c",
        "\u3000".encode(),
    ]
    parts += [b"bad \xff\xfe here", b"word word", b"\xe2\x82"]  # the last: a truncated character
    endings = [b"\n", b"\r\n", b"\r"]
    paths = []
    for k in range(5):
        text = b"".join(parts[i] + endings[j] for i, j in rng.integers(0, [11, 3], (300, 2)))
        if k == 3:  # one long document: no blank line to cut at
            text = b"".join(p + b"\n" for p in parts if p.strip()) * 200
        path = tmp_path / f"text{k}.txt"
        path.write_bytes(text.rstrip(b"\r\n") if k == 2 else text)
        paths.append(str(path))
    return paths


def test_planned_chunks_read_the_same_documents(tmp_path):
    """Byte-range chunks (cut at blank lines) hold exactly the documents the stream reader sees."""
    files = _write_text_files(tmp_path)
    for chunk_bytes in (1, 40, 700, 10**9):
        cpd._ReplacementCounter.count = 0
        expected = [doc for chunk in cpd.read_chunks(files, chunk_bytes) for doc in chunk]
        expected_replaced = cpd._ReplacementCounter.count
        documents, replaced, chunks = [], 0, 0
        for ranges in cpd.plan_chunks(files, chunk_bytes):
            lines, doc_lines, count = cpd.read_documents(ranges)
            bounds = np.cumsum([0, *doc_lines])
            documents += [lines[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
            assert bounds[-1] == len(lines)
            replaced += count
            chunks += 1
        assert documents == expected, chunk_bytes
        assert replaced == expected_replaced > 0
        assert chunks > 5 or chunk_bytes == 10**9


def test_random_subsets_are_uniform_and_distinct():
    gen = np.random.default_rng(11)
    n = 60000
    chosen = cpd._random_subsets(np.full(n, 5, np.int32), np.full(n, 2, np.int32), 3, gen)
    assert (chosen[:, 2] == 5).all()
    pairs = np.sort(chosen[:, :2], axis=1)
    assert (pairs[:, 0] < pairs[:, 1]).all() and pairs.min() >= 0 and pairs.max() <= 4
    _, counts = np.unique(pairs, axis=0, return_counts=True)
    assert len(counts) == 10 and np.abs(counts / (n / 10) - 1).max() < 0.05  # C(5, 2) = 10 subsets
    count = gen.integers(1, 126, 3000).astype(np.int32)
    k = np.minimum(count, gen.integers(1, 21, 3000)).astype(np.int32)
    chosen = cpd._random_subsets(count, k, 20, gen)
    for row, c, m in zip(chosen, count, k):
        assert len(set(row[:m].tolist())) == m and row[:m].max() < c and (row[m:] == c).all()


def test_shards_are_the_single_output_dealt_round_robin(tmp_path, small_vocab):
    single, _ = generate(
        tmp_path, SAMPLE, "one.tfrecord", small_vocab, ["--chunk-size-mb", "0.003"]
    )
    shards = f"{tmp_path}/a.tfrecord,{tmp_path}/b.tfrecord,{tmp_path}/c.tfrecord"
    generate(tmp_path, SAMPLE, shards, small_vocab, ["--chunk-size-mb", "0.003"])
    records = list(read_records(single))
    dealt = [list(read_records(p)) for p in shards.split(",")]
    assert [records[i::3] for i in range(3)] == dealt and len(records) > 100


def test_tokenizer_matches_reference_on_random_unicode():
    """Random strings of hard characters (controls, separators, accents, Greek sigma, CJK) in batches."""
    from bert_data.tokenization import FullTokenizer

    if not os.path.isfile(VOCAB):
        pytest.skip("../shared/data (BERT vocab) is not present")
    pool = list("aAzZ09 .,;'-()") + [
        "the",
        "The",
        "ing",
        "Σ",
        "ΑΣ",
        "İ",
        "é",
        "É",
        "ß",
        "ﬁ",
        "\u0301",
    ]
    pool += ["\u200b", "\u00ad", "\x00", "\x01", "\x0b", "\x1c", "\x7f", "\x85", "\x9f", "\u2028"]
    pool += ["\u2029", "\u00a0", "\u3000", "\t", "\n", "\r", "\ufffd", "漢", "の", "😀", "\ue000"]
    pool += [
        "\U000e0080",
        "\u0378",
        "«",
        "—",
        "…",
        "½",
        "Ⅻ",
        "ǅ",
        "x" * 201,
    ]  # over the 200-character limit
    rng = np.random.default_rng(2)
    texts = ["".join(rng.choice(pool, int(rng.integers(0, 20)))) for _ in range(3000)]
    texts += ["ñabΣ\ufffdΑΣ9\x9f"]  # Google lower-cases after deleting U+009F: a medial sigma
    for lower in (True, False):
        reference = ref.ReferenceTokenizer(VOCAB, lower)
        ours = FullTokenizer(VOCAB, lower).tokenize_batch(texts)
        bad = [(t, o) for t, o in zip(texts, ours) if o != reference.tokenize(t)]
        assert not bad, (len(bad), bad[:3])


def test_tokenizer_cache_survives_an_interrupt():
    """An interrupt while new words are encoded leaves no half-made cache entry behind."""
    from bert_data.tokenization import FullTokenizer

    if not os.path.isfile(VOCAB):
        pytest.skip("../shared/data (BERT vocab) is not present")
    tok = FullTokenizer(VOCAB, True)
    real, calls = tok._wordpiece_batch, []

    def interrupted(words):
        calls.append(words)
        raise KeyboardInterrupt

    tok._wordpiece_batch = interrupted
    texts = ["Unaffable playing, the zyxt words.", "more playing qwzx"]  # three words not in vocab
    with pytest.raises(KeyboardInterrupt):
        tok.encode_flat(texts)
    assert calls  # the interrupt came while new words were being encoded
    tok._wordpiece_batch = real
    expected = ref.ReferenceTokenizer(VOCAB, True)
    assert tok.tokenize_batch(texts) == [expected.tokenize(t) for t in texts]


def _parallel_argv(tmp_path, vocab):
    argv = ["--input-file", SAMPLE, "--output-file", str(tmp_path / "x.tfrecord")]
    argv += ["--vocab-file", vocab, "--chunk-size-mb", "0.002", "--num-workers", "2"]
    return cpd.build_parser().parse_args([*argv, "--quiet", "--do-lower-case"])


def test_worker_error_reaches_the_main_process(tmp_path, small_vocab, monkeypatch):
    """An exception in a worker process is raised in the main one; workers and files are cleaned up."""
    import multiprocessing

    real = cpd.build_chunk

    def failing(index, *args):
        if index == 3:
            raise ValueError("chunk 3 is broken")
        return real(index, *args)

    monkeypatch.setattr(cpd, "build_chunk", failing)  # the forked workers inherit it
    with pytest.raises(ValueError, match="chunk 3 is broken"):
        cpd.run(_parallel_argv(tmp_path, small_vocab))
    assert list(tmp_path.iterdir()) == [] and multiprocessing.active_children() == []


def test_interrupt_with_workers_leaves_nothing_behind(tmp_path, small_vocab, monkeypatch):
    import multiprocessing

    real, calls = cpd._write_chunk, []

    def interrupted(*args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(cpd, "_write_chunk", interrupted)
    with pytest.raises(cpd.UserError, match="interrupted"):
        cpd.run(_parallel_argv(tmp_path, small_vocab))
    assert list(tmp_path.iterdir()) == [] and multiprocessing.active_children() == []


@pytest.mark.parametrize(
    "google, reference",
    [
        (  # Google's README command, with the sample corpus and a small vocab
            "--do_lower_case=True --max_seq_length=128 --max_predictions_per_seq=20 "
            "--masked_lm_prob=0.15 --random_seed=12345 --dupe_factor=5",
            "--do-lower-case --sequence-length 128 --mask-tokens 20 --mlm-prob 0.15 --seed 12345 "
            "--duplication-factor 5",
        ),
        (
            "--do_lower_case=False --max_seq_length=64 --max_predictions_per_seq=9 "
            "--short_seq_prob=0.3 --do_whole_word_mask=True --random_seed=7 --dupe_factor=2",
            "--sequence-length 64 --mask-tokens 9 --short-seq-prob 0.3 --whole-word-masking "
            "--seed 7 --duplication-factor 2",
        ),
    ],
)
def test_google_flag_spellings_write_the_same_bytes(tmp_path, small_vocab, google, reference):
    outputs = []
    for style, flags in (("google", google), ("reference", reference)):
        out = str(tmp_path / f"{style}.tfrecord")
        if style == "google":
            io = [f"--input_file={SAMPLE}", f"--output_file={out}", f"--vocab_file={small_vocab}"]
        else:
            io = ["--input-file", SAMPLE, "--output-file", out, "--vocab-file", small_vocab]
        result = run_cli(*io, *flags.split())
        assert result.returncode == 0, result.stderr
        outputs.append(_read_bytes(out))
    assert outputs[0] == outputs[1] and len(outputs[0]) > 1000


def test_missing_required_flags_is_one_line_error(tmp_path):
    result = run_cli("--input_file", SAMPLE)
    assert result.returncode != 0
    assert result.stderr.strip() == "error: missing --output-file, --vocab-file (see --help)"


def _sharded_argv(tmp_path, vocab, outputs, *extra):
    return ["--input-file", SAMPLE, "--vocab-file", vocab, "--do-lower-case", "--quiet",
            "--output-file", ",".join(str(tmp_path / o) for o in outputs),
            "--chunk-size-mb", "0.002", "--duplication-factor", "1", *extra]  # fmt: skip


@pytest.mark.parametrize("num_shards", [2, 3])
def test_merged_shards_equal_the_single_run(tmp_path, small_vocab, num_shards):
    """N machines' parts, merged, are the single run's bytes, outputs and fingerprints alike;
    four outputs, so that the shards' record counts rotate the round-robin."""
    from bert_data import merge_shards

    names = ["a.tfrecord", "b.tfrecord", "c.tfrecord", "d.tfrecord"]
    (tmp_path / "one").mkdir()
    (tmp_path / "parts").mkdir()
    cpd.run(cpd.build_parser().parse_args(_sharded_argv(tmp_path / "one", small_vocab, names)))
    counts = []
    for k in range(num_shards):
        flags = ["--shard-index", str(k), "--num-shards", str(num_shards)]
        flags += ["--num-workers", str(1 + k % 2)]  # one shard with worker processes
        stats = cpd.run(
            cpd.build_parser().parse_args(
                _sharded_argv(tmp_path / "parts", small_vocab, names, *flags)
            )
        )
        counts.append(stats["instances"])
    assert any(c % len(names) for c in counts[:-1])  # the rotation is exercised
    assert not (tmp_path / "parts" / "a.tfrecord").exists()
    merge_shards.main(["--output-file", ",".join(str(tmp_path / "parts" / n) for n in names)])
    for name in names:
        for suffix in ("", ".fingerprint.json"):
            single = _read_bytes(tmp_path / "one" / (name + suffix))
            assert _read_bytes(tmp_path / "parts" / (name + suffix)) == single, name + suffix
    assert len(list(read_records(tmp_path / "one" / "a.tfrecord"))) > 20


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--shard-index", "2", "--num-shards", "2"], "--shard-index 2 is out of range for --num-shards 2: use 0 to 1"),
        (["--shard-index", "-1", "--num-shards", "3"], "--shard-index -1 is out of range"),
        (["--num-shards", "0"], "--num-shards 0 must be at least 1"),
        (["--num-shards", "2", "--max-samples", "5"], "--max-samples counts instances of the whole run"),
    ],
)  # fmt: skip
def test_bad_shard_flags_are_one_line(tmp_path, small_vocab, flags, message):
    result = run_cli(*_sharded_argv(tmp_path, small_vocab, ["o.tfrecord"], *flags))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert not list(tmp_path.glob("o.tfrecord*"))


def test_merge_names_a_missing_part(tmp_path, small_vocab):
    argv = _sharded_argv(
        tmp_path, small_vocab, ["o.tfrecord"], "--shard-index", "1", "--num-shards", "3"
    )
    cpd.run(cpd.build_parser().parse_args(argv))
    result = subprocess.run(
        [sys.executable, "-m", "bert_data.merge_shards", "--output-file", str(tmp_path / "o.tfrecord")],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"error: missing part {tmp_path}/o.tfrecord.part-0-of-3: run shard 0"
    )
    assert not (tmp_path / "o.tfrecord").exists()

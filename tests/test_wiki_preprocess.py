"""Tests for bert_data/wiki_preprocess.py and scripts/create_wikipedia_dataset.sh."""

import bz2
import os
import re
import shutil
import struct
import subprocess
import sys

import google_crc32c
import pytest

from bert_data import wiki_preprocess as wp

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "scripts", "create_wikipedia_dataset.sh")
WIKI_00 = "/work/shared/data/wikipedia_extracted/AA/wiki_00"

# A hand-made WikiExtractor file: a title line after each <doc>, an old-style "Heading." line,
# a modern bare heading, a list introduction whose list was removed, an HTML-escaped title, and
# a document with nothing but a title and a list introduction (it must vanish).
TINY = """\
<doc id="1" url="https://en.wikipedia.org/wiki?curid=1" title="Gull Point Light">
Gull Point Light

Gull Point Light is a lighthouse in Maine. It was built in 1874 by the U.S. Lighthouse Board.

History.
The first keeper was Dr. John A. Smith, who served until 1890. He kept a log (e.g. ships, storms).
Keepers
Notable keepers include:
Was it worth it? Yes! The light still works.
</doc>
<doc id="2" url="https://en.wikipedia.org/wiki?curid=2" title="Gull (disambiguation)">
Gull (disambiguation)

Gull may refer to:
</doc>
<doc id="3" url="https://en.wikipedia.org/wiki?curid=3" title="AT&amp;T Building">
AT&T Building

The AT&T Building stands in Nashville. Its nickname is "the Batman Building."
</doc>
"""

TINY_EXPECTED = """\
Gull Point Light is a lighthouse in Maine.
It was built in 1874 by the U.S. Lighthouse Board.
The first keeper was Dr. John A. Smith, who served until 1890.
He kept a log (e.g. ships, storms).
Was it worth it?
Yes!
The light still works.

The AT&T Building stands in Nashville.
Its nickname is "the Batman Building."

"""


def _documents(text):
    """Split one-sentence-per-line output into documents (lists of lines) on blank lines."""
    return [block.split("\n") for block in text.strip("\n").split("\n\n")]


@pytest.mark.parametrize(
    "paragraph, expected",
    [
        ("", []),
        ("One.  Two.\nThree.", ["One.", "Two.", "Three."]),
        (
            "The U.S. Army was founded in 1775. It is the oldest branch.",
            ["The U.S. Army was founded in 1775.", "It is the oldest branch."],
        ),
        (
            "She moved to the U.S. In 2017 she returned.",
            ["She moved to the U.S.", "In 2017 she returned."],
        ),
        (
            "Some animals (e.g. cats) sleep a lot. Others do not.",
            ["Some animals (e.g. cats) sleep a lot.", "Others do not."],
        ),
        ("Cats sleep, i.e. They rest.", ["Cats sleep, i.e. They rest."]),
        (
            "George C. Marshall was born in 1880. He died in 1959.",
            ["George C. Marshall was born in 1880.", "He died in 1959."],
        ),
        ("Robert S. P. Beekes wrote it.", ["Robert S. P. Beekes wrote it."]),
        (
            "The ship was No. 5 in the fleet. It sank. The answer is no. Then what?",
            ["The ship was No. 5 in the fleet.", "It sank.", "The answer is no.", "Then what?"],
        ),
        ("Is it true? Yes! It is.", ["Is it true?", "Yes!", "It is."]),
        ('He said "Stop." Then he left.', ['He said "Stop."', "Then he left."]),
        ("He left (for good.) Nobody came.", ["He left (for good.)", "Nobody came."]),
        (
            "It was built c. 1620 and rebuilt in 1750. St. Mary's tower fell.",
            ["It was built c. 1620 and rebuilt in 1750.", "St. Mary's tower fell."],
        ),
        ("Dr. Smith met Mr. Jones at St. Ives.", ["Dr. Smith met Mr. Jones at St. Ives."]),
        ("1. Lincoln was first.", ["1. Lincoln was first."]),
        ("Wait... Then it came.", ["Wait...", "Then it came."]),
        ("It ended at 5 p.m. on Monday.", ["It ended at 5 p.m. on Monday."]),
        ("Sugar, flour, etc. Bread needs them.", ["Sugar, flour, etc.", "Bread needs them."]),
        ("Acme Inc. Chairman Bob spoke.", ["Acme Inc. Chairman Bob spoke."]),
        ("Acme Inc. The firm grew.", ["Acme Inc.", "The firm grew."]),
        ("The value is 0.9 today. Tomorrow too.", ["The value is 0.9 today.", "Tomorrow too."]),
    ],
)
def test_split_sentences(paragraph, expected):
    assert wp.split_sentences(paragraph) == expected


@pytest.mark.parametrize(
    "line, heading",
    [
        ("History.", True),  # old WikiExtractor "Section title." form
        ("Early life and career.", True),
        ("Etymology, terminology and definition.", True),
        ("Keepers", True),  # bare heading
        ("Novels:", True),  # list introduction whose list was removed
        ("The most important temples are:", True),
        ("]]", True),
        ("formula_7,", True),
        # The documented price of rule (b): a one-line paragraph of <= 4 words is dropped too.
        ("He died.", True),
        ("It was a great success.", False),
        ("Oracles were also given by sons of Apollo.", False),
        ("incorrect in modern physics.", False),  # not capitalised: a fragment, kept
        ("Is it true?", False),
        ("One. Two.", False),
        ("Tim Dirks, editor of the filmsite, has written of the Academy Awards,", False),
    ],
)
def test_is_heading(line, heading):
    assert wp.is_heading(line) is heading


def test_tiny_sample_file(tmp_path, capsys):
    source = tmp_path / "wiki_00"
    source.write_text(TINY, encoding="utf-8")
    output = tmp_path / "out.txt"
    wp.main(["--input-file", str(source), "--output-file", str(output)])
    assert output.read_text(encoding="utf-8") == TINY_EXPECTED
    assert "2 documents" in capsys.readouterr().out


def test_tiny_sample_in_parallel_gives_same_bytes(tmp_path):
    source = tmp_path / "wiki_00"
    source.write_text(TINY * 300, encoding="utf-8")  # 900 documents: several batches
    wp.main(["--input-file", str(source), "--output-file", str(tmp_path / "one")])
    wp.main(
        ["--input-file", str(source), "--output-file", str(tmp_path / "two"), "--num-workers", "2"]
    )
    one = (tmp_path / "one").read_bytes()
    assert one == TINY_EXPECTED.encode() * 300
    assert (tmp_path / "two").read_bytes() == one


def test_small_files_reads_only_max_len_lines(tmp_path):
    source = tmp_path / "wiki_00"
    source.write_text(TINY, encoding="utf-8")
    output = tmp_path / "out.txt"
    # Lines 1-4: <doc>, title, blank, first paragraph; the cut document is still closed.
    wp.main(
        [
            "--input-file",
            str(source),
            "--output-file",
            str(output),
            "--small-files",
            "--max-len",
            "4",
        ]
    )
    assert output.read_text(encoding="utf-8") == (
        "Gull Point Light is a lighthouse in Maine.\n"
        "It was built in 1874 by the U.S. Lighthouse Board.\n\n"
    )


def test_directory_input_mirrors_subdirectories(tmp_path, capsys):
    extracted = tmp_path / "extracted"
    (extracted / "AA").mkdir(parents=True)
    (extracted / "AB").mkdir()
    (extracted / "AA" / "wiki_00").write_text(TINY, encoding="utf-8")
    with bz2.open(extracted / "AB" / "wiki_01.bz2", "wt", encoding="utf-8") as f:
        f.write(TINY)  # WikiExtractor --compress output
    (extracted / "AB" / "notes").write_text("no documents here\n", encoding="utf-8")
    out = tmp_path / "cleaned"
    wp.main(["--input-file", str(extracted), "--output-file", str(out)])
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert written == ["AA/wiki_00_cleaned", "AB/wiki_01_cleaned"]
    for name in written:
        assert (out / name).read_text(encoding="utf-8") == TINY_EXPECTED
    captured = capsys.readouterr()
    assert "no <doc> blocks in" in captured.err and "notes" in captured.err

    # --skip-existing keeps finished files (resume): a marker survives a second run.
    (out / "AA" / "wiki_00_cleaned").write_text("kept\n", encoding="utf-8")
    (out / "AB" / "wiki_01_cleaned").unlink()
    wp.main(["--input-file", str(extracted), "--output-file", str(out), "--skip-existing"])
    assert (out / "AA" / "wiki_00_cleaned").read_text(encoding="utf-8") == "kept\n"
    assert (out / "AB" / "wiki_01_cleaned").read_text(encoding="utf-8") == TINY_EXPECTED
    assert "kept 1 existing file(s)" in capsys.readouterr().out


def _run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "bert_data.wiki_preprocess", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
    )


def test_errors_are_one_line(tmp_path):
    missing = _run_cli("--input-file", str(tmp_path / "nope"), "--output-file", str(tmp_path / "o"))
    assert missing.returncode != 0
    assert missing.stderr.strip().count("\n") == 0 and "does not exist" in missing.stderr

    plain = tmp_path / "plain.txt"
    plain.write_text("Just text.\nNo documents.\n", encoding="utf-8")
    no_docs = _run_cli("--input-file", str(plain), "--output-file", str(tmp_path / "o"))
    assert no_docs.returncode != 0
    assert "error:" in no_docs.stderr and "no <doc> blocks" in no_docs.stderr
    assert "Traceback" not in no_docs.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.skipif(not os.path.exists(WIKI_00), reason=f"shared sample {WIKI_00} is absent")
def test_real_wikiextractor_file(tmp_path):
    with open(WIKI_00, encoding="utf-8") as f:
        raw = f.read()
    titles = re.findall(r'<doc id="\d+" url="[^"]*" title="([^"]*)">', raw)
    assert len(titles) == 37

    output = tmp_path / "wiki_00_cleaned"
    wp.main(["--input-file", WIKI_00, "--output-file", str(output)])
    text = output.read_text(encoding="utf-8")
    assert text.endswith("\n\n") and "\n\n\n" not in text
    documents = _documents(text)
    # 37 articles, but "Alien" is a disambiguation page whose only lines are two list
    # introductions ("Alien primarily refers to:", "... may also refer to:"): nothing is left.
    assert len(documents) == 36
    lines = [line for doc in documents for line in doc]
    assert all(line.strip() == line and line for line in lines)
    assert not any(line.startswith(("<doc", "</doc")) for line in lines)
    assert not set(titles) & set(lines)
    assert documents[0][0].startswith("Anarchism is an anti-authoritarian political")
    assert documents[-1][0].startswith("Amphibians are ectothermic, tetrapod vertebrates")

    # ". " followed by a capital splits ...
    assert documents[0][:2] == [
        "Anarchism is an anti-authoritarian political and social philosophy that rejects "
        "hierarchies deemed unjust and advocates their replacement with self-managed, "
        "self-governed societies based on voluntary, cooperative institutions.",
        "These institutions are often described as stateless societies, although several "
        "authors have defined them more specifically as distinct institutions based on "
        "non-hierarchical or free associations.",
    ]
    # ... also after a sentence-final "U.S." ("... lowest in the U.S. The current state ...").
    assert "Property taxes are the lowest in the U.S." in lines
    assert any(line.startswith("The current state constitution") for line in lines)
    # ... but not after abbreviations, initials or "U.S." inside a sentence.
    for fragment in [
        "George C. Marshall Space Flight Center and the U.S. Army Materiel Command, headquartered",
        "anarchists formed the St. Imier International.",
        "Taoist philosophers (i.e. Zhuangzi and Lao Tzu).",
        "because of the assassination of Dr. Martin Luther King, Jr.",
        "rivaled by William H. Seward, Salmon P. Chase, Edward Bates, and Simon Cameron.",
        "JVC America, Inc. operates an optical disc",
        "International Telegraph Alphabet No. 2 (ITA2) standard of 1924",
        "hardly 125 Roman miles (c. 185 km) away",
        "attempted to storm Mt. Olympus by piling up mountains.",
    ]:
        assert any(fragment in line for line in lines), fragment


# --- scripts/create_wikipedia_dataset.sh -----------------------------------------------------


def test_script_syntax():
    subprocess.run(["bash", "-n", SCRIPT], check=True)
    if shutil.which("shellcheck"):
        subprocess.run(["shellcheck", SCRIPT], check=True)


def _tfrecord_payloads(path):
    """Read a TFRecord file with its framing and masked CRC32C checks (format reference)."""

    def masked_crc(data):
        crc = google_crc32c.value(data)
        return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF

    payloads = []
    with open(path, "rb") as f:
        while header := f.read(12):
            (length,) = struct.unpack("<Q", header[:8])
            assert struct.unpack("<I", header[8:])[0] == masked_crc(header[:8])
            data = f.read(length)
            assert struct.unpack("<I", f.read(4))[0] == masked_crc(data)
            payloads.append(data)
    return payloads


def _script_env(tmp_path, **overrides):
    env = dict(os.environ)
    env.update(
        SKIP_DOWNLOAD="1",
        DATA_DIR=str(tmp_path / "data"),
        EXTRACTED=str(tmp_path / "extracted"),
        VOCAB_SIZE="600",
        DUPLICATION="1",
        SEQ_MASKS="64:10",
        NUM_SHARDS="3",
        NUM_WORKERS="2",
    )
    env.update(overrides)
    return env


@pytest.mark.skipif(
    not os.path.exists(os.path.join(REPO, "bert_data", "create_pretraining_data.py")),
    reason="bert_data/create_pretraining_data.py is not written yet",
)
def test_script_runs_whole_chain_without_download(tmp_path):
    (tmp_path / "extracted" / "AA").mkdir(parents=True)
    if os.path.exists(WIKI_00):
        shutil.copy(WIKI_00, tmp_path / "extracted" / "AA" / "wiki_00")
    else:  # Without the shared data, wrap the sample corpus's documents in <doc> blocks.
        sample = os.path.join(REPO, "bert_data", "sample.txt")
        with open(sample, encoding="utf-8") as f:
            blocks = f.read().strip("\n").split("\n\n")
        (tmp_path / "extracted" / "AA" / "wiki_00").write_text(
            "".join(
                f'<doc id="{i}" url="u" title="T{i}">\nT{i}\n\n{block}\n</doc>\n'
                for i, block in enumerate(blocks)
            ),
            encoding="utf-8",
        )
    env = _script_env(tmp_path)
    run = subprocess.run(["bash", SCRIPT], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]

    data = tmp_path / "data"
    assert (data / "wikipedia_cleaned" / "AA" / "wiki_00_cleaned").stat().st_size > 0
    vocab = (data / "tf_wikipedia" / "vocab.txt").read_text(encoding="utf-8").split("\n")[:-1]
    assert vocab[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert len(vocab) <= 600 and len(vocab) % 8 == 0
    shard_dir = data / "tf_wikipedia" / "tokenised_64_dup1_mask10"
    shards = sorted(p.name for p in shard_dir.glob("*.tfrecord"))
    assert shards == ["wiki_000.tfrecord", "wiki_001.tfrecord", "wiki_002.tfrecord"]
    counts = []
    for name in shards:
        payloads = _tfrecord_payloads(shard_dir / name)
        counts.append(len(payloads))
        # REMASK=1 by default: the static-mask layout's feature names.
        assert all(b"input_position" in p and b"masked_labels" in p for p in payloads[:5])
    assert min(counts) > 0 and max(counts) - min(counts) <= 1  # written round-robin
    assert "max_predictions_per_seq: 10" in (shard_dir / "manifest.txt").read_text()

    # A second run finds every stage complete and rewrites nothing.
    mtimes = {p: p.stat().st_mtime_ns for p in data.rglob("*") if p.is_file()}
    again = subprocess.run(["bash", SCRIPT], env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("skipping") + again.stdout.count("not retraining") == 3
    assert {p: p.stat().st_mtime_ns for p in data.rglob("*") if p.is_file()} == mtimes

    # A given VOCAB without the special tokens is refused before any record is written.
    bad_vocab = tmp_path / "bad_vocab.txt"
    bad_vocab.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\nthe\n", encoding="utf-8")
    bad = subprocess.run(
        ["bash", SCRIPT],
        env=_script_env(tmp_path, VOCAB=str(bad_vocab), OUT_DIR=str(tmp_path / "out2")),
        capture_output=True,
        text=True,
    )
    assert bad.returncode != 0 and "[MASK]" in bad.stderr
    assert not (tmp_path / "out2").exists()

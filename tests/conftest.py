"""Shared fixtures: a vocab and pretraining TFRecords made from the bundled sample corpus."""

import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.join(ROOT, "bert_data", "sample.txt")


@pytest.fixture(scope="session")
def sample_vocab(tmp_path_factory):
    """A 600-token uncased vocab built from bert_data/sample.txt with our create_vocab."""
    from bert_data import create_vocab

    path = str(tmp_path_factory.mktemp("vocab") / "vocab.txt")
    create_vocab.main(
        ["--input-file", SAMPLE, "--output-file", path, "--vocab-size", "600", "--do-lower-case"]
    )
    return path


@pytest.fixture(scope="session")
def sample_records(tmp_path_factory, sample_vocab):
    """{"standard": path, "remask": path}: seq 128, 20 masks, duplication 2, from the sample."""
    from bert_data import create_pretraining_data as cpd

    tmp = tmp_path_factory.mktemp("records")
    files = {}
    for layout, extra in (("standard", []), ("remask", ["--remask"])):
        out = str(tmp / f"{layout}.tfrecord")
        argv = ["--input-file", SAMPLE, "--output-file", out, "--vocab-file", sample_vocab]
        argv += ["--do-lower-case", "--quiet", "--duplication-factor", "2", *extra]
        cpd.run(cpd.build_parser().parse_args(argv))
        files[layout] = out
    return files

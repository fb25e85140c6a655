#!/usr/bin/env python3
"""Record the first 20 steps' losses of the tiny configs, bit for bit, to compare two commits.

    python3 scripts/loss_trajectories.py record REPO OUT.json [--work DIR] [--extra JOB=FLAGS ...]
    python3 scripts/loss_trajectories.py compare A.json B.json

`record` runs, from REPO's own scripts, on data made from bert_data/sample.txt with fixed seeds:
BERT tiny (configs/pretrain_tiny_128_lamb.json, remask data), GroupBERT tiny, RoBERTa tiny, and the
tiny GLUE and SQuAD configs on generated data, 20 steps each, and stores every loss, accuracy,
learning-rate, loss-scale and gradient-norm scalar of their TensorBoard events as float32 bit
patterns. `compare` says, per job and tag, whether two recordings are bitwise equal. A refactoring
that should not change numerics must print "bitwise equal" everywhere. `--extra groupbert_tiny="..."`
adds flags to one job (e.g. a setting whose default changed between the commits).
"""

import argparse
import glob
import json
import os
import shutil
import struct
import subprocess
import sys

JOBS = {
    "bert_tiny_lamb": ["run_pretraining.py", "--config", "configs/pretrain_tiny_128_lamb.json",
                       "--train-file", "{work}/remask.tfrecord", "--vocab-file", "{work}/vocab.txt",
                       "--micro-batch-size", "8", "--global-batch-size", "16"],
    "groupbert_tiny": ["run_pretraining.py", "--config",
                       "configs/groupbert/pretrain_tiny_groupbert_128.json",
                       "--train-file", "{work}/std.tfrecord", "--micro-batch-size", "4",
                       "--global-batch-size", "8", "--hidden-dropout-prob", "0.1"],
    "roberta_tiny": ["run_pretraining.py", "--config", "configs/pretrain_roberta_tiny_128.json",
                     "--train-file", "{work}/mlm.tfrecord", "--tokenizer-file",
                     "{work}/bpe/tokenizer.json", "--vocab-size", "600", "--micro-batch-size", "4",
                     "--global-batch-size", "8"],
    "glue_tiny": ["run_classifier.py", "--config", "configs/glue_tiny.json", "--generated-data",
                  "--do-training", "--vocab-size", "1000", "--task-name", "mrpc"],
    "squad_tiny": ["run_squad.py", "--config", "configs/squad_tiny.json", "--generated-data",
                   "--do-training", "--vocab-size", "1000"],
}  # fmt: skip
COMMON = ["--num-train-steps", "20", "--steps-per-logs", "1", "--steps-per-ckpts", "1000"]
TAGS = ("loss", "accuracy", "grad_norm", "learning_rate")


def _run(repo, args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run(
        [sys.executable, *args], cwd=repo, env=env, capture_output=True, text=True
    )
    if result.returncode:
        sys.exit(f"failed ({result.returncode}): {' '.join(args)}\n{result.stderr[-3000:]}")


def _data(repo, work):
    sample = os.path.join(repo, "bert_data", "sample.txt")
    _run(repo, ["-m", "bert_data.create_vocab", "--input-file", sample, "--output-file",
                f"{work}/vocab.txt", "--vocab-size", "1000", "--do-lower-case"])  # fmt: skip
    for name, extra in (("remask", ["--remask"]), ("std", [])):
        _run(repo, ["bert_data/create_pretraining_data.py", "--input-file", sample,
                    "--output-file", f"{work}/{name}.tfrecord", "--vocab-file", f"{work}/vocab.txt",
                    "--do-lower-case", "--sequence-length", "128", "--mask-tokens", "20",
                    "--duplication-factor", "2", "--quiet", *extra])  # fmt: skip
    _run(repo, ["-m", "bert_data.create_bpe_tokenizer", "--input-file", sample, "--output-dir",
                f"{work}/bpe", "--vocab-size", "600"])  # fmt: skip
    _run(repo, ["-m", "bert_data.create_mlm_data", "--input-file", sample, "--output-file",
                f"{work}/mlm.tfrecord", "--tokenizer-file", f"{work}/bpe/tokenizer.json",
                "--sequence-length", "128"])  # fmt: skip


def _scalars(run_dir):
    """{tag: [float32 bit patterns by step]} of the run's TensorBoard events."""
    import tensorflow as tf

    found = {}
    for path in sorted(glob.glob(os.path.join(run_dir, "event", "events.out.tfevents.*"))):
        for record in tf.data.TFRecordDataset(path):
            event = tf.compat.v1.Event.FromString(record.numpy())
            for value in event.summary.value:
                if value.tag.startswith(TAGS):
                    number = (
                        float(tf.make_ndarray(value.tensor))
                        if value.HasField("tensor")
                        else (value.simple_value)
                    )
                    bits = struct.unpack("<I", struct.pack("<f", number))[0]
                    found.setdefault(value.tag, {})[event.step] = bits
    return {tag: [steps[s] for s in sorted(steps)] for tag, steps in found.items()}


def record(repo, out, work, extra):
    repo = os.path.abspath(repo)
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    _data(repo, work)
    result = {}
    for job, args in JOBS.items():
        save = os.path.join(work, "runs", job)
        flags = [a.format(work=work) for a in args] + COMMON + ["--seed", "7", "--save-path", save]
        _run(repo, flags + extra.get(job, "").split())
        (run_dir,) = glob.glob(os.path.join(save, "*"))
        result[job] = _scalars(run_dir)
        print(job, {tag: len(v) for tag, v in result[job].items()}, flush=True)
    with open(out, "w") as f:
        json.dump(result, f, indent=1)


def compare(a_path, b_path):
    with open(a_path) as f:
        a = json.load(f)
    with open(b_path) as f:
        b = json.load(f)
    equal = True
    for job in a:
        for tag, values in a[job].items():
            other = b.get(job, {}).get(tag)
            same = values == other
            equal &= same
            state = "bitwise equal" if same else ("missing" if other is None else "DIFFERENT")
            print(f"{job:16s} {tag:16s} {state} ({len(values)} steps)")
    return 0 if equal else 1


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("record")
    rec.add_argument("repo")
    rec.add_argument("out")
    rec.add_argument("--work", default="/tmp/loss_trajectories")
    rec.add_argument("--extra", action="append", default=[], help='JOB="--flag value ..."')
    cmp = sub.add_parser("compare")
    cmp.add_argument("a")
    cmp.add_argument("b")
    args = parser.parse_args(argv)
    if args.command == "compare":
        return compare(args.a, args.b)
    extra = dict(item.split("=", 1) for item in args.extra)
    record(args.repo, args.out, os.path.abspath(args.work), extra)
    return 0


if __name__ == "__main__":
    sys.exit(main())

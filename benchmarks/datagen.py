"""Pretraining-data generation: ours vs the plain-Python Google algorithm, side by side in one run.

Corpus: WikiText-2 raw valid + test (../shared/data/wikitext-2), bert-base-uncased vocab, seq 128, 20 masks,
duplication factor 5. Ours runs as the real command line (`create_pretraining_data.py --num-workers 2`).
The reference (tests/google_reference.py) runs in its own process and is timed from inside it, after its
imports, on tokenisation + instance creation only (no serialisation, no writing). Ours is timed the same
way, from inside (the tool's own `seconds`: vocab loading, worker start-up, tokenisation, instances,
masking, serialisation and writing; the primary ratio), and also end to end from outside, interpreter
start-up and imports included (a fixed ~0.2 s that a 2.4 MB corpus magnifies). Both processes' peak RSS
is sampled (whole process tree for ours). Statistics of both outputs are printed side by side.

    python3 benchmarks/datagen.py [--data-dir ../shared/data] [--workers 2] [--json out.json]
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import psutil

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEQ, MASKS, DUP = 128, 20, 5

REFERENCE_CODE = """
import json, sys, time
sys.path.insert(0, {tests!r})
from google_reference import ReferenceTokenizer, read_documents, create_instances
start = time.time()
tok = ReferenceTokenizer({vocab!r}, True)
docs = read_documents({files!r}, tok)
tokens = sum(len(s) for d in docs for s in d)
mid = time.time()
inst = create_instances(docs, list(tok.vocab), {seq}, {masks}, {dup}, seed=12345)
end = time.time()
mask_id = tok.vocab["[MASK]"]
n = len(inst)
real = sum(len(i.tokens) for i in inst)
masked = sum(len(i.masked_lm_positions) for i in inst)
as_mask = sum(t == "[MASK]" for i in inst for t in (i.tokens[p] for p in i.masked_lm_positions))
kept = sum(i.tokens[p] == l for i in inst for p, l in zip(i.masked_lm_positions, i.masked_lm_labels))
print(json.dumps(dict(seconds=end - start, tokenize_seconds=mid - start, input_tokens=tokens,
    documents=len(docs), instances=n, real_tokens=real, masked=masked, mask_token=as_mask, kept=kept,
    random_next=sum(i.is_random_next for i in inst))))
"""


def run_sampled(cmd):
    """Runs cmd; returns (stdout, stderr, wall seconds, peak RSS of the whole process tree in bytes)."""
    start = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = [0]

    def sample():
        root = psutil.Process(proc.pid)
        while proc.poll() is None:
            try:
                procs = [root, *root.children(recursive=True)]
                peak[0] = max(peak[0], sum(p.memory_info().rss for p in procs))
            except psutil.Error:
                pass
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    wall = time.time() - start
    sampler.join()
    if proc.returncode:
        sys.exit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{err}")
    return out, err, wall, peak[0]


def stats_from_tfrecord(path, vocab):
    """Statistics read back from the written file with TensorFlow (independent of our summary)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    from bert_data import records

    mask_id = vocab.index("[MASK]")
    spec = records.parse_spec(SEQ, MASKS, remask=False)
    s = dict(instances=0, real_tokens=0, masked=0, mask_token=0, kept=0, random_next=0)
    for batch in (
        tf.data.TFRecordDataset(path).batch(4096).map(lambda r: tf.io.parse_example(r, spec))
    ):
        b = {k: v.numpy() for k, v in batch.items()}
        w = b["masked_lm_weights"] > 0
        at = np.take_along_axis(b["input_ids"], b["masked_lm_positions"], axis=1)
        s["instances"] += len(w)
        s["real_tokens"] += int(b["input_mask"].sum())
        s["masked"] += int(w.sum())
        s["mask_token"] += int(((at == mask_id) & w).sum())
        s["kept"] += int(((at == b["masked_lm_ids"]) & w).sum())
        s["random_next"] += int(b["next_sentence_labels"].sum())
    return s


def describe(s):
    n, m = max(s["instances"], 1), max(s["masked"], 1)
    rnd = m - s["mask_token"] - s["kept"]
    return {
        "instances": s["instances"],
        "mean real tokens/instance": s["real_tokens"] / n,
        "mean masked/instance": s["masked"] / n,
        "NSP random fraction": s["random_next"] / n,
        "[MASK] fraction": s["mask_token"] / m,
        "kept fraction": s["kept"] / m,
        "random fraction": rnd / m,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=os.path.join(ROOT, "..", "shared", "data"))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()
    files = [
        os.path.join(args.data_dir, "wikitext-2", f) for f in ("wiki.valid.raw", "wiki.test.raw")
    ]
    vocab_file = os.path.join(args.data_dir, "vocab", "bert-base-uncased", "vocab.txt")
    for f in [*files, vocab_file]:
        if not os.path.isfile(f):
            sys.exit(f"benchmark data missing: {f} (see ../shared/data/SOURCES.md)")
    with open(vocab_file, encoding="utf-8") as f:
        vocab = [line.strip() for line in f]
    sys.path.insert(0, ROOT)

    with tempfile.TemporaryDirectory() as tmp:
        out_file = os.path.join(tmp, "ours.tfrecord")
        ours_cmd = [
            sys.executable,
            os.path.join(ROOT, "bert_data", "create_pretraining_data.py"),
            "--input-file", ",".join(files), "--output-file", out_file,
            "--vocab-file", vocab_file, "--do-lower-case",
            "--sequence-length", str(SEQ), "--mask-tokens", str(MASKS),
            "--duplication-factor", str(DUP), "--num-workers", str(args.workers), "--quiet",
        ]  # fmt: skip
        code = REFERENCE_CODE.format(
            tests=os.path.join(ROOT, "tests"), vocab=vocab_file, files=files,
            seq=SEQ, masks=MASKS, dup=DUP,
        )  # fmt: skip
        ref_out, _, _, ref_peak = run_sampled([sys.executable, "-c", code])
        _, ours_err, ours_wall, ours_peak = run_sampled(ours_cmd)
        ref = json.loads(ref_out)
        ours = stats_from_tfrecord(out_file, vocab)
    tokens = ref["input_tokens"]
    ours_inside = float(re.search(r"seconds: ([\d.]+)", ours_err).group(1))
    ours_tps = tokens / ours_inside
    ref_tps = tokens / ref["seconds"]
    result = {
        "input_tokens": tokens,
        "ours_seconds_in_process": ours_inside,
        "ours_seconds_end_to_end": ours_wall,
        "ratio_end_to_end": (tokens / ours_wall) / (tokens / ref["seconds"]),
        "reference_seconds_tokenize_and_instances": ref["seconds"],
        "ours_tokens_per_s": ours_tps,
        "reference_tokens_per_s": ref_tps,
        "ratio": ours_tps / ref_tps,
        "ours_peak_rss_mb": ours_peak / 2**20,
        "reference_peak_rss_mb": ref_peak / 2**20,
        "ours": describe(ours),
        "reference": describe(ref),
    }
    print(
        f"corpus: WikiText-2 raw valid+test, {tokens:,} WordPiece tokens; seq {SEQ}, {MASKS} masks, dup {DUP}"
    )
    print(
        f"ours (--num-workers {args.workers}, in process): {ours_inside:.2f} s, {ours_tps:,.0f} input tokens/s, peak RSS {ours_peak / 2**20:.0f} MB (process tree)"
    )
    print(
        f"ours end to end (interpreter start-up included): {ours_wall:.2f} s, {tokens / ours_wall:,.0f} input tokens/s"
    )
    print(
        f"reference (plain Python, tokenize+instances): {ref['seconds']:.2f} s, {ref_tps:,.0f} input tokens/s, peak RSS {ref_peak / 2**20:.0f} MB"
    )
    print(f"ratio: {ours_tps / ref_tps:.1f}x (end to end: {tokens / ours_wall / ref_tps:.1f}x)")
    print(f"{'statistic':<28}{'ours':>12}{'reference':>12}")
    for key in result["ours"]:
        print(f"{key:<28}{result['ours'][key]:>12.4f}{result['reference'][key]:>12.4f}")
    print("our summary:\n  " + "\n  ".join(ours_err.strip().splitlines()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()

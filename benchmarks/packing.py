"""Sequence packing on real text: efficiency and cost of `create_pretraining_data.py --packing`.

Corpus: WikiText-2 raw valid + test (../shared/data/wikitext-2; the train split is not available
there), bert-base-uncased vocab, 20 masks at seq 128 and 58 at seq 384, duplication factor 5, in two
document forms: "paragraphs" (the files as they are: a blank line after every paragraph, so every
paragraph is a document, as benchmarks/datagen.py reads them) and "articles" (blank lines kept only
before the ` = Title = ` lines, so a document is a whole article, one paragraph per line). For each,
the unpacked run and a packed run per algorithm: rows, real-token fraction, sequences per row,
the packing's share of the workers' chunk-building time, the fastest of 3 runs' wall time (the
tool's own `seconds`) and the output size.

    python3 benchmarks/packing.py [--data-dir ../shared/data] [--workers 2] [--json out.json]
"""

import argparse
import json
import os
import re
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bert_data import create_pretraining_data as cpd  # noqa: E402
from bert_data import packing  # noqa: E402

SETTINGS = ((128, 20), (384, 58))
_TITLE = re.compile(r"^ = [^=].* = $")


def articles(sources, path):
    """Writes `sources` with blank lines only before article titles (one document per article)."""
    with open(path, "w", encoding="utf-8") as out:
        for source in sources:
            with open(source, encoding="utf-8") as f:
                for line in f:
                    if _TITLE.match(line.rstrip("\n")):
                        out.write("\n")
                    if line.strip():
                        out.write(line)


def run(inputs, vocab, seq, masks, workers, out_dir, extra=(), repeats=3):
    """Stats of the fastest of `repeats` runs, with the output's size in bytes."""
    out = os.path.join(out_dir, "o.tfrecord")
    argv = ["--input-file", inputs, "--output-file", out, "--vocab-file", vocab,
            "--do-lower-case", "--quiet", "--sequence-length", str(seq), "--mask-tokens", str(masks),
            "--duplication-factor", "5", "--num-workers", str(workers), *extra]  # fmt: skip
    runs = [cpd.run(cpd.build_parser().parse_args(argv)) for _ in range(repeats)]
    return dict(min(runs, key=lambda s: s["seconds"]), bytes=os.path.getsize(out))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=os.path.join(ROOT, "..", "shared", "data"))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json")
    args = parser.parse_args()
    wiki = os.path.join(args.data_dir, "wikitext-2")
    sources = [os.path.join(wiki, f"wiki.{split}.raw") for split in ("valid", "test")]
    vocab = os.path.join(args.data_dir, "vocab", "bert-base-uncased", "vocab.txt")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        joined = os.path.join(tmp, "articles.txt")
        articles(sources, joined)
        for form, inputs in (("paragraphs", ",".join(sources)), ("articles", joined)):
            for seq, masks in SETTINGS:
                base = run(inputs, vocab, seq, masks, args.workers, tmp)
                for algorithm in packing.ALGORITHMS:
                    flags = ("--packing", "--packing-algorithm", algorithm)
                    packed = run(inputs, vocab, seq, masks, args.workers, tmp, flags)
                    real = packed["real_tokens"]
                    rows.append(
                        dict(
                            form=form,
                            seq=seq,
                            algorithm=algorithm,
                            instances=packed["instances"],
                            rows=packed["packs"],
                            fraction_before=real / (packed["instances"] * seq),
                            fraction_after=real / (packed["packs"] * seq),
                            per_row=packed["instances"] / packed["packs"],
                            packing_share=packed["packing_seconds"] / packed["build_seconds"],
                            seconds_unpacked=base["seconds"],
                            seconds_packed=packed["seconds"],
                            megabytes_unpacked=base["bytes"] / 1e6,
                            megabytes_packed=packed["bytes"] / 1e6,
                        )
                    )
                    print(json.dumps(rows[-1]), flush=True)
    print("| documents | seq | algorithm | instances → rows | real-token fraction | "
          "sequences/row | packing / chunk building | wall s unpacked → packed | MB unpacked → packed |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['form']} | {r['seq']} | {r['algorithm']} | {r['instances']:,} → {r['rows']:,} | "
              f"{r['fraction_before']:.4f} → {r['fraction_after']:.4f} | {r['per_row']:.2f} | "
              f"{r['packing_share']:.1%} | {r['seconds_unpacked']:.2f} → {r['seconds_packed']:.2f} | "
              f"{r['megabytes_unpacked']:.1f} → {r['megabytes_packed']:.1f} |")  # fmt: skip
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()

"""BERT-base pretraining on real text: effective tokens/s of ours on packed rows vs keras-hub's
BertMaskedLM on the same sequences padded, side by side.

Data: WikiText-2 raw valid + test (../shared/data/wikitext-2, every paragraph a document),
bert-base-uncased vocab, lower-cased, duplication factor 1, made by `create_pretraining_data.py`
twice per sequence length: unpacked (Google's standard layout, one instance per row, padded) for
keras-hub, and `--packing` (SPFHP, up to 3 sequences per row) for ours. Both files hold the same
instances. Seq 128 uses 20 masks per sequence, seq 384 uses 58.

Ours: BERT-base (configs/pretrain_base_128_phase1.json with the vocab's 30,522 ids), MLM + NSP,
LAMB, built as run_pretraining.py builds it on the packed records (block-diagonal attention,
per-sequence positions, MLM over K*P slots, NSP per sequence), its compiled step called on the
training pipeline's elements. keras-hub 0.32 (TensorFlow backend; `pip install keras-hub==0.32.0`,
not a project requirement): BertMaskedLM with AdamW on a batch of the padded records. Both run
micro-batch 8 rows, fp32 and bf16, XLA on and off; the best setting of each is compared.

Effective tokens/s = rows/s x the mean real (non-padding) tokens per row of the file the run reads
(the data's own figure, so it does not depend on which rows a few timed steps drew). MFU counts a
row as one sequence of the full length (padding included, as the hardware computes it).

    python3 benchmarks/real_data.py [--seqs 128,384] [--precisions 32,bf16] [--steps 8]
        [--warmup 1] [--data-dir ../shared/data] [--wait-quiet 300] [--json out.json]
"""

import argparse
import importlib.util
import json
import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "pretrain_base_128_phase1.json")
MASKS = {128: 20, 384: 58}
MICRO_BATCH, PER_PACK, VOCAB_SIZE = 8, 3, 30522
TARGETS = {"128": 1.4, "384": 1.8}


def _shared():
    """benchmarks/pretraining.py as a module (its timing, worker and quiet-CPU helpers)."""
    path = os.path.join(ROOT, "benchmarks", "pretraining.py")
    spec = importlib.util.spec_from_file_location("pretraining_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_records(data_dir, out_dir, seq, packed):
    """Writes the records of one setting; returns (path, rows, mean real tokens per row)."""
    sys.path.insert(0, ROOT)
    from bert_data import create_pretraining_data as cpd

    wiki = os.path.join(data_dir, "wikitext-2")
    sources = [os.path.join(wiki, f"wiki.{split}.raw") for split in ("valid", "test")]
    missing = [p for p in sources if not os.path.isfile(p)]
    if missing:
        sys.exit(f"WikiText-2 not found: {missing[0]} (see ../shared/data/SOURCES.md)")
    vocab = vocab_file(data_dir)
    out = os.path.join(out_dir, f"wiki_{seq}_{'packed' if packed else 'padded'}.tfrecord")
    argv = ["--input-file", ",".join(sources), "--output-file", out, "--vocab-file", vocab,
            "--do-lower-case", "--quiet", "--sequence-length", str(seq),
            "--mask-tokens", str(MASKS[seq]), "--duplication-factor", "1"]  # fmt: skip
    if packed:
        argv += ["--packing", "--max-sequences-per-pack", str(PER_PACK)]
    stats = cpd.run(cpd.build_parser().parse_args(argv))
    rows = stats["packs"] if packed else stats["instances"]
    return out, rows, stats["real_tokens"] / rows


def vocab_file(data_dir):
    return os.path.join(data_dir, "vocab", "bert-base-uncased", "vocab.txt")


def worker_ours(args):
    """Our step on the packed records, as run_pretraining.py builds it."""
    bench = _shared()
    sys.path.insert(0, ROOT)
    import modeling
    import options
    import training
    from objectives import pretraining

    argv = [
        "--config", CONFIG, "--train-file", args.records, "--vocab-file", args.vocab,
        "--vocab-size", str(VOCAB_SIZE), "--static-mask", "false",
        "--seq-length", str(args.seq), "--max-predictions-per-seq", str(MASKS[args.seq]),
        "--micro-batch-size", str(MICRO_BATCH), "--global-batch-size", str(MICRO_BATCH),
        "--precision", args.precision, "--xla", "true" if args.xla_flag == "on" else "false",
    ]  # fmt: skip
    cfg = options.parse_options(argv)
    task = pretraining.PretrainingTask(cfg)
    strategy = training.make_strategy(cfg.loop.replicas)
    model = task.build_model(strategy)
    trainer = training.Trainer(task.cfg, strategy, model, task.loss, tokens_fn=task.tokens)
    first, times, others, metrics = bench.time_trainer(
        trainer, task.dataset(), args.warmup, args.steps
    )
    slots = MASKS[args.seq] * PER_PACK
    return {
        "xla": args.xla_flag == "on",
        "first_step_s": first,
        "times_s": times,
        "other_cores": others,
        "flops_per_sequence": modeling.pretraining_flops_per_sequence(task.config, args.seq, slots),
        "peak_flops": training.measured_peak_flops(trainer.compute_dtype),
        "loss": metrics["loss"],
    }


def worker_keras(args):
    """keras-hub BertMaskedLM on the first micro-batch of the padded records."""
    os.environ["KERAS_BACKEND"] = "tensorflow"
    bench = _shared()
    import tensorflow as tf

    sys.path.insert(0, ROOT)
    import modeling
    import training
    from bert_data import records

    spec = records.parse_spec(args.seq, MASKS[args.seq], remask=False)
    rows = tf.data.TFRecordDataset(args.records).take(MICRO_BATCH).batch(MICRO_BATCH)
    f = {k: v.numpy() for k, v in tf.io.parse_example(next(iter(rows)), spec).items()}
    x = {
        "token_ids": f["input_ids"].astype("int32"),
        "segment_ids": f["segment_ids"].astype("int32"),
        "padding_mask": f["input_mask"].astype(bool),
        "mask_positions": f["masked_lm_positions"].astype("int32"),
    }
    model = bench.keras_bert_base(args.precision, VOCAB_SIZE)
    batch = (x, f["masked_lm_ids"].astype("int32"), f["masked_lm_weights"])
    first, times, others, loss = bench.time_keras(
        model, batch, 0.01, args.xla_flag == "on", args.warmup, args.steps
    )
    config = modeling.BertConfig(vocab_size=VOCAB_SIZE, use_cls_layer=True)
    dtype = {"32": "float32", "bf16": "bfloat16"}[args.precision]
    return {
        "xla": args.xla_flag == "on",
        "first_step_s": first,
        "times_s": times,
        "other_cores": others,
        "flops_per_sequence": modeling.pretraining_flops_per_sequence(
            config, args.seq, MASKS[args.seq]
        ),
        "peak_flops": training.measured_peak_flops(dtype),
        "loss": loss,
    }


def measure(bench, args, system, data, seq, precision, xla):
    """One measurement in a fresh interpreter; returns its result with tokens/s."""
    records, rows, real_per_row = data[(seq, system == "ours")]
    cmd = [
        sys.executable, os.path.abspath(__file__), "--worker", system, "--records", records,
        "--vocab", vocab_file(args.data_dir), "--seq", str(seq), "--precision", precision,
        "--xla-flag", "on" if xla else "off", "--steps", str(args.steps),
        "--warmup", str(args.warmup),
    ]  # fmt: skip
    label = f"{system} seq {seq} {precision} xla={'on' if xla else 'off'}"
    result = bench.measure(cmd, label, args.wait_quiet, MICRO_BATCH)
    result.update(
        system=system,
        seq=seq,
        precision=precision,
        rows=rows,
        real_tokens_per_row=real_per_row,
        tokens_per_s=result["seq_per_s"] * real_per_row,
    )
    return result


def print_results(results, peaks):
    header = (
        f"{'system':<11}{'seq':>5}{'prec':>6}{'xla':>5}{'step s':>8}{'rows/s':>8}"
        f"{'real/row':>9}{'tokens/s':>10}{'MFU':>7}{'RSS MB':>8}{'other':>7}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        print(
            f"{r['system']:<11}{r['seq']:>5}{r['precision']:>6}{'on' if r['xla'] else 'off':>5}"
            f"{r['median_step_s']:>8.3f}{r['seq_per_s']:>8.2f}{r['real_tokens_per_row']:>9.1f}"
            f"{r['tokens_per_s']:>10.0f}{r['mfu'] * 100:>6.1f}%{r['peak_rss_mb']:>8.0f}"
            f"{r['mean_other_cores']:>7.2f}"
        )
    peak_text = ", ".join(f"{p}: {v / 1e9:.0f} GFLOP/s" for p, v in peaks.items())
    print(
        "step s = median step time; real/row = mean real tokens per row of the records read; "
        f"tokens/s = rows/s x real/row; MFU against the matmul peak ({peak_text}); other = cores "
        "used by other processes during the timed steps."
    )


def ratios(results):
    """Ours/keras-hub effective tokens/s, each at its best XLA setting, per seq and precision."""
    out = {}
    for seq in sorted({r["seq"] for r in results}):
        for precision in sorted({r["precision"] for r in results}):
            best = {}
            for system in ("ours", "keras-hub"):
                found = [
                    r
                    for r in results
                    if (r["system"], r["seq"], r["precision"]) == (system, seq, precision)
                ]
                best[system] = max(found, key=lambda r: r["tokens_per_s"], default=None)
            if best["ours"] and best["keras-hub"]:
                out[f"{seq} {precision} ours/keras-hub tokens/s (best XLA settings)"] = (
                    best["ours"]["tokens_per_s"] / best["keras-hub"]["tokens_per_s"]
                )
    return out


def main():
    bench = _shared()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    bench.add_run_args(parser, steps=8, warmup=1)
    parser.add_argument("--seqs", default="128,384", help="comma-separated: 128, 384")
    parser.add_argument("--data-dir", default=os.path.join(ROOT, "..", "shared", "data"))
    # Internal: one measurement in this process.
    parser.add_argument("--worker", choices=("ours", "keras-hub"), help=argparse.SUPPRESS)
    parser.add_argument("--records", help=argparse.SUPPRESS)
    parser.add_argument("--vocab", help=argparse.SUPPRESS)
    parser.add_argument("--seq", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="32", help=argparse.SUPPRESS)
    parser.add_argument("--xla-flag", choices=("on", "off"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        bench.emit((worker_ours if args.worker == "ours" else worker_keras)(args))
        return

    precisions = bench.parse_precisions(args.precisions)
    seqs = [int(s) for s in args.seqs.split(",") if s.strip()]
    if not seqs or any(s not in MASKS for s in seqs):
        sys.exit(f"--seqs: use 128 and/or 384, got {args.seqs!r}")
    if importlib.util.find_spec("keras_hub") is None:
        sys.exit(f"keras-hub is not installed: pip install keras-hub=={bench.KERAS_HUB_VERSION}")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        data = {
            (seq, packed): make_records(args.data_dir, tmp, seq, packed)
            for seq in seqs
            for packed in (False, True)
        }
        for seq in seqs:
            padded, packed = data[(seq, False)], data[(seq, True)]
            print(
                f"seq {seq}: {padded[1]:,} padded rows ({padded[2] / seq:.3f} real) -> "
                f"{packed[1]:,} packed rows ({packed[2] / seq:.3f} real)",
                flush=True,
            )
        for seq in seqs:
            for precision in precisions:
                for system in ("ours", "keras-hub"):
                    for xla in (True, False):
                        results.append(measure(bench, args, system, data, seq, precision, xla))
    peaks = bench.add_mfu(results)
    print_results(results, peaks)
    found = ratios(results)
    bench.print_ratio_lines(found, TARGETS, 56)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"results": results, "ratios": found, "peaks": peaks}, f, indent=2)


if __name__ == "__main__":
    main()

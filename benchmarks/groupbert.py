"""GroupBERT-base vs BERT-base pretraining step: FLOPs, parameters and sequences/s side by side.

Each model is built as run_pretraining.py builds it from its config
(configs/groupbert/pretrain_base_groupbert_128.json and configs/pretrain_base_128_phase1.json)
with --micro-batch-size 8 --global-batch-size 8 --seq-length 128 --max-predictions-per-seq 20
--generated-data --precision 32|bf16, the standard data layout for both (GroupBERT needs it;
BERT gets --static-mask false) and XLA as each config says (or --xla on/off). The compiled
training step (MLM + NSP, the config's optimizer) is timed in its own subprocess, one after the
other, by benchmarks/pretraining.py's worker: compile and warm up, then the median of --steps
steps. FLOPs per sequence are `modeling.pretraining_flops_per_sequence` (matmuls, forward
+ backward); MFU is against the best matmul peak measured for that dtype in the run.

    python3 benchmarks/groupbert.py [--steps 4] [--warmup 1] [--precisions 32,bf16]
        [--xla config|on|off] [--wait-quiet 60] [--json out.json]
"""

import argparse
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = {
    "BERT-base": os.path.join(ROOT, "configs", "pretrain_base_128_phase1.json"),
    "GroupBERT-base": os.path.join(
        ROOT, "configs", "groupbert", "pretrain_base_groupbert_128.json"
    ),
}
MICRO_BATCH, SEQ, MASKS = 8, 128, 20
RESULT_TAG = "RESULT "


def _shared():
    """benchmarks/pretraining.py as a module (its timing and quiet-CPU helpers)."""
    path = os.path.join(ROOT, "benchmarks", "pretraining.py")
    spec = importlib.util.spec_from_file_location("pretraining_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _argv(model, precision, xla):
    argv = [
        "--config", MODELS[model], "--micro-batch-size", str(MICRO_BATCH),
        "--global-batch-size", str(MICRO_BATCH), "--precision", precision, "--generated-data",
        "--max-predictions-per-seq", str(MASKS), "--seq-length", str(SEQ),
        "--static-mask", "false",
    ]  # fmt: skip
    return argv if xla is None else argv + ["--xla", "true" if xla else "false"]


def worker(args):
    """One measurement in this process: benchmarks/pretraining.py's `worker_ours` (built as
    run_pretraining.py builds it, timed the same way) on this model's flags; returns its dict."""
    sys.path.insert(0, ROOT)
    shared = _shared()
    shared._our_argv = lambda precision, xla, layout: _argv(args.model, precision, xla)
    args.layout = "standard"
    result = shared.worker_ours(args)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB

    import modeling
    import options

    opts = options.parse_options(_argv(args.model, args.precision, args.xla_flag))
    model = modeling.BertModel(modeling.BertConfig(**options.bert_config_fields(opts)))
    result["parameters"] = int(sum(v.shape.num_elements() for v in model.params.values()))
    return result


def run_worker(model, precision, xla, args, wait_quiet):
    cmd = [
        sys.executable, os.path.abspath(__file__), "--worker", model, "--precision", precision,
        "--steps", str(args.steps), "--warmup", str(args.warmup),
    ]  # fmt: skip
    if xla is not None:
        cmd += ["--xla-flag", "on" if xla else "off"]
    waited = wait_quiet(args.wait_quiet) if args.wait_quiet > 0 else 0.0
    label = f"{model} {precision} xla={'config' if xla is None else xla}"
    print(f"... {label} (waited {waited:.0f} s for a quiet CPU)", file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [x for x in proc.stdout.splitlines() if x.startswith(RESULT_TAG)]
    if proc.returncode or not lines:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        sys.exit(f"benchmark worker failed ({label}), exit {proc.returncode}:\n{tail}")
    result = json.loads(lines[-1][len(RESULT_TAG) :])
    result.update(model=model, precision=precision)
    result["median_step_s"] = statistics.median(result["times_s"])
    result["seq_per_s"] = MICRO_BATCH / result["median_step_s"]
    result["mean_other_cores"] = statistics.mean(result["other_cores"])
    return result


def print_table(results):
    peaks = {}
    for r in results:
        peaks[r["precision"]] = max(peaks.get(r["precision"], 0.0), r["peak_flops"])
    header = (
        f"{'model':<16}{'prec':<6}{'xla':<5}{'params M':>9}{'GFLOP/seq':>10}{'first s':>8}"
        f"{'step s':>8}{'seq/s':>7}{'TFLOP/s':>8}{'MFU':>7}{'RSS MB':>8}{'other':>7}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        achieved = r["seq_per_s"] * r["flops_per_sequence"]
        r["mfu"] = achieved / peaks[r["precision"]]
        print(
            f"{r['model']:<16}{r['precision']:<6}{'on' if r['xla'] else 'off':<5}"
            f"{r['parameters'] / 1e6:>9.1f}{r['flops_per_sequence'] / 1e9:>10.1f}"
            f"{r['first_step_s']:>8.1f}{r['median_step_s']:>8.2f}{r['seq_per_s']:>7.2f}"
            f"{achieved / 1e12:>8.3f}"
            f"{r['mfu'] * 100:>6.1f}%{r['peak_rss_mb']:>8.0f}{r['mean_other_cores']:>7.2f}"
        )
    peak_text = ", ".join(f"{p}: {v / 1e9:.0f} GFLOP/s" for p, v in peaks.items())
    print(
        "first s = first step (tracing and compiling); step s = median step; "
        f"GFLOP/seq = matmul FLOPs of one sequence, forward + backward; MFU against the matmul "
        f"peak ({peak_text}); other = cores used by other processes during the timed steps."
    )
    ratios = {}
    for precision in sorted({r["precision"] for r in results}):
        by_model = {
            m: max(
                (r for r in results if r["model"] == m and r["precision"] == precision),
                key=lambda r: r["seq_per_s"],
                default=None,
            )
            for m in MODELS
        }
        bert, group = by_model["BERT-base"], by_model["GroupBERT-base"]
        if bert and group:
            name = f"GroupBERT/BERT {precision}"
            ratios[f"{name} seq/s"] = group["seq_per_s"] / bert["seq_per_s"]
            ratios[f"{name} FLOP/seq"] = group["flops_per_sequence"] / bert["flops_per_sequence"]
            ratios[f"{name} params"] = group["parameters"] / bert["parameters"]
    for name, value in ratios.items():
        print(f"{name:<36}{value:6.2f}x")
    return ratios, peaks


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=4, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps after compiling")
    parser.add_argument("--precisions", default="32,bf16", help="comma-separated: 32, bf16")
    parser.add_argument(
        "--xla", choices=("config", "on", "off"), default="config", help="XLA setting of the step"
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=60,
        help="wait up to this many seconds for a quiet CPU before each measurement (0: no)",
    )
    parser.add_argument("--json", help="also write every figure to this JSON file")
    parser.add_argument("--worker", choices=tuple(MODELS), help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="32", help=argparse.SUPPRESS)
    parser.add_argument("--xla-flag", choices=("on", "off"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        args.model = args.worker
        args.xla_flag = None if args.xla_flag is None else args.xla_flag == "on"
        print(RESULT_TAG + json.dumps(worker(args)), flush=True)
        return

    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    if not precisions or any(p not in ("32", "bf16") for p in precisions):
        sys.exit(f"--precisions: use 32 and/or bf16, got {args.precisions!r}")
    xla = {"config": None, "on": True, "off": False}[args.xla]
    print(
        f"pretraining step, seq {SEQ}, micro-batch {MICRO_BATCH}, {MASKS} masked positions, "
        f"{os.cpu_count()} CPUs; {args.steps} timed steps after {args.warmup} warm-up",
        flush=True,
    )
    wait_quiet = _shared().wait_quiet
    results = [
        run_worker(model, precision, xla, args, wait_quiet)
        for precision in precisions
        for model in MODELS
    ]
    ratios, peaks = print_table(results)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"results": results, "ratios": ratios, "peaks": peaks}, f, indent=2)


if __name__ == "__main__":
    main()

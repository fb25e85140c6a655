"""BERT-base pretraining step: ours (MLM + NSP, LAMB) vs keras-hub's BertMaskedLM, side by side.

Sizes: BERT-base, seq 128, micro-batch 8, 20 masked positions, one device, fp32 and bf16.
Ours is built exactly as run_pretraining.py builds it (configs/pretrain_base_128_phase1.json with
--micro-batch-size 8 --global-batch-size 8 --precision 32|bf16 --generated-data
--max-predictions-per-seq 20 --seq-length 128) and the compiled `Trainer.step_function()` is called
on elements of the generated dataset. keras-hub (0.32, TensorFlow backend, not a project
requirement: `pip install keras-hub==0.32.0`) trains `BertMaskedLM` with AdamW, with and without
jit_compile (its best setting is compared), on fixed random inputs of the same shape; it has no
NSP head (about 0.01% of the FLOPs).

Each measurement runs in its own subprocess (no shared memory or threads), one after the other:
compile and warm up, then time `--steps` steps and keep the median. MFU = model FLOPs
(`modeling.pretraining_flops_per_sequence`) / the best matmul peak
(`training.measured_peak_flops`) measured in any of the run's processes for that dtype. Peak RSS
is the subprocess's own maximum resident set.

    python3 benchmarks/pretraining.py [--steps 15] [--precisions 32,bf16] [--xla both|on|off|config]
        [--standard] [--no-keras] [--keras-xla both|on|off] [--wait-quiet 300] [--json out.json]

The CPU may be shared: before each measurement the script waits (up to --wait-quiet seconds) until
no other process is busy, and it reports how many cores other processes used during the timed
steps ("other"). Compare ratios from one run, not absolute numbers across runs.
"""

import argparse
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import psutil

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "pretrain_base_128_phase1.json")
MICRO_BATCH, SEQ, MASKS = 8, 128, 20
KERAS_HUB_VERSION = "0.32.0"
RESULT_TAG = "RESULT "
TARGETS = {"ours/keras-hub 32": 1.15, "ours/keras-hub bf16": 1.3, "ours bf16/ours 32": 1.6}


def _our_argv(precision, xla, layout):
    """run_pretraining.py flags of one measurement (xla None = the config's setting)."""
    argv = [
        "--config", CONFIG, "--micro-batch-size", str(MICRO_BATCH),
        "--global-batch-size", str(MICRO_BATCH), "--precision", precision, "--generated-data",
        "--max-predictions-per-seq", str(MASKS), "--seq-length", str(SEQ),
    ]  # fmt: skip
    if xla is not None:
        argv += ["--xla", "true" if xla else "false"]
    if layout == "standard":
        argv += ["--static-mask", "false"]
    return argv


def _busy_cpu_seconds():
    t = psutil.cpu_times()
    return t.user + t.nice + t.system + t.irq + t.softirq


def _time_steps(run_step, warmup, steps):
    """Compile and warm up, then time `steps` calls.

    Returns:
      (seconds of the first call, per-step seconds, per-step cores used by other processes).
    """
    me = psutil.Process()
    start = time.perf_counter()
    run_step()
    first = time.perf_counter() - start
    for _ in range(warmup):
        run_step()
    times, others = [], []
    for _ in range(steps):
        busy, own = _busy_cpu_seconds(), sum(me.cpu_times()[:2])
        start = time.perf_counter()
        run_step()
        wall = time.perf_counter() - start
        other = _busy_cpu_seconds() - busy - (sum(me.cpu_times()[:2]) - own)
        times.append(wall)
        others.append(max(other, 0.0) / wall)
    return first, times, others


def time_trainer(trainer, dataset, warmup, steps):
    """`_time_steps` of a `training.Trainer`'s compiled step on elements of `dataset`.

    Returns:
      (first-call seconds, per-step seconds, per-step other cores, the last step's metrics).
    """
    step_fn = trainer.step_function()
    iterator = iter(dataset)
    metrics = {}

    def run_step():
        # As the training loop: fetch an element, run the step, read every metric back.
        out, _ = step_fn([next(iterator)])
        metrics.update({k: float(v[-1]) for k, v in out.items()})

    return (*_time_steps(run_step, warmup, steps), metrics)


def worker_ours(args):
    sys.path.insert(0, ROOT)
    import modeling
    import options
    import training
    from objectives import pretraining

    cfg = options.parse_options(_our_argv(args.precision, args.xla_flag, args.layout))
    task = pretraining.PretrainingTask(cfg)  # as run_pretraining.py builds it
    strategy = training.make_strategy(cfg.loop.replicas)
    model = task.build_model(strategy)
    trainer = training.Trainer(task.cfg, strategy, model, task.loss, tokens_fn=task.tokens)
    first, times, others, metrics = time_trainer(trainer, task.dataset(), args.warmup, args.steps)
    configured = options.parse_options(_our_argv(args.precision, None, args.layout)).loop.xla
    return {
        "xla": bool(cfg.loop.xla),
        "xla_is_config": bool(cfg.loop.xla) == bool(configured),
        "vocab_size": task.config.vocab_size,
        "first_step_s": first,
        "times_s": times,
        "other_cores": others,
        "flops_per_sequence": modeling.pretraining_flops_per_sequence(task.config, SEQ, MASKS),
        "peak_flops": training.measured_peak_flops(trainer.compute_dtype),
        "loss": metrics["loss"],
    }


def worker_keras(args):
    os.environ["KERAS_BACKEND"] = "tensorflow"
    import keras_hub
    import numpy as np

    sys.path.insert(0, ROOT)
    import modeling
    import training

    model = keras_bert_base(args.precision, args.vocab_size)
    rng = np.random.default_rng(0)
    positions = np.sort(
        np.argsort(rng.random((MICRO_BATCH, SEQ - 1)), axis=1)[:, :MASKS] + 1, axis=1
    )
    x = {
        "token_ids": rng.integers(5, args.vocab_size, (MICRO_BATCH, SEQ)).astype(np.int32),
        "segment_ids": (np.arange(SEQ)[None, :] >= SEQ // 2)
        .repeat(MICRO_BATCH, 0)
        .astype(np.int32),
        "padding_mask": np.ones((MICRO_BATCH, SEQ), bool),
        "mask_positions": positions.astype(np.int32),
    }
    y = rng.integers(5, args.vocab_size, (MICRO_BATCH, MASKS)).astype(np.int32)
    weights = np.ones((MICRO_BATCH, MASKS), np.float32)
    first, times, others, loss = time_keras(
        model, (x, y, weights), 0.01, not args.keras_no_xla, args.warmup, args.steps
    )
    # Our FLOP count plus the MLM transform layer keras-hub has, minus NSP (negligible).
    config = modeling.BertConfig(vocab_size=args.vocab_size, use_cls_layer=True)
    dtype = {"32": "float32", "bf16": "bfloat16"}[args.precision]
    return {
        "xla": not args.keras_no_xla,
        "xla_is_config": False,
        "vocab_size": args.vocab_size,
        "keras_hub_version": keras_hub.__version__,
        "first_step_s": first,
        "times_s": times,
        "other_cores": others,
        "flops_per_sequence": modeling.pretraining_flops_per_sequence(config, SEQ, MASKS),
        "peak_flops": training.measured_peak_flops(dtype),
        "loss": loss,
    }


def keras_bert_base(precision, vocab_size):
    """keras-hub's BERT-base `BertMaskedLM` (dropout 0.1, no preprocessor) in `precision`."""
    import keras
    import keras_hub

    if precision == "bf16":
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=vocab_size,
        num_layers=12,
        num_heads=12,
        hidden_dim=768,
        intermediate_dim=3072,
        dropout=0.1,
        max_sequence_length=512,
    )
    return keras_hub.models.BertMaskedLM(backbone=backbone, preprocessor=None)


def time_keras(model, batch, weight_decay, jit_compile, warmup, steps):
    """Compile a keras-hub task model (AdamW, no clipping; from-logits CE; weighted accuracy) and
    `_time_steps` its `train_on_batch` on `batch` = (x, y, sample_weight).

    Returns:
      (first-call seconds, per-step seconds, per-step other cores, the last step's loss).
    """
    import keras

    model.compile(
        optimizer=keras.optimizers.AdamW(learning_rate=1e-4, weight_decay=weight_decay),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        weighted_metrics=[keras.metrics.SparseCategoricalAccuracy()],
        jit_compile=jit_compile,
    )
    x, y, weights = batch
    losses = []

    def run_step():
        losses.append(float(model.train_on_batch(x, y, sample_weight=weights)[0]))

    return (*_time_steps(run_step, warmup, steps), losses[-1])


def wait_quiet(limit, threshold=0.15, window=5.0):
    """Wait until other processes used less than `threshold` cores over `window` seconds.

    Returns the seconds waited (gives up after `limit`).
    """
    start = time.time()
    me = os.getpid()
    while time.time() - start < limit:
        busy = _busy_cpu_seconds()
        mine = psutil.Process(me).cpu_times()
        time.sleep(window)
        now = psutil.Process(me).cpu_times()
        other = _busy_cpu_seconds() - busy - (now.user + now.system - mine.user - mine.system)
        if other / window < threshold:
            break
    return time.time() - start


def run_worker(kind, precision, args, xla=None, layout="static", vocab_size=None):
    """Runs one measurement in a fresh interpreter; returns its result dict. For keras-hub,
    `xla` is its jit_compile setting."""
    cmd = [
        sys.executable, os.path.abspath(__file__), "--worker", kind, "--precision", precision,
        "--steps", str(args.steps), "--warmup", str(args.warmup), "--layout", layout,
    ]  # fmt: skip
    if xla is not None:
        cmd += ["--xla-flag", "on" if xla else "off"]
    if vocab_size:
        cmd += ["--vocab-size", str(vocab_size)]
    if kind != "ours" and not xla:
        cmd += ["--keras-no-xla"]
    if kind == "ours":
        label = f"ours {precision} {layout} xla={'config' if xla is None else xla}"
    else:
        label = f"{kind} {precision} xla={xla}"
    result = measure(cmd, label, args.wait_quiet, MICRO_BATCH)
    result.update(system=kind, precision=precision, layout=layout if kind == "ours" else "-")
    return result


def measure(cmd, label, wait_limit, batch):
    """Runs one worker command in a fresh interpreter, after waiting up to `wait_limit` seconds
    for a quiet CPU; returns its result dict plus the median step, seq/s (`batch` sequences a
    step) and the mean cores other processes used. Exits with the worker's log tail if it fails."""
    waited = wait_quiet(wait_limit) if wait_limit > 0 else 0.0
    print(f"... {label} (waited {waited:.0f} s for a quiet CPU)", file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [x for x in proc.stdout.splitlines() if x.startswith(RESULT_TAG)]
    if proc.returncode or not lines:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        sys.exit(f"benchmark worker failed ({label}), exit {proc.returncode}:\n{tail}")
    result = json.loads(lines[-1][len(RESULT_TAG) :])
    result["median_step_s"] = statistics.median(result["times_s"])
    result["seq_per_s"] = batch / result["median_step_s"]
    result["mean_other_cores"] = statistics.mean(result["other_cores"])
    return result


def emit(result):
    """Worker side: add this process's peak RSS to `result` and print it for `measure`."""
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB
    print(RESULT_TAG + json.dumps(result), flush=True)


def add_mfu(results):
    """MFU of each result against the best peak measured for its dtype in this run."""
    peaks = {}
    for r in results:
        peaks[r["precision"]] = max(peaks.get(r["precision"], 0.0), r["peak_flops"])
    for r in results:
        r["peak_flops_used"] = peaks[r["precision"]]
        r["mfu"] = r["seq_per_s"] * r["flops_per_sequence"] / peaks[r["precision"]]
    return peaks


def print_table(results, peaks):
    header = (
        f"{'system':<10}{'prec':<6}{'layout':<10}{'xla':<6}{'step s':>8}{'min s':>8}"
        f"{'seq/s':>8}{'MFU':>7}{'RSS MB':>8}{'other':>7}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        xla = ("on" if r["xla"] else "off") + ("*" if r["xla_is_config"] else "")
        print(
            f"{r['system']:<10}{r['precision']:<6}{r['layout']:<10}{xla:<6}"
            f"{r['median_step_s']:>8.3f}{min(r['times_s']):>8.3f}{r['seq_per_s']:>8.2f}"
            f"{r['mfu'] * 100:>6.1f}%{r['peak_rss_mb']:>8.0f}{r['mean_other_cores']:>7.2f}"
        )
    peak_text = ", ".join(f"{p}: {v / 1e9:.0f} GFLOP/s" for p, v in peaks.items())
    print(
        "step s = median step time; min s = fastest step; MFU = model FLOPs / matmul peak "
        f"({peak_text}); * = the config's xla setting; other = cores used by other processes "
        "during the timed steps."
    )


def _best(results, **keys):
    """The fastest result matching `keys`, or None."""
    found = [r for r in results if all(r[k] == v for k, v in keys.items())]
    return max(found, key=lambda r: r["seq_per_s"], default=None)


def print_ratios(results, precisions):
    """Ratios against the targets, for each XLA setting of ours and for the best of each."""
    ratios = {}
    settings = sorted({r["xla"] for r in results if r["system"] == "ours"}, reverse=True)
    for xla in [*settings, "best"]:
        keys = {} if xla == "best" else {"xla": xla}
        label = "best XLA setting" if xla == "best" else f"ours xla={'on' if xla else 'off'}"
        ours = {
            p: _best(results, system="ours", layout="static", precision=p, **keys)
            for p in precisions
        }
        for precision in precisions:
            keras = _best(results, system="keras-hub", precision=precision)
            if ours[precision] and keras:
                name = f"ours/keras-hub {precision}"
                ratios[f"{name} ({label})"] = ours[precision]["seq_per_s"] / keras["seq_per_s"]
        if ours.get("32") and ours.get("bf16"):
            ratios[f"ours bf16/ours 32 ({label})"] = (
                ours["bf16"]["seq_per_s"] / ours["32"]["seq_per_s"]
            )
    print_ratio_lines(ratios, TARGETS, 48)
    return ratios


def print_ratio_lines(ratios, targets, width):
    """One line per ratio; a ratio named `key ...` for a key of `targets` is marked met/missed."""
    for name, value in ratios.items():
        target = next((v for k, v in targets.items() if f"{name} ".startswith(f"{k} ")), None)
        note = f"  (target >= {target}: {'met' if value >= target else 'missed'})" if target else ""
        print(f"{name:<{width}}{value:6.2f}x{note}")


def add_run_args(parser, steps, warmup):
    """The flags every benchmark here shares: --steps --warmup --precisions --wait-quiet --json."""
    parser.add_argument("--steps", type=int, default=steps, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=warmup, help="untimed steps after compiling")
    parser.add_argument("--precisions", default="32,bf16", help="comma-separated: 32, bf16")
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=300,
        help="before each measurement wait up to this many seconds for other processes to go "
        "quiet (0: do not wait)",
    )
    parser.add_argument("--json", help="also write every figure to this JSON file")


def parse_precisions(text):
    """--precisions as a list of 32 and/or bf16 (exits on anything else)."""
    precisions = [p.strip() for p in text.split(",") if p.strip()]
    if not precisions or any(p not in ("32", "bf16") for p in precisions):
        sys.exit(f"--precisions: use 32 and/or bf16, got {text!r}")
    return precisions


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_run_args(parser, steps=15, warmup=2)
    parser.add_argument(
        "--xla",
        choices=("both", "on", "off", "config"),
        default="both",
        help="our step's XLA setting: both (default), on, off, or the config's",
    )
    parser.add_argument("--standard", action="store_true", help="also the standard data layout")
    parser.add_argument("--no-keras", action="store_true", help="measure ours only")
    parser.add_argument(
        "--keras-xla",
        choices=("both", "on", "off"),
        default="both",
        help="keras-hub's jit_compile: both (default; its best is compared), on or off",
    )
    parser.add_argument("--keras-no-xla", action="store_true", help=argparse.SUPPRESS)
    # Internal: one measurement in this process.
    parser.add_argument("--worker", choices=("ours", "keras-hub"), help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="32", help=argparse.SUPPRESS)
    parser.add_argument("--layout", default="static", help=argparse.SUPPRESS)
    parser.add_argument("--xla-flag", choices=("on", "off"), help=argparse.SUPPRESS)
    parser.add_argument("--vocab-size", type=int, default=30400, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        args.xla_flag = None if args.xla_flag is None else args.xla_flag == "on"
        emit((worker_ours if args.worker == "ours" else worker_keras)(args))
        return

    precisions = parse_precisions(args.precisions)
    use_keras = not args.no_keras
    if use_keras and importlib.util.find_spec("keras_hub") is None:
        print(
            "keras-hub is not installed, so only our step is measured. For the comparison run "
            f"`pip install keras-hub=={KERAS_HUB_VERSION}` (benchmark only; not a project "
            "requirement).",
            file=sys.stderr,
        )
        use_keras = False
    xla_settings = {"config": [None], "on": [True], "off": [False], "both": [True, False]}
    print(
        f"BERT-base pretraining step, seq {SEQ}, micro-batch {MICRO_BATCH}, {MASKS} masked "
        f"positions, {os.cpu_count()} CPUs; {args.steps} timed steps after {args.warmup} warm-up",
        flush=True,
    )
    results, vocab = [], None
    for precision in precisions:
        for xla in xla_settings[args.xla]:
            for layout in ["static", "standard"] if args.standard else ["static"]:
                results.append(run_worker("ours", precision, args, xla, layout))
                vocab = results[-1]["vocab_size"]
        if use_keras:
            for keras_xla in xla_settings[args.keras_xla]:
                results.append(
                    run_worker("keras-hub", precision, args, keras_xla, vocab_size=vocab)
                )
    peaks = add_mfu(results)
    print_table(results, peaks)
    keras_runs = [r for r in results if r["system"] == "keras-hub"]
    if keras_runs and keras_runs[0]["keras_hub_version"] != KERAS_HUB_VERSION:
        print(f"note: keras-hub {keras_runs[0]['keras_hub_version']}, not {KERAS_HUB_VERSION}")
    ratios = print_ratios(results, precisions)
    print(
        "ours: MLM + NSP, LAMB; layout static = the config's remask layout, standard = "
        "--static-mask false. keras-hub: BertMaskedLM (MLM only, with the MLM transform layer), "
        f"AdamW, XLA {args.keras_xla}; vocab {vocab}."
    )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"results": results, "ratios": ratios, "peaks": peaks}, f, indent=2)


if __name__ == "__main__":
    main()

"""GPT-2 small training step: ours vs keras-hub's GPT2CausalLM vs transformers' GPT2LMHeadModel.

Sizes: GPT-2 small (configs/gpt2/gpt2.json: 12 layers, hidden 768, 12 heads, vocab 50257), seq 512
at micro-batch 4 and seq 1024 at micro-batch 2, one device, fp32 and bf16, random initial values,
dropout 0.1 everywhere. Ours is built exactly as train_gpt2.py builds it (--model gpt2 --max-len SEQ
--dataset generated --batch-size MB --gradient-accumulation 1 --device-iterations 1
--precision 32|bf16 --xla true|false: AdamW, weight decay 0, no clipping) and the compiled
`Trainer.step_function()` is called on elements of the generated dataset, with XLA on and off.
keras-hub (0.32, TensorFlow backend, not a project requirement:
`pip install --no-deps keras-hub==0.32.0`) trains `GPT2CausalLM` (preprocessor None) with AdamW
(weight decay 0, no clipping) by `train_on_batch` on fixed random [MB, SEQ] tokens, jit_compile on
and off (its best is compared), bf16 by the mixed_bfloat16 policy. transformers trains
`GPT2LMHeadModel` (the same config.json, n_positions = SEQ) on PyTorch CPU with torch.optim.AdamW
(forward, backward, step; labels = input_ids), bf16 by torch.autocast, as many threads as cores.

Each measurement runs in its own subprocess (no shared memory or threads), one after the other, by
benchmarks/pretraining.py's helpers: compile and warm up, then time `--steps` steps and keep the
median. MFU = model FLOPs (`modeling_gpt2.flops_per_token(config, seq) * seq` per sequence, forward
+ backward, as train_gpt2.py counts them; our worker's count serves all three) / the best matmul
peak (`training.measured_peak_flops`) measured in any of the run's TensorFlow processes for that
dtype. Peak RSS is the subprocess's own maximum resident set; "first s" is the first step (tracing
and compiling included).

    python3 benchmarks/gpt2.py [--seq 512,1024] [--micro-batch 4,2] [--precisions 32,bf16]
        [--steps 5] [--warmup 1] [--xla both|on|off] [--keras-xla both|on|off] [--no-keras]
        [--no-torch] [--wait-quiet 300] [--json out.json]

Smoke test (tiny sizes, every peer equally; `--layers/--hidden/--heads/--vocab` write a temporary
config.json in Hugging Face keys that ours gets as --model-config):

    python3 benchmarks/gpt2.py --seq 64 --micro-batch 2 --layers 2 --hidden 64 --heads 2 \\
        --vocab 1000 --steps 2 --warmup 1 --wait-quiet 0

The CPU may be shared: before each measurement the script waits (up to --wait-quiet seconds) until
no other process is busy, and it reports how many cores other processes used during the timed
steps ("other"). Compare ratios from one run, not absolute numbers across runs.
"""

import argparse
import importlib.util
import json
import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from benchmarks.pretraining import (
    _best,
    _time_steps,
    add_mfu,
    add_run_args,
    emit,
    measure,
    parse_precisions,
    print_ratio_lines,
    time_keras,
    time_trainer,
)

CONFIG = os.path.join(ROOT, "configs", "gpt2", "gpt2.json")
KERAS_HUB_VERSION = "0.32.0"
DEFAULT_MICRO_BATCH = {512: 4, 1024: 2}  # as fits GPT-2 small on one device
TARGETS = {"ours/keras-hub": 1.15}
SYSTEMS = ("ours", "keras-hub", "transformers")
DTYPES = {"32": "float32", "bf16": "bfloat16"}


def _ints(text, flag):
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        sys.exit(f"{flag}: comma-separated positive integers, got {text!r}")
    return values


def _model_config(path):
    """The run's config.json (Hugging Face GPT-2 keys) as a dict."""
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def write_config(args, folder):
    """configs/gpt2/gpt2.json with --layers/--hidden/--heads/--vocab applied, in `folder`; returns
    its path, or None when nothing is overridden (ours then takes --model gpt2 as it is)."""
    overrides = {"n_layer": args.layers, "n_embd": args.hidden, "n_head": args.heads}
    overrides["vocab_size"] = args.vocab
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if not overrides:
        return None
    config = {k: v for k, v in _model_config(CONFIG).items() if not k.startswith("_")}
    config.update(overrides)
    config["bos_token_id"] = config["eos_token_id"] = min(50256, config["vocab_size"] - 1)
    path = os.path.join(folder, "config.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
    return path


def _our_argv(args):
    """train_gpt2.py flags of one measurement."""
    argv = [
        "--model", "gpt2", "--max-len", str(args.seq), "--dataset", "generated",
        "--batch-size", str(args.micro_batch), "--gradient-accumulation", "1",
        "--device-iterations", "1", "--precision", args.precision,
        "--xla", "true" if args.xla_flag == "on" else "false",
    ]  # fmt: skip
    if args.config_file:
        argv += ["--model-config", args.config_file]
    return argv


def _random_tokens(args, vocab):
    """Fixed random ids [MB, SEQ + 1] (inputs are [:, :-1], next-token targets [:, 1:])."""
    import numpy as np

    rng = np.random.default_rng(0)
    return rng.integers(1, vocab, (args.micro_batch, args.seq + 1)).astype(np.int32)


def _result(args, first, times, others, loss, peak_flops, **extra):
    return {
        "xla": args.xla_flag == "on",
        "first_step_s": first,
        "times_s": times,
        "other_cores": others,
        "peak_flops": peak_flops,
        "loss": loss,
        **extra,
    }


def worker_ours(args):
    import options_gpt2
    import training
    from objectives.gpt2 import GPT2Task

    cfg = options_gpt2.parse(_our_argv(args))
    task = GPT2Task(cfg)  # as train_gpt2.py builds it
    cfg = task.cfg
    strategy = training.make_strategy(1)
    model = task.build_model(strategy)
    trainer = training.Trainer(cfg, strategy, model, task.loss, **task.trainer_options())
    first, times, others, metrics = time_trainer(trainer, task.dataset(), args.warmup, args.steps)
    peak = training.measured_peak_flops(trainer.compute_dtype)
    flops = task.flops_per_sample()  # modeling_gpt2.flops_per_token(config, seq) * seq
    return _result(
        args, first, times, others, metrics["loss"], peak, xla=bool(cfg.loop.xla),
        flops_per_sequence=flops,
    )  # fmt: skip


def worker_keras(args):
    os.environ["KERAS_BACKEND"] = "tensorflow"
    import keras
    import keras_hub
    import numpy as np

    import training

    config = _model_config(args.config_file or CONFIG)
    if args.precision == "bf16":
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=config["vocab_size"],
        num_layers=config["n_layer"],
        num_heads=config["n_head"],
        hidden_dim=config["n_embd"],
        intermediate_dim=config.get("n_inner") or 4 * config["n_embd"],
        max_sequence_length=args.seq,
        dropout=0.1,
    )
    model = keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)
    ids = _random_tokens(args, config["vocab_size"])
    x = {"token_ids": ids[:, :-1], "padding_mask": np.ones(ids[:, :-1].shape, bool)}
    batch = (x, ids[:, 1:], np.ones(ids[:, 1:].shape, np.float32))
    first, times, others, loss = time_keras(
        model, batch, 0.0, args.xla_flag == "on", args.warmup, args.steps
    )
    peak = training.measured_peak_flops(DTYPES[args.precision])
    return _result(args, first, times, others, loss, peak, keras_hub_version=keras_hub.__version__)


def worker_torch(args):
    import contextlib

    import torch
    import transformers

    torch.set_num_threads(os.cpu_count())
    torch.manual_seed(0)
    config = transformers.GPT2Config.from_json_file(args.config_file or CONFIG)
    config.n_positions = args.seq
    model = transformers.GPT2LMHeadModel(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0)
    ids = torch.from_numpy(_random_tokens(args, config.vocab_size)[:, :-1]).long()
    if args.precision == "bf16":
        autocast = torch.autocast("cpu", dtype=torch.bfloat16)
    else:
        autocast = contextlib.nullcontext()
    losses = []

    def run_step():
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        losses.append(float(loss))

    first, times, others = _time_steps(run_step, args.warmup, args.steps)
    # No TensorFlow here (its memory would count): MFU uses the peak of the TensorFlow workers.
    return _result(
        args, first, times, others, losses[-1], 0.0, torch_version=torch.__version__,
        transformers_version=transformers.__version__, attn=config._attn_implementation,
    )  # fmt: skip


WORKERS = {"ours": worker_ours, "keras-hub": worker_keras, "transformers": worker_torch}


def run_worker(kind, seq, micro_batch, precision, xla, args, config_file):
    """One measurement in a fresh interpreter; returns its result dict."""
    cmd = [
        sys.executable, os.path.abspath(__file__), "--worker", kind, "--precision", precision,
        "--seq", str(seq), "--micro-batch", str(micro_batch), "--steps", str(args.steps),
        "--warmup", str(args.warmup), "--xla-flag", "on" if xla else "off",
    ]  # fmt: skip
    if config_file:
        cmd += ["--config-file", config_file]
    label = f"{kind} seq {seq} mb {micro_batch} {precision}" + (
        "" if kind == "transformers" else f" xla={'on' if xla else 'off'}"
    )
    result = measure(cmd, label, args.wait_quiet, micro_batch)
    result.update(system=kind, seq=seq, micro_batch=micro_batch, precision=precision)
    result["tokens_per_s"] = result["seq_per_s"] * seq
    return result


def print_table(results, seq, precision):
    rows = [r for r in results if r["seq"] == seq and r["precision"] == precision]
    if not rows:
        return
    print(f"\nseq {seq}, micro-batch {rows[0]['micro_batch']}, precision {precision}")
    header = (
        f"{'system':<14}{'xla':<5}{'step s':>8}{'tokens/s':>10}{'seq/s':>8}{'MFU':>7}"
        f"{'RSS MiB':>9}{'first s':>9}{'other':>7}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        xla = "-" if r["system"] == "transformers" else ("on" if r["xla"] else "off")
        print(
            f"{r['system']:<14}{xla:<5}{r['median_step_s']:>8.3f}{r['tokens_per_s']:>10.0f}"
            f"{r['seq_per_s']:>8.2f}{r['mfu'] * 100:>6.1f}%{r['peak_rss_mb']:>9.0f}"
            f"{r['first_step_s']:>9.1f}{r['mean_other_cores']:>7.2f}"
        )


def print_ratios(results, seqs, precisions):
    """ours best / keras-hub best (and / transformers) per seq and precision, against TARGETS."""
    ratios = {}
    for seq in seqs:
        for precision in precisions:
            ours = _best(results, system="ours", seq=seq, precision=precision)
            for peer in SYSTEMS[1:]:
                other = _best(results, system=peer, seq=seq, precision=precision)
                if ours and other:
                    name = f"ours/{peer} seq {seq} {precision}"
                    ratios[name] = ours["seq_per_s"] / other["seq_per_s"]
    print_ratio_lines(ratios, TARGETS, 40)
    return ratios


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seq", default="512,1024", help="comma-separated sequence lengths")
    parser.add_argument(
        "--micro-batch",
        help="comma-separated micro-batch per --seq entry, or one for all (default: 4 at 512, "
        "2 at 1024, else 1)",
    )
    add_run_args(parser, steps=5, warmup=1)
    parser.add_argument(
        "--xla", choices=("both", "on", "off"), default="both", help="our step's XLA setting"
    )
    parser.add_argument(
        "--keras-xla",
        choices=("both", "on", "off"),
        default="both",
        help="keras-hub's jit_compile setting (the best of those run is compared)",
    )
    parser.add_argument("--no-keras", action="store_true", help="skip keras-hub")
    parser.add_argument("--no-torch", action="store_true", help="skip transformers (PyTorch)")
    for flag, what in (("layers", "blocks"), ("hidden", "width"), ("heads", "attention heads")):
        parser.add_argument(f"--{flag}", type=int, help=f"override the model's {what} (all peers)")
    parser.add_argument("--vocab", type=int, help="override the vocabulary size (all peers)")
    # Internal: one measurement in this process.
    parser.add_argument("--worker", choices=SYSTEMS, help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="32", help=argparse.SUPPRESS)
    parser.add_argument("--xla-flag", choices=("on", "off"), default="on", help=argparse.SUPPRESS)
    parser.add_argument("--config-file", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        args.seq, args.micro_batch = int(args.seq), int(args.micro_batch)
        emit(WORKERS[args.worker](args))
        return

    seqs = _ints(args.seq, "--seq")
    if args.micro_batch:
        batches = _ints(args.micro_batch, "--micro-batch")
        if len(batches) not in (1, len(seqs)):
            sys.exit("--micro-batch: one value, or one per --seq entry")
        batches = batches * len(seqs) if len(batches) == 1 else batches
    else:
        batches = [DEFAULT_MICRO_BATCH.get(s, 1) for s in seqs]
    precisions = parse_precisions(args.precisions)
    systems = {"ours": [True, False] if args.xla == "both" else [args.xla == "on"]}
    if not args.no_keras:
        if importlib.util.find_spec("keras_hub") is None:
            print(
                "keras-hub is not installed, so it is not measured. For the comparison run "
                f"`pip install --no-deps keras-hub=={KERAS_HUB_VERSION}` (benchmark only; not a "
                "project requirement).",
                file=sys.stderr,
            )
        else:
            systems["keras-hub"] = (
                [True, False] if args.keras_xla == "both" else [args.keras_xla == "on"]
            )
    if not args.no_torch:
        systems["transformers"] = [False]

    with tempfile.TemporaryDirectory() as folder:
        config_file = write_config(args, folder)
        config = _model_config(config_file or CONFIG)
        print(
            f"GPT-2 training step, {config['n_layer']} layers, hidden {config['n_embd']}, "
            f"{config['n_head']} heads, vocab {config['vocab_size']}; {os.cpu_count()} CPUs; "
            f"{args.steps} timed steps after {args.warmup} warm-up",
            flush=True,
        )
        results = []
        for seq, micro_batch in zip(seqs, batches):
            for precision in precisions:
                for kind, settings in systems.items():
                    for xla in settings:
                        results.append(
                            run_worker(kind, seq, micro_batch, precision, xla, args, config_file)
                        )
                # One FLOP count for all: ours' (modeling_gpt2.flops_per_token), run first.
                flops = _best(results, system="ours", seq=seq)["flops_per_sequence"]
                for r in results:
                    r.setdefault("flops_per_sequence", flops)
    peaks = add_mfu(results)
    for seq in seqs:
        for precision in precisions:
            print_table(results, seq, precision)
    peak_text = ", ".join(f"{p}: {v / 1e9:.0f} GFLOP/s" for p, v in peaks.items())
    print(
        "\nstep s = median step time; MFU = model FLOPs / matmul peak "
        f"({peak_text}); RSS = the worker's peak resident set; first s = first step (compile); "
        "other = cores used by other processes during the timed steps."
    )
    keras_runs = [r for r in results if r["system"] == "keras-hub"]
    if keras_runs and keras_runs[0]["keras_hub_version"] != KERAS_HUB_VERSION:
        print(f"note: keras-hub {keras_runs[0]['keras_hub_version']}, not {KERAS_HUB_VERSION}")
    ratios = print_ratios(results, seqs, precisions)
    print("ratios compare each system's fastest setting (XLA on or off) by sequences/s.")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"results": results, "ratios": ratios, "peaks": peaks}, f, indent=2)


if __name__ == "__main__":
    main()

"""GPT-2 small text generation: ours vs keras-hub's GPT2CausalLM.generate vs transformers' generate.

Task: greedy decoding of 128 new tokens after a 64-token prompt (fixed random ids, the same in
every row), batch 1 and 8, float32 and bfloat16, GPT-2 small (configs/gpt2/gpt2.json, 1024
positions) with random initial values; no stop token, so every system makes exactly 128 tokens.
- ours: `generation_gpt2.Generator` (what text_generate_gpt2.py runs: prefill of the padded
  prompt, then a decode loop over a static key/value cache, one compiled graph), XLA on and off.
- keras-hub (0.32, TensorFlow backend, `pip install --no-deps keras-hub==0.32.0`):
  `GPT2CausalLM(preprocessor=None)` compiled with `sampler="greedy"` and jit_compile on and off,
  `generate({"token_ids", "padding_mask"}, stop_token_ids=None)` on [B, 192] ids whose last 128
  slots are padding (its own key/value cache); bf16 by the mixed_bfloat16 policy.
- transformers: `GPT2LMHeadModel.generate(do_sample=False, min_new_tokens=max_new_tokens=128)`
  on PyTorch CPU with its key/value cache, bf16 by converting the model (torch.bfloat16).
- matmul-floor: 128 steps of only the weight matmuls of one token per row (12 layers x 4 and the
  output projection), XLA on and off: what decoding cannot go below on these kernels.

Each measurement runs in its own subprocess after waiting for a quiet CPU (benchmarks/pretraining.py
helpers): one call to compile and warm up, then `--steps` timed generations (median). Reported:
generated tokens/s (batch x 128 / seconds), per-token latency (seconds / 128: the time a user waits
per token of one row), peak RSS of the subprocess, and MFU = forward model FLOPs of the 192
positions per row (`modeling_gpt2.flops_per_token(config, 128) / 3`: the mean context, the full
S x S attention counted) over the run's best measured matmul peak for the dtype.

    python3 benchmarks/gpt2_generation.py [--batch 1,8] [--precisions 32,bf16] [--steps 3]
        [--xla both|on|off] [--no-keras] [--no-torch] [--no-floor] [--wait-quiet 300]
        [--json out.json]

Smoke test (tiny sizes): --layers 2 --hidden 64 --heads 2 --vocab 1000 --steps 1 --wait-quiet 0.
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
from benchmarks.gpt2 import _ints, write_config  # noqa: E402
from benchmarks.pretraining import _time_steps, emit, measure  # noqa: E402

CONFIG = os.path.join(ROOT, "configs", "gpt2", "gpt2.json")
PROMPT, NEW = 64, 128
TARGET = 1.5
DTYPES = {"32": "float32", "bf16": "bfloat16"}


def _prompt(batch, vocab):
    import numpy as np

    ids = np.random.default_rng(0).integers(1, vocab, PROMPT).astype(np.int32)
    return np.tile(ids, (batch, 1))  # [B, PROMPT]


def _config(args):
    import model_config_gpt2

    return model_config_gpt2.GPT2Config.from_json_file(args.config_file or CONFIG).replace(
        n_positions=1024
    )


def worker_ours(args):
    import tensorflow as tf

    import generation_gpt2
    import modeling_gpt2

    config = _config(args)
    model = modeling_gpt2.GPT2Model(config, seed=0)
    generator = generation_gpt2.Generator(
        model,
        batch=args.batch,
        input_len=PROMPT,
        output_len=NEW,
        sampling=generation_gpt2.Sampling(greedy=True),
        dtype=tf.as_dtype(DTYPES[args.precision]),
        stop_id=-1,
        xla=args.xla_flag == "on",
    )
    prompts = _prompt(args.batch, config.vocab_size).tolist()
    out = {}

    def run():
        out["tokens"], out["steps"] = generator(prompts)

    first, times, others = _time_steps(run, 0, args.steps)
    assert out["tokens"].shape == (args.batch, NEW) and out["steps"] == NEW
    return first, times, others, out["tokens"][0, :8].tolist()


def worker_keras(args):
    os.environ["KERAS_BACKEND"] = "tensorflow"
    import keras
    import keras_hub
    import numpy as np

    config = _config(args)
    if args.precision == "bf16":
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=config.vocab_size,
        num_layers=config.n_layer,
        num_heads=config.n_head,
        hidden_dim=config.n_embd,
        intermediate_dim=config.inner_size,
        max_sequence_length=config.n_positions,
    )
    model = keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)
    model.compile(sampler="greedy", jit_compile=args.xla_flag == "on")
    ids = np.zeros([args.batch, PROMPT + NEW], np.int32)
    ids[:, :PROMPT] = _prompt(args.batch, config.vocab_size)
    mask = np.zeros(ids.shape, bool)
    mask[:, :PROMPT] = True
    out = {}

    def run():
        out["ids"] = model.generate({"token_ids": ids, "padding_mask": mask}, stop_token_ids=None)

    first, times, others = _time_steps(run, 0, args.steps)
    made = np.asarray(out["ids"]["padding_mask"])
    assert made.sum() == args.batch * (PROMPT + NEW), "keras-hub did not fill every slot"
    return first, times, others, np.asarray(out["ids"]["token_ids"])[0, PROMPT:][:8].tolist()


def worker_torch(args):
    import torch
    import transformers

    torch.set_num_threads(os.cpu_count())
    torch.manual_seed(0)
    config = transformers.GPT2Config.from_json_file(args.config_file or CONFIG)
    config.n_positions = 1024
    model = transformers.GPT2LMHeadModel(config).eval()
    if args.precision == "bf16":
        model = model.to(torch.bfloat16)
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    ids = torch.from_numpy(_prompt(args.batch, config.vocab_size)).long()
    mask = torch.ones_like(ids)
    out = {}

    def run():
        with torch.inference_mode():
            out["ids"] = model.generate(
                ids, attention_mask=mask, do_sample=False, max_new_tokens=NEW, min_new_tokens=NEW
            )

    first, times, others = _time_steps(run, 0, args.steps)
    assert out["ids"].shape == (args.batch, PROMPT + NEW)
    return first, times, others, out["ids"][0, PROMPT : PROMPT + 8].tolist()


def worker_floor(args):
    """The matmul floor of greedy decoding: a loop of NEW steps that only multiplies one vector
    per row through every layer's four weight matrices and the output projection (no attention,
    LayerNorm, cache or sampling). No generator can beat it on the same kernels."""
    import tensorflow as tf

    config = _config(args)
    dtype = tf.as_dtype(DTYPES[args.precision])
    e, i = config.n_embd, config.inner_size
    rng = tf.random.Generator.from_seed(0)
    shapes = [[e, 3 * e], [e, e], [e, i], [i, e]] * config.n_layer
    weights = [tf.cast(rng.normal(s) * 0.02, dtype) for s in shapes]
    head = tf.cast(rng.normal([config.vocab_size, e]) * 0.02, dtype)

    @tf.function(jit_compile=args.xla_flag == "on")
    def loop(x):
        def body(t, x):
            h = tf.cast(x, dtype)
            for k in range(0, len(weights), 4):
                qkv = tf.matmul(h, weights[k])
                h = tf.matmul(qkv[:, :e], weights[k + 1])
                h = tf.matmul(tf.nn.relu(tf.matmul(h, weights[k + 2])), weights[k + 3])
            logits = tf.matmul(h, head, transpose_b=True)
            nxt = tf.cast(tf.reduce_max(logits, -1, keepdims=True), tf.float32)
            return t + 1, x + nxt * 1e-6  # the next step depends on this one's output

        return tf.while_loop(lambda t, _: t < NEW, body, (0, x))[1]

    x = tf.random.normal([args.batch, e], seed=0)
    first, times, others = _time_steps(lambda: loop(x).numpy(), 0, args.steps)
    return first, times, others, []


WORKERS = {
    "ours": worker_ours,
    "keras-hub": worker_keras,
    "transformers": worker_torch,
    "matmul-floor": worker_floor,
}


def worker(args):
    first, times, others, head = WORKERS[args.worker](args)
    import modeling_gpt2
    import training

    peak = (
        training.measured_peak_flops(DTYPES[args.precision])
        if args.worker in ("ours", "keras-hub")
        else 0.0
    )
    flops = modeling_gpt2.flops_per_token(_config(args), NEW) / 3 * (PROMPT + NEW)  # per row
    emit({"first_s": first, "times_s": times, "other_cores": others, "peak_flops": peak,
          "flops_per_sequence": flops, "first_tokens": head})  # fmt: skip


def run_worker(kind, batch, precision, xla, args, config_file):
    cmd = [
        sys.executable, os.path.abspath(__file__), "--worker", kind, "--precision", precision,
        "--batch", str(batch), "--steps", str(args.steps), "--xla-flag", "on" if xla else "off",
    ]  # fmt: skip
    if config_file:
        cmd += ["--config-file", config_file]
    label = f"{kind} batch {batch} {precision}" + (
        "" if kind == "transformers" else f" xla={'on' if xla else 'off'}"
    )
    result = measure(cmd, label, args.wait_quiet, batch)
    result.update(system=kind, batch=batch, precision=precision, xla=xla)
    result["tokens_per_s"] = result["seq_per_s"] * NEW
    result["ms_per_token"] = result["median_step_s"] * 1000 / NEW
    return result


def _best(results, **keys):
    rows = [r for r in results if all(r[k] == v for k, v in keys.items())]
    return max(rows, key=lambda r: r["tokens_per_s"]) if rows else None


def report(results):
    peaks = {}
    for r in results:
        peaks[r["precision"]] = max(peaks.get(r["precision"], 0.0), r["peak_flops"])
    print(f"GPT-2 small, prompt {PROMPT} -> {NEW} new tokens, greedy; median of timed runs")
    print(f"{'system':<13}{'dtype':<6}{'batch':>6}{'xla':>6}{'tokens/s':>10}{'ms/token':>10}"
          f"{'MFU':>7}{'peak MB':>9}{'first s':>9}{'other':>7}")  # fmt: skip
    for r in results:
        peak = peaks[r["precision"]]
        r["mfu"] = r["seq_per_s"] * r["flops_per_sequence"] / peak if peak else 0.0
        xla = "-" if r["system"] == "transformers" else ("on" if r["xla"] else "off")
        r["mfu"] = r["mfu"] if r["system"] != "matmul-floor" else 0.0
        print(f"{r['system']:<13}{r['precision']:<6}{r['batch']:>6}{xla:>6}"
              f"{r['tokens_per_s']:>10.1f}{r['ms_per_token']:>10.2f}{r['mfu']:>7.1%}"
              f"{r['peak_rss_mb']:>9.0f}{r['first_s']:>9.1f}{r['mean_other_cores']:>7.2f}")  # fmt: skip
    print(f"ratios of tokens/s, each system at its best XLA setting (target >= {TARGET}x):")
    for precision in sorted({r["precision"] for r in results}):
        for batch in sorted({r["batch"] for r in results}):
            ours = _best(results, system="ours", precision=precision, batch=batch)
            for peer in ("keras-hub", "transformers"):
                other = _best(results, system=peer, precision=precision, batch=batch)
                if ours and other:
                    ratio = ours["tokens_per_s"] / other["tokens_per_s"]
                    mark = "met" if ratio >= TARGET else "MISSED"
                    print(f"  {precision} batch {batch}: ours/{peer} {ratio:.2f}x ({mark})")
            floor = _best(results, system="matmul-floor", precision=precision, batch=batch)
            if ours and floor:
                share = ours["tokens_per_s"] / floor["tokens_per_s"]
                print(f"  {precision} batch {batch}: ours runs at {share:.0%} of the matmul floor")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", default="1,8")
    parser.add_argument("--precisions", default="32,bf16")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--xla", choices=("both", "on", "off"), default="both")
    parser.add_argument("--no-keras", action="store_true")
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--no-floor", action="store_true", help="skip the matmul-floor rows")
    parser.add_argument("--wait-quiet", type=float, default=300)
    parser.add_argument("--json")
    for flag in ("--layers", "--hidden", "--heads", "--vocab"):
        parser.add_argument(flag, type=int)
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--xla-flag", choices=("on", "off"), help=argparse.SUPPRESS)
    parser.add_argument("--precision", choices=sorted(DTYPES), help=argparse.SUPPRESS)
    parser.add_argument("--config-file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.batch = int(args.batch)
        return worker(args)
    batches = _ints(args.batch, "--batch")
    precisions = [p for p in args.precisions.split(",") if p]
    if any(p not in DTYPES for p in precisions):
        sys.exit(f"--precisions: choose from {', '.join(DTYPES)}")
    xlas = {"both": (True, False), "on": (True,), "off": (False,)}[args.xla]
    keras = not args.no_keras and importlib.util.find_spec("keras_hub") is not None
    if not args.no_keras and not keras:
        print("keras-hub not installed: pip install --no-deps keras-hub==0.32.0", file=sys.stderr)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        config_file = write_config(args, tmp)
        for precision in precisions:
            for batch in batches:
                for xla in xlas:
                    results.append(run_worker("ours", batch, precision, xla, args, config_file))
                    if keras:
                        results.append(
                            run_worker("keras-hub", batch, precision, xla, args, config_file)
                        )
                if not args.no_torch:
                    results.append(
                        run_worker("transformers", batch, precision, False, args, config_file)
                    )
                for xla in () if args.no_floor else xlas:
                    results.append(
                        run_worker("matmul-floor", batch, precision, xla, args, config_file)
                    )
    report(results)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()

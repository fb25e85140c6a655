"""Scale-out overheads on this machine, and an estimate of BERT-Large phase 1 on 8 GPUs x N hosts.

Measured (each row a fresh `run_pretraining.py` on generated data, fp32, the same global batch):
  - one process, one replica (XLA on and off: the faster is the baseline);
  - one process, --replicas 2 (MirroredStrategy over 2 logical CPU devices);
  - 2 local worker processes x 1 replica (MultiWorkerMirroredStrategy, RING all-reduce over
    localhost, started by scripts/launch_workers.py);
  - pipeline stages over 2 and 3 logical CPU devices (device_mapping), same micro-batches.
Step time is the median of the logged steps after --warmup; seq/s = global batch / step time; MFU
as the training loop logs it (model FLOPs / the matmul peak measured at start); peak memory is the
largest resident set of any one of the run's processes (per worker for the 2-worker row).

On 2 cores nothing here can speed up: 2 workers or 2 devices share the cores one process already
uses. What the rows show is the overhead each mechanism adds (synchronisation, all-reduce through
localhost, cross-device copies), which is what would be paid on top of real parallel hardware.

The estimate: BERT-Large phase 1 (seq 128, 20 masks, global batch 65,600 as in
configs/pretrain_large_128_phase1.json) on H hosts x 8 GPUs. Compute time per sequence comes from
the model FLOPs (`modeling.pretraining_flops_per_sequence`) at an assumed GPU throughput
(--gpu-tflops x --gpu-mfu); the gradient all-reduce once per optimizer step moves
2 (n-1)/n x the gradient bytes through each GPU's slowest link (NVLink inside a host, the network
between hosts), not overlapped with compute (a pessimistic bound; the measured localhost all-reduce
above gives the overhead per byte seen here).

    python3 benchmarks/scaling.py [--steps 12] [--warmup 3] [--layers 4 --hidden 256]
        [--gpu-tflops 312 --gpu-mfu 0.45 --nvlink-gbs 240 --network-gbs 25] [--json out.json]
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.pretraining import wait_quiet  # noqa: E402

CONFIG = os.path.join(ROOT, "configs", "pretrain_base_128_phase1.json")
SCRIPT = os.path.join(ROOT, "run_pretraining.py")
LAUNCHER = os.path.join(ROOT, "scripts", "launch_workers.py")
STEP = re.compile(r"step: (\d+), .*, time: ([\d.]+),.*mfu: ([\d.]+) %")
# Wraps one command: runs it and prints the largest resident set of its process tree.
PEAK = (
    "import resource, subprocess, sys\n"
    "code = subprocess.run(sys.argv[1:]).returncode\n"
    "print('PEAK_KB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, flush=True)\n"
    "sys.exit(code)\n"
)


def model_flags(args):
    return [
        "--config", CONFIG, "--generated-data", "--precision", "32", "--seq-length", "128",
        "--max-predictions-per-seq", "20", "--num-hidden-layers", str(args.layers),
        "--hidden-size", str(args.hidden), "--num-attention-heads", str(args.hidden // 64),
        "--intermediate-size", str(4 * args.hidden), "--steps-per-logs", "1",
        "--num-train-steps", str(args.warmup + args.steps), "--steps-per-ckpts", "100000",
        "--global-batch-size", str(args.global_batch),
        *stage_flags(1, args.layers)[:2],  # the config's 12-layer stages, redrawn for --layers
    ]  # fmt: skip


def stage_flags(devices, layers):
    """device_mapping and pipeline_stages splitting the layers evenly over `devices`."""
    split = [layers // devices + (d < layers % devices) for d in range(devices)]
    stages = [["hid"] * n for n in split]
    stages[0] = ["emb", "pos", *stages[0]]
    stages[-1] = [*stages[-1], "mlm", "nsp"]
    return [
        "--pipeline-stages",
        json.dumps(stages),
        "--device-mapping",
        json.dumps(list(range(devices))),
    ]


def run(label, command, args, save):
    """One measurement: median step time, MFU and peak memory from a fresh process tree."""
    waited = wait_quiet(args.wait_quiet) if args.wait_quiet > 0 else 0.0
    print(f"... {label} (waited {waited:.0f} s for a quiet CPU)", file=sys.stderr, flush=True)
    for attempt in range(2):  # a native crash (a signal, not an error exit) is run once more
        start = time.time()
        proc = subprocess.run(
            [sys.executable, "-c", PEAK, *command, "--save-path", save],
            capture_output=True, text=True, timeout=args.timeout,
            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONFAULTHANDLER="1"),
        )  # fmt: skip
        if proc.returncode < 128 or attempt:
            break
        print(f"... {label}: died of signal {256 - proc.returncode}; once more", file=sys.stderr)
    out = proc.stdout
    # Unprefixed lines, or the chief's when the launcher prefixes each worker's output.
    chief = [
        x.removeprefix("[worker 0] ") for x in out.splitlines() if not x.startswith("[worker 1]")
    ]
    steps = [m for m in map(STEP.search, chief) if m]
    if proc.returncode or len(steps) < args.warmup + 1:
        tail = "\n".join((proc.stderr or out).strip().splitlines()[-15:])
        sys.exit(f"benchmark run failed ({label}), exit {proc.returncode}:\n{tail}")
    timed = [m for m in steps if int(m[1]) >= args.warmup]
    step_s = statistics.median(float(m[2]) for m in timed)
    peak = int(re.findall(r"PEAK_KB (\d+)", out)[-1]) / 1024
    return {
        "label": label,
        "step_s": step_s,
        "seq_per_s": args.global_batch / step_s,
        "mfu_pct": statistics.median(float(m[3]) for m in timed),
        "peak_mb": peak,
        "wall_s": time.time() - start,
    }


def measure(args):
    base = model_flags(args)
    mb = args.global_batch // 2
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        save = os.path.join(tmp, "runs")
        one = [sys.executable, SCRIPT, *base, "--micro-batch-size", str(mb)]
        singles = [
            run(f"1 process, XLA {x}", [*one, "--xla", x], args, save) for x in ("true", "false")
        ]
        best = min(singles, key=lambda r: r["step_s"])
        xla = "true" if best is singles[0] else "false"
        rows += singles
        rows.append(
            run("1 process, --replicas 2", [*one, "--replicas", "2", "--xla", xla], args, save)
        )
        workers = [sys.executable, LAUNCHER, "--local", "2", "--timeout", str(args.timeout - 60)]
        workers += ["--", sys.executable, SCRIPT, *base, "--micro-batch-size", str(mb)]
        rows.append(run("2 workers x 1 replica", [*workers, "--xla", xla], args, save))
        micro = ["--micro-batch-size", str(args.global_batch // 4)]
        plain = [sys.executable, SCRIPT, *base, *micro]
        for x in ("true", "false"):
            rows.append(
                run(f"1 device, 4 micro-batches, XLA {x}", [*plain, "--xla", x], args, save)
            )
        for devices in (2, 3):
            flags = stage_flags(devices, args.layers)
            rows.append(
                run(f"pipeline, {devices} devices, 4 micro-batches", [*plain, *flags], args, save)
            )
    return rows, best


def params_of(layers, hidden, vocab=30400, positions=512, intermediate=None):
    """BERT parameter count (embeddings, layers, pooler, MLM transform and bias, NSP)."""
    inter = intermediate or 4 * hidden
    layer = 4 * hidden * hidden + 4 * hidden + 2 * hidden * inter + inter + hidden + 4 * hidden
    embed = (vocab + positions + 2) * hidden + 2 * hidden
    heads = hidden * hidden + hidden + hidden * hidden + 3 * hidden + vocab + 2 * hidden + 2
    return embed + layers * layer + heads


def estimate(args, measured):
    """BERT-Large phase 1 on H hosts x 8 GPUs (see the module docstring)."""
    import model_config
    import modeling

    config = model_config.BertConfig(
        vocab_size=30400, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
        intermediate_size=4096, max_position_embeddings=512,
    )  # fmt: skip
    flops = modeling.pretraining_flops_per_sequence(config, 128, 20)
    params = params_of(24, 1024)
    grad_bytes = 4 * params  # fp32 gradients, reduced once per optimizer step
    per_gpu = args.gpu_tflops * 1e12 * args.gpu_mfu / flops  # sequences/s of one GPU
    gbs = 65600
    lines = [
        f"BERT-Large phase 1: {flops / 1e9:.0f} GFLOP per sequence, {params / 1e6:.0f} M parameters,"
        f" {grad_bytes / 2**30:.2f} GiB of fp32 gradients per all-reduce; one GPU at "
        f"{args.gpu_tflops:g} TFLOP/s x {args.gpu_mfu:.0%} MFU = {per_gpu:,.0f} seq/s",
        "| hosts x 8 GPUs | compute per step | all-reduce per step | seq/s | scaling efficiency |",
        "|---|---|---|---|---|",
    ]
    for hosts in (1, 2, 4, 8, 16, 32):
        n = 8 * hosts
        compute = gbs / (n * per_gpu)
        link = args.nvlink_gbs if hosts == 1 else args.network_gbs
        allreduce = 2 * (n - 1) / n * grad_bytes / (link * 1e9)
        seq_s = gbs / (compute + allreduce)
        lines.append(
            f"| {hosts} x 8 | {compute:.2f} s | {allreduce:.3f} s | {seq_s:,.0f} | "
            f"{seq_s / (n * per_gpu):.1%} |"
        )
    small = params_of(args.layers, args.hidden)
    one = next(r for r in measured if r["label"] == "1 process, --replicas 2")
    two = next(r for r in measured if r["label"] == "2 workers x 1 replica")
    extra = two["step_s"] - one["step_s"]
    lines.append(
        f"Measured here: the 2-worker all-reduce of {4 * small / 2**20:.0f} MiB of gradients "
        f"per step costs {extra * 1e3:+.0f} ms over 2 in-process replicas"
        + (f" ({4 * small / extra / 1e9:.2f} GB/s through localhost)" if extra > 0 else "")
        + ". With gradient accumulation to the global batch, each all-reduce is spread over "
        f"{gbs // 8:,} sequences per host."
    )
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=12, help="timed steps per row")
    parser.add_argument("--warmup", type=int, default=3, help="untimed first steps")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--global-batch", type=int, default=16)
    parser.add_argument("--gpu-tflops", type=float, default=312.0, help="A100 bf16 dense peak")
    parser.add_argument("--gpu-mfu", type=float, default=0.45)
    parser.add_argument("--nvlink-gbs", type=float, default=240.0, help="NCCL bus GB/s in a host")
    parser.add_argument(
        "--network-gbs", type=float, default=25.0, help="GB/s per GPU between hosts"
    )
    parser.add_argument("--timeout", type=int, default=1200, help="seconds per row")
    parser.add_argument("--wait-quiet", type=float, default=120)
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()
    rows, best = measure(args)
    print(
        f"BERT {args.layers} layers x {args.hidden}, seq 128, global batch {args.global_batch}, "
        "fp32, generated data; overhead = step time / the best 1-process step - 1 (pipelines: / "
        "the best 1-device step with the same 4 micro-batches - 1)"
    )
    print("| run | step | seq/s | MFU | peak memory | overhead |")
    print("|---|---|---|---|---|---|")
    plain = min((r for r in rows if r["label"].startswith("1 device")), key=lambda r: r["step_s"])
    for r in rows:
        # Pipelines against the best single device with the same 4 micro-batches.
        ref = plain if r["label"].startswith("pipeline") else best
        print(
            f"| {r['label']} | {r['step_s'] * 1e3:.0f} ms | {r['seq_per_s']:.1f} | "
            f"{r['mfu_pct']:.0f}% | {r['peak_mb']:,.0f} MB | "
            f"{r['step_s'] / ref['step_s'] - 1:+.0%} |"
        )
    lines = estimate(args, rows)
    print("\n".join(lines))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "estimate": lines, "args": vars(args)}, f, indent=1)


if __name__ == "__main__":
    main()

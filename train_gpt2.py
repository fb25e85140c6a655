#!/usr/bin/env python3
"""GPT-2 pretraining and fine-tuning (causal LM) on CPUs and NVIDIA GPUs.

    python3 train_gpt2.py --model gpt2 --max-len 1024 --dataset mmap \\
        --input-files data/wikipedia-gpt2_text_document --batch-size 4 \\
        --gradient-accumulation 16 --optimizer AdamW --learning-rate 1.5e-4 \\
        --lr-schedule cosine --lr-warmup 0.01 --checkpoint-output-dir runs

The flags are the Graphcore reference's (options_gpt2.py has them all, and the seed README's older
spellings); `--config FILE.json` holds any of them. Each host iteration (`--device-iterations`
optimizer steps) logs `step {i} of epoch {e}, loss: ..., acc: ..., lr: ..., throughput: ...
samples/sec` plus tokens/s and model-FLOPs utilisation. The run directory (under
--checkpoint-output-dir) holds the TensorBoard events, arguments.json, config.json and the
checkpoints; the final weights are also written there as a Hugging Face folder (`hf/`).
Resume exactly (weights, optimizer, step and data position) with
`--checkpoint-input-dir RUN_DIR --resume-training-from-checkpoint`.
"""

import os
import shutil
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import options_gpt2
from common.errors import cli_main


def line_format(steps_per_epoch, device_iterations):
    """The reference's log line (step = host iteration within the epoch), plus our throughputs."""

    def fmt(step, epoch, m, samples_per_sec, tokens_per_sec, mfu, elapsed, total):
        host = step // device_iterations
        mfu_text = f"{mfu * 100:.1f} %" if mfu is not None else "n/a"
        return (
            f"step {host % steps_per_epoch} of epoch {host // steps_per_epoch}, "
            f"loss: {m['loss']:.5f}, acc: {m['acc']:.5f}, lr: {m['learning_rate']:.6g}, "
            f"throughput: {samples_per_sec:.2f} samples/sec, tokens/s: {tokens_per_sec:,.0f}, "
            f"mfu: {mfu_text}, time: {elapsed:.3f}, total_time: {total:.1f}"
        )

    return fmt


def write_hf(cfg, task, model, result):
    """The final weights as a Hugging Face folder `hf/` of the run directory."""
    import interop_gpt2

    folder = os.path.join(result.run_dir, "hf")
    interop_gpt2.write_hf_gpt2(folder, task.config, {n: v.numpy() for n, v in model.params.items()})
    if cfg.a.vocab_file and cfg.a.merges_file:  # a folder generation and evaluation can use
        shutil.copyfile(cfg.a.vocab_file, os.path.join(folder, "vocab.json"))
        shutil.copyfile(cfg.a.merges_file, os.path.join(folder, "merges.txt"))
    print(f"Hugging Face folder of the final weights: {folder}")


@cli_main
def main(argv=None):
    cfg = options_gpt2.parse(argv, __doc__.split("\n\n")[0])
    from objectives.gpt2 import GPT2Task

    task = GPT2Task(cfg)  # reads and checks the model config and the data first
    cfg = task.cfg
    print(f"Model config: {task.config.to_hf_dict()}", flush=True)
    print(f"Samples per epoch: {task.num_samples}", flush=True)
    print(f"Steps per epoch: {task.steps_per_epoch}", flush=True)

    import objectives
    import training

    strategy = training.make_strategy(
        cfg.loop.replicas, cfg.loop.collective_timeout, task.placement
    )
    model = task.build_model(strategy)
    result = objectives.fit(
        cfg,
        strategy,
        model,
        task.loss,
        task.dataset(),
        init=task.initialise,
        **task.trainer_options(),
        samples_per_epoch=task.num_samples,
        flops_per_sample=task.flops_per_sample(),
        notes=task.notes,
        evaluate=task.evaluator(model),
        line_format=line_format(task.steps_per_epoch, cfg.loop.device_iterations),
        damage=task.damage,
    )
    if result.run_dir and not result.stopped:
        objectives.chief_only("the Hugging Face folder", lambda: write_hf(cfg, task, model, result))
    if result.evaluation:
        e = result.evaluation
        print(f"final: eval_loss: {e['loss']:.4f}, eval_ppl: {e['ppl']:.2f}")
    elif result.metrics:
        m = result.metrics
        print(f"final: loss: {m['loss']:.4f}, acc: {m['acc']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

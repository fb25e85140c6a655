#!/usr/bin/env python3
"""Fine-tune and evaluate BERT on a GLUE task (classification, or STS-B regression).

    python3 run_classifier.py --config configs/glue_base.json --task-name mrpc \
        --data-dir glue_data/MRPC --init-checkpoint CKPT --do-training --do-evaluation [--do-predict]

Phases, in any combination: --do-training (train split), --do-evaluation (dev split: the task's
metrics into eval_results.txt), --do-predict (test split: GLUE-submission predict_results.txt).
--num-seeds K fine-tunes K times (seeds seed .. seed+K-1) and reports mean and std of each metric.
Every config key is also a flag; --init-checkpoint takes a native, Google or Hugging Face checkpoint.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from common.errors import cli_main
from common.fileio import atomic_write_text


@cli_main
def main(argv=None):
    from objectives import finetuning, glue

    cfg = finetuning.parse(
        argv, "run_classifier.py", __doc__.split("\n\n")[0], "glue", glue.DEFAULTS
    )
    task = glue.GlueTask(cfg)  # resolves the model and reads the data first

    import training

    cfg = task.cfg
    seeds = [cfg.loop.seed + k for k in range(cfg.finetune.num_seeds)]
    strategy = training.make_strategy(
        cfg.loop.replicas, cfg.loop.collective_timeout, task.placement
    )
    results = []  # dev metrics of each seed; none on the other workers (the chief evaluates)
    for k, seed in enumerate(seeds):
        if len(seeds) > 1:
            print(f"==== seed {seed} ({k + 1} of {len(seeds)})", flush=True)
        metrics = task.run_seed(seed, strategy)
        if metrics is not None:
            results.append(metrics)
    if results:
        lines = glue.summarise(results, seeds)
        head = f"{task.name} dev, {len(results)} seed(s) {seeds[0]}..{seeds[-1]}"
        print(head + ":\n  " + "\n  ".join(lines), flush=True)
        if len(results) > 1 and cfg.finetune.output_dir:
            path = os.path.join(cfg.finetune.output_dir, "eval_summary.txt")
            atomic_write_text(path, head + "\n" + "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

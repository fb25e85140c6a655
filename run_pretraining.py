#!/usr/bin/env python3
"""BERT pretraining (masked LM + next-sentence prediction) on CPUs and NVIDIA GPUs.

    python3 run_pretraining.py --config configs/pretrain_large_128_phase1.json [--flag value ...]

Every config key is also a flag (kebab case); an explicit flag beats the config, which beats the
default. Data: TFRecords from bert_data/create_pretraining_data.py (`--train-file`, comma-separated
globs; the remask layout when the config has static_mask; packed rows from `--packing` are
recognised from the records, see README "Packed data"), or `--generated-data`.

model_type roberta (configs/pretrain_roberta_*.json): masked LM only, no NSP head, on packed
byte-level BPE ids from bert_data/create_mlm_data.py, masked anew every epoch in the input pipeline
(bert_data/mlm.py); vocab_size comes from tokenizer_file when the config leaves it null.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import options
from common.errors import cli_main


@cli_main
def main(argv=None):
    cfg = options.parse_options(argv, "run_pretraining.py", __doc__.split("\n\n")[0])
    from objectives import pretraining

    task = pretraining.PretrainingTask(cfg)  # reads and checks the data first
    print(options.format_resolved(task.cfg), flush=True)

    import objectives
    import optimization
    import training

    loop = task.cfg.loop
    strategy = training.make_strategy(loop.replicas, loop.collective_timeout, task.placement)
    model = task.build_model(strategy)
    result = objectives.fit(
        task.cfg,
        strategy,
        model,
        task.loss,
        task.dataset(),
        tokens_fn=task.tokens,
        # GroupBERT's LAMB exempts its norms' "gamma" too; AdamW keeps its own exclusions.
        wd_exclude=optimization.LAMB_WD_EXCLUDE_GROUPBERT
        if task.config.groupbert and task.cfg.optimizer.optimizer == "lamb"
        else None,
        samples_per_epoch=task.samples_per_epoch,
        flops_per_sample=task.flops_per_sample(),
        evaluate=task.evaluator(model),
        damage=task.damage,
    )
    if result.evaluation:
        final = {f"eval_{k}": v for k, v in result.evaluation.items()}
    else:
        final = {k: v for k, v in result.metrics.items() if k.endswith(("_loss", "_acc"))}
    if final:
        print("final: " + ", ".join(f"{k}: {v:.4f}" for k, v in final.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())

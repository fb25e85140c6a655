#!/usr/bin/env python3
"""Fine-tune BERT on SQuAD 1.1 / 2.0, predict answers and score them with the official metrics.

    python3 run_squad.py --config configs/squad_base.json --init-checkpoint CKPT \
        --train-file train-v1.1.json --predict-file dev-v1.1.json \
        --do-training --do-predict --do-evaluation

Phases, in any combination: --do-training (train_file), --do-predict (answers for predict_file:
predictions.json, nbest_predictions.json and, for 2.0, null_odds.json in output_dir),
--do-evaluation (official EM/F1 of those predictions against predict_file; for 2.0 also the
HasAns/NoAns split and the best no-answer threshold). Features are cached in tfrecord_dir, keyed by
everything they depend on. Every config key is also a flag.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from common.errors import cli_main


@cli_main
def main(argv=None):
    from objectives import finetuning, squad

    cfg = finetuning.parse(argv, "run_squad.py", __doc__.split("\n\n")[0], "squad", squad.DEFAULTS)
    task = squad.SquadTask(cfg)  # resolves the model and reads the features first

    import training

    loop = task.cfg.loop
    return task.run(training.make_strategy(loop.replicas, loop.collective_timeout, task.placement))


if __name__ == "__main__":
    sys.exit(main())

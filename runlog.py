"""A run's outputs: its directory, the console log (tee'd to log.txt), TensorBoard and W&B."""

import os

import tensorflow as tf

from common.errors import UserError


class Run:
    """Run directory, console log (tee'd to log.txt), TensorBoard and optional W&B."""

    def __init__(self, run_dir, wandb=False, wandb_project=None, wandb_name=None, config=None):
        """Args: run_dir (created if missing); wandb: also log to Weights & Biases; config: the flat
        resolved settings recorded in the W&B run."""
        self.dir = run_dir
        os.makedirs(run_dir, exist_ok=True)
        self.log_file = open(os.path.join(run_dir, "log.txt"), "a", buffering=1)  # noqa: SIM115
        self.writer = tf.summary.create_file_writer(os.path.join(run_dir, "event"))
        self.wandb = None
        if wandb:
            try:
                import wandb
            except ImportError:
                raise UserError("--wandb needs the wandb package: pip install wandb") from None
            mode = os.environ.get("WANDB_MODE") or (
                "online" if os.environ.get("WANDB_API_KEY") else "offline"
            )
            self.wandb = wandb.init(
                project=wandb_project or "tf-bert",
                name=wandb_name,
                config=config or {},
                dir=run_dir,
                mode=mode,
                sync_tensorboard=True,
            )

    def log(self, line):
        print(line, flush=True)
        self.log_file.write(line + "\n")

    def scalars(self, step, values):
        with self.writer.as_default(step=step):
            for tag, value in values.items():
                tf.summary.scalar(tag, value)

    def close(self):
        self.writer.flush()
        self.log_file.close()
        if self.wandb is not None:
            self.wandb.finish()

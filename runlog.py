"""A run's outputs: its directory, the console log (tee'd to log.txt), TensorBoard and W&B."""

import os

import numpy as np
import tensorflow as tf

from common.errors import UserError

EVENT_DIR = "event"  # a run's TensorBoard events: run_dir/event/events.out.tfevents.*


class Run:
    """Run directory, console log (tee'd to log.txt), TensorBoard and optional W&B.

    TensorBoard is the record (run_dir/event); W&B, when on, receives the same tags at the same
    steps through `wandb.log`, so steps passed to `scalars` and `histograms` must not decrease
    (W&B drops a step lower than one already logged).
    """

    def __init__(self, run_dir, wandb=False, wandb_project=None, wandb_name=None, config=None):
        """Args: run_dir (created if missing); wandb: also log to Weights & Biases (offline unless
        WANDB_API_KEY or WANDB_MODE say otherwise; its files go under run_dir/wandb); config: the
        flat resolved settings recorded in the W&B run."""
        self.dir = run_dir
        os.makedirs(run_dir, exist_ok=True)
        # W&B first: if it refuses to start, nothing is left open.
        self.wandb = start_wandb(run_dir, wandb_project, wandb_name, config) if wandb else None
        self.log_file = open(os.path.join(run_dir, "log.txt"), "a", buffering=1)  # noqa: SIM115
        self.writer = tf.summary.create_file_writer(os.path.join(run_dir, EVENT_DIR))
        if self.wandb is not None and self.wandb.settings.mode in ("offline", "dryrun"):
            self.log(f"W&B offline run: upload it with wandb sync {self.wandb.settings.sync_dir}")

    def log(self, line):
        print(line, flush=True)
        self.log_file.write(line + "\n")

    def scalars(self, step, values):
        """Write {tag: number} at `step` to TensorBoard (as float32) and W&B."""
        with self.writer.as_default(step=step):
            for tag, value in values.items():
                tf.summary.scalar(tag, value)
        if self.wandb is not None:
            self.wandb.log({tag: float(value) for tag, value in values.items()}, step=step)

    def histograms(self, step, tensors):
        """Write a histogram and the L2 norm of each tensor at `step`.

        Args:
          step: the global step (int).
          tensors: {tag: array}, NumPy arrays, tf tensors or variables of any shape and float
            dtype; the tag carries the kind, e.g. {"weights/bert/pooler/dense/kernel": w,
            "gradients/bert/pooler/dense/kernel": g}. Each gives the histogram `tag` and the
            scalar `L2/<tag>` (the Euclidean norm of all its elements, computed in float32).
            Inf/NaN elements (an fp16 overflow step) are left out of the histogram; the norm
            shows them.
        """
        arrays = {tag: tf.cast(t, tf.float32).numpy().ravel() for tag, t in tensors.items()}
        norms = {f"L2/{tag}": float(np.linalg.norm(a)) for tag, a in arrays.items()}
        arrays = {tag: a[np.isfinite(a)] for tag, a in arrays.items()}
        with self.writer.as_default(step=step):
            for tag, array in arrays.items():
                tf.summary.histogram(tag, array)
        self.scalars(step, norms)
        if self.wandb is not None:
            import wandb

            self.wandb.log({tag: wandb.Histogram(a) for tag, a in arrays.items()}, step=step)

    def close(self):
        self.writer.flush()
        self.log_file.close()
        if self.wandb is not None:
            self.wandb.finish()


def start_wandb(run_dir, project, name, config):
    """A W&B run writing under `run_dir`: offline unless WANDB_MODE says otherwise or
    WANDB_API_KEY is set; it never prompts (no credentials online is a UserError)."""
    try:
        import wandb
    except ImportError:
        raise UserError(
            "--wandb needs the wandb package: pip install -r requirements.txt"
        ) from None
    mode = os.environ.get("WANDB_MODE") or (
        "online" if os.environ.get("WANDB_API_KEY") else "offline"
    )
    if mode in ("offline", "dryrun", "disabled"):
        # The wandb-core service otherwise reports its own errors over the network.
        os.environ.setdefault("WANDB_ERROR_REPORTING", "false")
    elif not wandb.login(prompt=False, verify=False):
        raise UserError(
            f"WANDB_MODE={mode} needs W&B credentials: set WANDB_API_KEY or run `wandb login`, "
            "or unset WANDB_MODE for an offline run"
        )
    # Scalars and histograms go through wandb.log, not sync_tensorboard (which would log every
    # tag twice); the console is already in log.txt.
    settings = wandb.Settings(silent=True, console="off")
    return wandb.init(
        project=project or "tf-bert",
        name=name,
        config=config or {},
        dir=run_dir,
        mode=mode,
        settings=settings,
    )


def read_scalars(run_dir):
    """A run's TensorBoard scalars as {tag: (steps int64 [n], values float64 [n])}, sorted by step.

    Reads every event file of run_dir/event the way TensorBoard shows them (all points kept; a
    resumed run's steps replace the ones it re-ran). Raises UserError if there are none.
    """
    from tensorboard.backend.event_processing import event_accumulator

    pattern = os.path.join(run_dir, EVENT_DIR, "events.out.tfevents.*")
    if not tf.io.gfile.glob(pattern):
        raise UserError(f"{run_dir}: no TensorBoard events ({pattern}); pass a run directory")
    accumulator = event_accumulator.EventAccumulator(
        os.path.join(run_dir, EVENT_DIR), size_guidance={event_accumulator.TENSORS: 0}
    )
    accumulator.Reload()
    scalars = {}
    for tag in accumulator.Tags()["tensors"]:
        events = accumulator.Tensors(tag)
        values = [tf.make_ndarray(e.tensor_proto) for e in events]
        if values and values[0].ndim == 0:  # histograms are [buckets, 3]
            order = np.argsort([e.step for e in events], kind="stable")
            steps = np.array([e.step for e in events], np.int64)[order]
            scalars[tag] = (steps, np.array(values, np.float64)[order])
    return scalars

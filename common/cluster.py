"""The multi-worker cluster this process is part of, read from the environment without TensorFlow.

Two sources, as `tf.distribute`'s cluster resolvers read them:
- `TF_CONFIG` (JSON): `{"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker",
  "index": i}}`; a "chief" job, when listed, is worker 0 and the "worker" tasks follow it.
- Slurm, when no TF_CONFIG is set and `srun` started several tasks (`SLURM_STEP_NUM_TASKS` > 1):
  one worker per task, `SLURM_PROCID` its index.

One process with no such environment is a cluster of one (`current()` returns None).
"""

import dataclasses
import hashlib
import json
import os

from common.errors import UserError


@dataclasses.dataclass(frozen=True)
class Cluster:
    workers: int  # processes taking part, each with its replicas
    index: int  # this process, 0 = the chief (the one that writes logs and checkpoints)
    source: str  # "TF_CONFIG" or "Slurm"

    @property
    def chief(self):
        return self.index == 0


def _from_tf_config(text):
    try:
        spec = json.loads(text)
        jobs = spec["cluster"]
        task = spec["task"]
        kind, index = task["type"], int(task["index"])
    except (ValueError, KeyError, TypeError) as err:
        raise UserError(
            f"TF_CONFIG is not a cluster spec ({type(err).__name__}: {err}); expected "
            '{"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", "index": 0}}'
        ) from None
    chiefs, workers = list(jobs.get("chief", [])), list(jobs.get("worker", []))
    unknown = sorted(set(jobs) - {"chief", "worker"})
    if unknown:
        raise UserError(f"TF_CONFIG lists jobs {unknown}: only 'chief' and 'worker' are used here")
    sizes = {"chief": len(chiefs), "worker": len(workers)}
    if kind not in sizes or not 0 <= index < sizes[kind]:
        raise UserError(
            f"TF_CONFIG task {kind}:{index} is not in its cluster "
            f"({len(chiefs)} chief, {len(workers)} worker tasks)"
        )
    return Cluster(len(chiefs) + len(workers), index + (len(chiefs) if kind == "worker" else 0),
                   "TF_CONFIG")  # fmt: skip


def current(environ=None):
    """The Cluster of this process, or None when it runs alone."""
    env = os.environ if environ is None else environ
    if env.get("TF_CONFIG"):
        cluster = _from_tf_config(env["TF_CONFIG"])
    elif int(env.get("SLURM_STEP_NUM_TASKS", "1") or 1) > 1:
        cluster = Cluster(
            int(env["SLURM_STEP_NUM_TASKS"]), int(env.get("SLURM_PROCID", 0)), "Slurm"
        )
    else:
        return None
    return cluster if cluster.workers > 1 else None


def is_chief():
    """Whether this process writes the run's outputs: it runs alone, or it is worker 0."""
    found = current()
    return found is None or found.chief


def workers():
    """How many processes take part (1 when alone)."""
    found = current()
    return found.workers if found else 1


def code_digest(root=None):
    """sha256 of the project's Python sources (path and bytes of every .py file below `root`,
    default the project), so that workers can tell they run the same code."""
    root = root or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    digest = hashlib.sha256()
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in ("tests", "tmp"))
        for name in sorted(f for f in files if f.endswith(".py")):
            path = os.path.join(folder, name)
            digest.update(os.path.relpath(path, root).encode() + b"\0")
            with open(path, "rb") as f:
                digest.update(f.read())
    return digest.hexdigest()


def config_digest(settings):
    """sha256 of a run's resolved settings ({key: value}, JSON-serialisable or shown by str)."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()

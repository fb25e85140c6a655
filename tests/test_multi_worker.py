"""Several worker processes on localhost (MultiWorkerMirroredStrategy from TF_CONFIG, started by
scripts/launch_workers.py): 2 workers x 1 replica train exactly as 1 process x 2 replicas, only the
chief writes, resume is exact, and a killed worker ends the other with one line within the timeout.

Every wait is bounded; the launcher and the tests kill what they started."""

import glob
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from common import cluster
from common.errors import UserError
from tests.run_outputs import run_script
from tests.test_finetuning import TINY as TINY_FINETUNING
from tests.test_finetuning import mrpc_dir, squad_file  # noqa: F401 (fixtures)
from tests.test_run_pretraining import STEP_LINE, _final_state, run_dirs, small_run_args

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "run_pretraining.py")
LAUNCHER = os.path.join(ROOT, "scripts", "launch_workers.py")
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import launch_workers  # noqa: E402

pytestmark = pytest.mark.slow

TRAIN = ["--generated-data", "--static-mask", "false", "--steps-per-ckpts", "2"]


def _env(tmp_path):
    workers_tmp = tmp_path / "worker_tmp"
    workers_tmp.mkdir(exist_ok=True)
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", TMPDIR=str(workers_tmp))


def _launch(tmp_path, *args, workers=2, timeout=300, script=SCRIPT):
    command = [LAUNCHER, "--local", str(workers), "--timeout", str(timeout - 30), "--grace", "60"]
    command += ["--", sys.executable, script, *map(str, args)]
    return subprocess.run(
        [sys.executable, *command], capture_output=True, text=True, timeout=timeout,
        env=_env(tmp_path),
    )  # fmt: skip


def _chief_lines(stdout):
    return "\n".join(
        line[len("[worker 0] ") :] for line in stdout.splitlines() if line.startswith("[worker 0] ")
    )


def test_two_workers_equal_two_replicas_step_by_step(tmp_path):
    steps = ["--num-train-steps", "4"]
    multi = _launch(tmp_path, *small_run_args(tmp_path / "multi", *TRAIN, *steps))
    assert multi.returncode == 0, multi.stderr[-3000:]
    single = run_script(
        SCRIPT, *small_run_args(tmp_path / "one", *TRAIN, *steps, "--replicas", "2")
    )
    assert single.returncode == 0, single.stderr[-3000:]
    chief, worker1 = _chief_lines(multi.stdout), multi.stdout.replace("[worker 1] ", "")
    assert "gradient_accumulation_count: 1" in chief  # global batch 8 = 4 x 2 workers
    a, b = STEP_LINE.findall(chief), STEP_LINE.findall(single.stdout)
    assert len(a) == 4 and a == b
    assert STEP_LINE.findall(worker1)[-4:] == a  # the other worker computed the same steps
    (multi_dir,) = run_dirs(tmp_path / "multi")  # only the chief made a run directory
    (single_dir,) = run_dirs(tmp_path / "one")
    _, wa = _final_state(multi_dir)
    _, wb = _final_state(single_dir)
    assert wa.keys() == wb.keys()
    for name in wa:
        np.testing.assert_array_equal(wa[name], wb[name], err_msg=name)
    assert os.listdir(tmp_path / "worker_tmp") == []  # the other worker's files are gone


def test_resume_after_a_multi_worker_run_is_exact(tmp_path):
    whole = _launch(tmp_path, *small_run_args(tmp_path / "whole", *TRAIN, "--num-train-steps", "4"))
    assert whole.returncode == 0, whole.stderr[-3000:]
    first = _launch(tmp_path, *small_run_args(tmp_path / "part", *TRAIN, "--num-train-steps", "2"))
    assert first.returncode == 0, first.stderr[-3000:]
    (part_dir,) = run_dirs(tmp_path / "part")
    rest = _launch(
        tmp_path,
        *small_run_args(tmp_path / "part", *TRAIN, "--num-train-steps", "4"),
        "--restore-dir", part_dir,
    )  # fmt: skip
    assert rest.returncode == 0, rest.stderr[-3000:]
    assert f"resumed from {part_dir}/ckpt-1 at step 2" in _chief_lines(rest.stdout)
    joined = STEP_LINE.findall(_chief_lines(first.stdout) + "\n" + _chief_lines(rest.stdout))
    assert joined == STEP_LINE.findall(_chief_lines(whole.stdout))
    (whole_dir,) = run_dirs(tmp_path / "whole")
    _, wa = _final_state(whole_dir)
    _, wb = _final_state(part_dir)
    for name in wa:
        np.testing.assert_array_equal(wa[name], wb[name], err_msg=name)


def _start_workers(tmp_path, argv_of_worker):
    """Popen of each worker's run_pretraining.py (its own arguments), output in tmp_path files."""
    addresses = [f"localhost:{p}" for p in launch_workers.free_ports(len(argv_of_worker))]
    procs = []
    for k, args in enumerate(argv_of_worker):
        env = dict(_env(tmp_path), TF_CONFIG=launch_workers.tf_config(addresses, k))
        out, err = tmp_path / f"worker{k}.out", tmp_path / f"worker{k}.out.err"
        with open(out, "w") as out, open(err, "w") as err:
            procs.append(subprocess.Popen([sys.executable, SCRIPT, *args], env=env,
                                          stdout=out, stderr=err))  # fmt: skip
    return procs


def _stop(procs):
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()


def test_a_worker_with_another_config_is_refused_at_start(tmp_path):
    args = small_run_args(tmp_path / "run", *TRAIN, "--num-train-steps", "2")
    procs = _start_workers(tmp_path, [args, [*args, "--base-learning-rate", "0.5"]])
    try:
        codes = [p.wait(timeout=240) for p in procs]
    finally:
        _stop(procs)
    assert codes == [2, 2]
    for k in range(2):
        last = (tmp_path / f"worker{k}.out.err").read_text().strip().splitlines()[-1]
        assert last.startswith("error: worker 1 runs with another config than the chief"), last
    assert not run_dirs(tmp_path / "run")  # refused before anything was written


def _wait_for_step(path, step, procs, seconds=240):
    deadline = time.time() + seconds
    while f"step: {step}," not in path.read_text():
        assert time.time() < deadline and procs[0].poll() is None, path.read_text()[-2000:]
        time.sleep(0.2)


def test_sigterm_to_one_worker_checkpoints_the_cluster_and_exits_0(tmp_path):
    args = small_run_args(tmp_path / "run", *TRAIN, "--num-train-steps", "1000")
    procs = _start_workers(tmp_path, [args, args])
    try:
        _wait_for_step(tmp_path / "worker0.out", 3, procs)
        procs[1].send_signal(signal.SIGTERM)
        codes = [p.wait(timeout=120) for p in procs]
    finally:
        _stop(procs)
    assert codes == [0, 0], (tmp_path / "worker0.out.err").read_text()[-2000:]
    chief = (tmp_path / "worker0.out").read_text()
    (run_dir,) = run_dirs(tmp_path / "run")
    saved = re.search(
        r"^a signal to another worker: saved (\S+); resume with --restore-dir", chief, re.M
    )
    assert saved, chief[-2000:]
    assert "SIGTERM: saved " in (tmp_path / "worker1.out").read_text()
    prefix, state = _final_state(run_dir)
    assert prefix == saved.group(1) and 3 <= int(state["global_step"]) < 1000


def test_a_killed_worker_stops_the_other_with_one_line(tmp_path):
    args = small_run_args(tmp_path / "run", *TRAIN, "--num-train-steps", "1000")
    args += ["--collective-timeout", "20"]
    logs = [tmp_path / f"worker{k}.out" for k in range(2)]
    procs = []
    try:
        procs = _start_workers(tmp_path, [args, args])
        _wait_for_step(logs[0], 3, procs)
        procs[1].send_signal(signal.SIGKILL)
        start = time.time()
        code = procs[0].wait(timeout=120)
        waited = time.time() - start
    finally:
        _stop(procs)
    stderr = (tmp_path / "worker0.out.err").read_text()
    assert code == 75 and waited < 60, (code, waited, stderr[-2000:])
    assert "Traceback" not in stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("error: worker 0: lost worker 1 (") and "--restore-dir" in last
    (run_dir,) = run_dirs(tmp_path / "run")
    prefix, _ = _final_state(run_dir)  # the checkpoints written before the loss are readable
    assert int(prefix.rsplit("-", 1)[1]) >= 1


def test_launcher_stops_the_others_when_one_fails_and_bounds_the_run(tmp_path):
    code = "import os, sys, time; i = os.environ['TF_CONFIG']; sys.exit(3) if '\"index\": 1' in i else time.sleep(60)"
    start = time.time()
    status = launch_workers.run_local([sys.executable, "-c", code], 2, timeout=50, grace=2)
    assert status == 3 and time.time() - start < 20
    status = launch_workers.run_local([sys.executable, "-c", "import time; time.sleep(60)"], 2,
                                      timeout=2, grace=1)  # fmt: skip
    assert status == 124


def test_pretrain_distributed_prints_both_phases_per_host(tmp_path):
    """--hosts: each phase's command per host with its TF_CONFIG; phase 2 (phase 2's config and
    data) starts from phase 1's newest run directory, found when phase 2 is started."""
    save = tmp_path / "save here"  # a path the printed commands must quote
    env = dict(os.environ, SAVE_PATH=str(save), VOCAB=str(tmp_path / "none"))
    script = os.path.join(ROOT, "scripts", "pretrain_distributed.sh")
    result = subprocess.run([script, "--hosts", "h0,h1", "large", "--seed", "3"], env=env,
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line for line in lines if line.startswith("#")] == [
        "# phase 1", "# on h0", "# on h1", lines[5], "# on h0", "# on h1"
    ]  # fmt: skip
    assert lines[5].startswith("# phase 2 starts from the last checkpoint of ")
    phases = [lines[2:5:2], lines[7:10:2]]
    for phase, config, data in ((1, "large_128_phase1", "128"), (2, "large_384_phase2", "384")):
        for k, line in enumerate(phases[phase - 1]):
            words = shlex.split(line)
            assert words[0].startswith("TF_CONFIG=")
            assert json.loads(words[0][len("TF_CONFIG=") :]) == {
                "cluster": {"worker": ["h0:12345", "h1:12345"]},
                "task": {"type": "worker", "index": k},
            }
            assert words[1:5] == ["python3", "run_pretraining.py", "--config",
                                  f"configs/pretrain_{config}.json"]  # fmt: skip
            assert words[words.index("--train-file") + 1].startswith(
                f"data/tf_wikipedia/tokenised_{data}_"
            )
            assert words[words.index("--save-path") + 1] == f"{save}/phase{phase}"
            assert words[-2:] == ["--seed", "3"]
    assert "--init-checkpoint" not in phases[0][0]
    # phase 2's --init-checkpoint, as the shell on each host expands it, is phase 1's newest run
    for age, name in enumerate(("pretraining_new", "pretraining_old")):
        os.makedirs(save / "phase1" / name)
        os.utime(save / "phase1" / name, (1e9 - age, 1e9 - age))
    argument = phases[1][0].split("--init-checkpoint ", 1)[1].split(" --save-path")[0]
    shown = subprocess.run(["bash", "-c", f"printf %s {argument}"], capture_output=True,
                           text=True, timeout=10, check=True)  # fmt: skip
    assert shown.stdout == f"{save}/phase1/pretraining_new"


def test_cluster_from_tf_config_and_slurm():
    spec = launch_workers.tf_config(["a:1", "b:2", "c:3"], 2)
    assert cluster.current({"TF_CONFIG": spec}) == cluster.Cluster(3, 2, "TF_CONFIG")
    chief = (
        '{"cluster": {"chief": ["a:1"], "worker": ["b:2"]}, "task": {"type": "worker", "index": 0}}'
    )
    assert cluster.current({"TF_CONFIG": chief}).index == 1
    assert cluster.current({"SLURM_STEP_NUM_TASKS": "4", "SLURM_PROCID": "3"}).index == 3
    assert cluster.current({"SLURM_STEP_NUM_TASKS": "1"}) is None
    assert cluster.current({}) is None
    with pytest.raises(UserError, match="TF_CONFIG is not a cluster spec"):
        cluster.current({"TF_CONFIG": "{not json"})
    with pytest.raises(UserError, match="task worker:5 is not in its cluster"):
        cluster.current({"TF_CONFIG": launch_workers.tf_config(["a:1", "b:2"], 5)})


def test_replicas_per_worker_must_match_the_devices(tmp_path):
    """On CPU a worker is one replica: --replicas 2 per worker is one line naming the worker."""
    args = small_run_args(tmp_path / "bad", *TRAIN, "--num-train-steps", "1")
    result = _launch(tmp_path, *args, "--replicas", "2", "--global-batch-size", "16")
    assert result.returncode == 2
    assert "--replicas 2 per worker, but this worker (TF_CONFIG task 0) has no GPU" in result.stderr
    assert not run_dirs(tmp_path / "bad")


GPT2_STEP = re.compile(r"^step (\d+) of epoch (\d+), loss: ([\d.]+), acc: ([\d.]+)", re.M)


def test_gpt2_two_workers_equal_two_replicas(tmp_path):
    """train_gpt2.py: 2 workers x 1 replica == --replication-factor 2, every step and weight; only
    the chief writes the run and its Hugging Face folder."""
    config = tmp_path / "gpt2.json"
    config.write_text(json.dumps(dict(
        vocab_size=97, n_positions=12, n_embd=16, n_layer=2, n_head=2, n_inner=32,
        activation_function="gelu_new", resid_pdrop=0.1, embd_pdrop=0.1, attn_pdrop=0.1,
        model_type="gpt2")))  # fmt: skip
    args = ["--model-config", config, "--max-len", 12, "--dataset", "generated", "--batch-size", 2,
            "--gradient-accumulation", 2, "--device-iterations", 2, "--learning-rate", 3e-3,
            "--xla", "false", "--seed", 7, "--epochs", 2]  # fmt: skip
    script = os.path.join(ROOT, "train_gpt2.py")
    single = run_script(script, *args, "--replication-factor", 2, "--checkpoint-output-dir",
                        tmp_path / "one")  # fmt: skip
    assert single.returncode == 0, single.stderr[-3000:]
    multi = _launch(tmp_path, *args, "--checkpoint-output-dir", tmp_path / "multi", script=script)
    assert multi.returncode == 0, multi.stderr[-3000:]
    a = GPT2_STEP.findall(_chief_lines(multi.stdout))
    assert len(a) == 8 and a == GPT2_STEP.findall(single.stdout)
    (multi_dir,) = glob.glob(str(tmp_path / "multi" / "gpt2_*"))
    (single_dir,) = glob.glob(str(tmp_path / "one" / "gpt2_*"))
    assert os.path.isfile(os.path.join(multi_dir, "hf", "model.safetensors"))
    _, wa = _final_state(multi_dir)
    _, wb = _final_state(single_dir)
    # Not bitwise here (BERT's LAMB run is): differences of a few float32 ulps in the reduced
    # gradients, grown by Adam's normalisation over 8 steps (m / sqrt(v) of a near-zero gradient),
    # reach 1.2e-6 on an AVX2 CPU without oneDNN; a wrong reduction is off by ~lr = 3e-3.
    for name in wa:
        np.testing.assert_allclose(wa[name], wb[name], rtol=0, atol=1e-5, err_msg=name)
    assert os.listdir(tmp_path / "worker_tmp") == []


FINETUNING_STEP = re.compile(r"^step: (\d+), epoch: [\d.]+, lr: \S+, loss: ([\d.]+)", re.M)


def _finetune_both_ways(tmp_path, script, args):
    """Runs `script args` as 2 workers and as 1 process with --replicas 2, each saving under its
    own folder of tmp_path with --output-dir out/ there; checks that both wrote the same output
    files, byte for byte, and that the other worker left nothing. Returns (the chief's stdout,
    the single process's stdout)."""
    multi = _launch(tmp_path, *args, "--save-path", tmp_path / "multi", "--output-dir",
                    tmp_path / "multi" / "out", script=script)  # fmt: skip
    assert multi.returncode == 0, multi.stderr[-3000:]
    single = run_script(script, *args, "--replicas", 2, "--save-path", tmp_path / "one",
                        "--output-dir", tmp_path / "one" / "out")  # fmt: skip
    assert single.returncode == 0, single.stderr[-3000:]
    assert os.listdir(tmp_path / "worker_tmp") == []  # the other worker's run directory is gone
    assert len(os.listdir(tmp_path / "multi")) == len(os.listdir(tmp_path / "one"))  # runs + out
    outputs = {}
    for way in ("multi", "one"):
        out = tmp_path / way / "out"
        outputs[way] = {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*.*")}
    assert outputs["multi"] == outputs["one"]
    return _chief_lines(multi.stdout), single.stdout, sorted(outputs["one"])


def test_glue_two_workers_equal_two_replicas(tmp_path, sample_vocab, mrpc_dir):  # noqa: F811
    """run_classifier.py, 2 seeds: every step, the dev metrics and the test predictions of 2
    workers equal --replicas 2; only the chief writes (the others wait for it between seeds)."""
    args = ["--config", ROOT + "/configs/glue_tiny.json", *TINY_FINETUNING,
            "--global-batch-size", 8, "--task-name", "mrpc", "--data-dir", mrpc_dir,
            "--vocab-file", sample_vocab, "--num-train-steps", 3, "--num-seeds", 2, "--seed", 5,
            "--do-training", "--do-evaluation", "--do-predict"]  # fmt: skip
    chief, single, files = _finetune_both_ways(
        tmp_path, os.path.join(ROOT, "run_classifier.py"), args
    )
    assert files == ["eval_summary.txt"] + [
        f"seed_{s}/{name}" for s in (5, 6) for name in ("eval_results.txt", "predict_results.txt")
    ]
    steps = FINETUNING_STEP.findall(chief)
    assert len(steps) == 6 and steps == FINETUNING_STEP.findall(single)
    run_dir = sorted(glob.glob(str(tmp_path / "multi" / "GLUE_*")))[0]  # a run per seed
    with open(os.path.join(run_dir, "arguments.json")) as f:
        arguments = json.load(f)
    assert arguments["gradient_accumulation_count"] == 1  # global batch 8 = 4 x 2 workers


def test_squad_two_workers_equal_two_replicas(tmp_path, sample_vocab, squad_file):  # noqa: F811
    """run_squad.py: training, predictions and their scores of 2 workers equal --replicas 2; only
    the chief writes them (the other worker waits for it and leaves with it)."""
    args = ["--config", ROOT + "/configs/squad_tiny.json", *TINY_FINETUNING,
            "--global-batch-size", 8, "--doc-stride", 24, "--max-query-length", 16,
            "--vocab-file", sample_vocab, "--train-file", squad_file, "--predict-file", squad_file,
            "--num-train-steps", 3, "--tfrecord-dir", tmp_path / "cache",
            "--do-training", "--do-predict", "--do-evaluation"]  # fmt: skip
    chief, single, files = _finetune_both_ways(tmp_path, os.path.join(ROOT, "run_squad.py"), args)
    assert files == ["eval_results.json", "nbest_predictions.json", "predictions.json"]
    steps = FINETUNING_STEP.findall(chief)
    assert len(steps) == 3 and steps == FINETUNING_STEP.findall(single)

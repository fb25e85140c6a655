#!/usr/bin/env python3
"""Start N worker processes of one training command on this machine, as a multi-worker cluster.

    python3 scripts/launch_workers.py --local 2 [--timeout 3600] -- \\
        python3 run_pretraining.py --config configs/pretrain_tiny_128_lamb.json ...

Each worker gets `TF_CONFIG` naming every worker at a free localhost port and its own index
(worker 0 is the chief: it alone writes the run directory and checkpoints). Their output lines are
prefixed with `[worker K]`. When one worker fails, the others are given `--grace` seconds to notice
(they stop on the collective timeout with a line naming the lost worker) and are then killed;
nothing outlives the launcher. Exit status: 0 when every worker succeeded, else the first failing
worker's status (124 when `--timeout` ran out).

`--print-only HOST,HOST,...` prints the command and TF_CONFIG of each host of a real cluster
instead (port `--port`, default 12345), to run one per machine.
"""

import argparse
import json
import os
import shlex
import socket
import subprocess
import sys
import threading
import time


def free_ports(n):
    """n distinct localhost ports that were free a moment ago."""
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("localhost", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def tf_config(addresses, index):
    return json.dumps(
        {"cluster": {"worker": addresses}, "task": {"type": "worker", "index": index}}
    )


def _relay(stream, prefix, out):
    for line in stream:
        out.write(prefix + line)
        out.flush()


def run_local(command, workers, timeout, grace, env=None):
    """Runs `command` as `workers` local workers; returns the exit status (see the module doc)."""
    addresses = [f"localhost:{p}" for p in free_ports(workers)]
    procs, threads = [], []
    try:
        for k in range(workers):
            worker_env = dict(env or os.environ, TF_CONFIG=tf_config(addresses, k))
            proc = subprocess.Popen(
                command, env=worker_env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
            procs.append(proc)
            for stream, out in ((proc.stdout, sys.stdout), (proc.stderr, sys.stderr)):
                thread = threading.Thread(target=_relay, args=(stream, f"[worker {k}] ", out))
                thread.start()
                threads.append(thread)
        deadline, failed_at, status = time.time() + timeout, None, 0
        while None in [p.poll() for p in procs]:  # poll every one (any() would stop early)
            now = time.time()
            if now > deadline or (failed_at is not None and now > failed_at + grace):
                status = status or 124
                break
            for k, p in enumerate(procs):
                if p.returncode not in (None, 0) and failed_at is None:
                    failed_at, status = now, p.returncode
                    print(f"launch_workers: worker {k} exited with status {p.returncode}",
                          file=sys.stderr, flush=True)  # fmt: skip
            time.sleep(0.2)
        if not status:
            status = next((p.returncode for p in procs if p.returncode), 0)
        return status
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
        for thread in threads:
            thread.join(timeout=5)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--local", type=int, metavar="N", help="start N workers on this machine")
    where.add_argument("--print-only", metavar="HOSTS", help="comma-separated hosts of a cluster")
    parser.add_argument("--port", type=int, default=12345, help="with --print-only")
    parser.add_argument(
        "--timeout", type=float, default=24 * 3600, help="seconds for the whole run"
    )
    parser.add_argument("--grace", type=float, default=360.0,
                        help="seconds the others get after one worker fails")  # fmt: skip
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- the training command")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the training command after --")
    if args.print_only:
        hosts = [h for h in args.print_only.split(",") if h]
        addresses = [f"{h}:{args.port}" for h in hosts]
        for k, host in enumerate(hosts):
            print(f"# on {host}\nTF_CONFIG={shlex.quote(tf_config(addresses, k))} "
                  f"{shlex.join(command)}")  # fmt: skip
        return 0
    if args.local < 2:
        parser.error("--local needs at least 2 workers")
    return run_local(command, args.local, args.timeout, args.grace)


if __name__ == "__main__":
    sys.exit(main())

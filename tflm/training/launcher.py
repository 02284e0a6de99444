"""A localhost cluster of training workers: the library half of `python -m tflm.launch` (tflm/launch.py).

`start_workers` starts N `python -m tflm.train` processes, each with the `TF_CONFIG` of one task
of a localhost cluster (`reserve_ports`, `tf_configs`), and relays every line they print prefixed
with their task; `supervise` waits for them and returns the first non-zero exit code after
stopping the rest. It starts TensorFlow's own multi-worker runtime; it is no scheduler. On
SIGINT/SIGTERM it forwards SIGTERM, so every worker checkpoints at the same step and exits with
code 42 (see tflm.errors).
"""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

from tflm.errors import EXIT_PREEMPTED, TflmError

STOP_GRACE_S = 10  # after a failure, how long the other workers get to exit before SIGKILL
PREEMPTION_GRACE_S = 300  # after a preemption, how long the others get to save their checkpoint


def reserve_ports(first_port, count):
    """`count` localhost ports: first_port, first_port+1, ... (checked free) or any free ones."""
    ports = []
    for i in range(count):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("localhost", first_port + i if first_port else 0))
            except OSError:
                raise TflmError(f"port {first_port + i} is already in use") from None
            ports.append(s.getsockname()[1])
    return ports


def tf_configs(ports):
    """One TF_CONFIG JSON string per worker of a localhost cluster."""
    cluster = {"worker": [f"localhost:{p}" for p in ports]}
    return [json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})
            for i in range(len(ports))]


def relay(stream, prefix, out_lock):
    """Copy a worker's output line by line, each line prefixed with its task."""
    for line in iter(stream.readline, ""):
        if not line.startswith(prefix):
            line = prefix + line
        with out_lock:
            sys.stdout.write(line)
            sys.stdout.flush()
    stream.close()


def start_workers(train_args, workers, first_port=0):
    """Start `workers` processes of `python -m tflm.train train_args...` on ports from `first_port`
    (0: any free ones); returns (processes, relay threads)."""
    configs = tf_configs(reserve_ports(first_port, workers))
    lock = threading.Lock()
    procs, threads = [], []
    for index, tf_config in enumerate(configs):
        env = {**os.environ, "TF_CONFIG": tf_config, "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen([sys.executable, "-m", "tflm.train", *train_args], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                stdin=subprocess.DEVNULL)
        thread = threading.Thread(target=relay, args=(proc.stdout, f"[worker {index}] ", lock), daemon=True)
        thread.start()
        procs.append(proc)
        threads.append(thread)
    return procs, threads


def stop(procs, sig=signal.SIGTERM, grace_s=STOP_GRACE_S):
    """Send `sig` (if any) to the running workers, then SIGKILL any still running after `grace_s`."""
    for proc in procs:
        if sig is not None and proc.poll() is None:
            proc.send_signal(sig)
    deadline = time.monotonic() + grace_s
    for proc in procs:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def supervise(procs):
    """Wait for the workers; on the first failure stop the rest. Returns the exit code."""
    forwarded = []

    def forward(signum, _frame):
        forwarded.append(signum)
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while True:
            codes = [proc.poll() for proc in procs]
            failed = [(i, c) for i, c in enumerate(codes) if c not in (None, 0)]
            if failed and not forwarded:
                index, code = failed[0]
                if code == EXIT_PREEMPTED:  # the others are saving the same checkpoint: let them
                    print(f"tflm.launch: worker {index} was preempted; waiting for the others to checkpoint",
                          file=sys.stderr, flush=True)
                    stop(procs, sig=None, grace_s=PREEMPTION_GRACE_S)
                else:
                    print(f"tflm.launch: worker {index} exited with code {code}; stopping the others",
                          file=sys.stderr, flush=True)
                    stop(procs)
                return code
            if all(c is not None for c in codes):
                return next((c for c in codes if c), 0)
            time.sleep(0.2)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)

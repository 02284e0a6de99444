"""A pipeline run's trace: for runtime.pipeline_trace_steps steps, when each stage ran each
micro-batch's forward and backward (RUN/pipeline_trace.jsonl, one step per line, written by the
chief; `python -m tflm.plot --pipeline RUN` draws it). A record:

    {"step": 1, "time": <unix time>, "stages": 2, "microbatches": 4, "schedule": "1f1b",
     "devices": ["/device:CPU:0", ...], "device_bytes": [<weights + optimizer state on each>, ...],
     "lanes": [[<stage 0's devices>], ...], "lane_bytes": [[<weights + optimizer state on each>], ...],
     "block_bytes": {"decoder_0": [<on each lane>], ...}, "lane_sums": <sums over lanes per step>,
     "lane_bytes_moved": <bytes they copy between lanes per step>,
     "events": [{"stage": 0, "kind": "forward", "microbatch": 0, "start_s": 0.0, "end_s": 0.012}, ...]}

A stage's lanes are its devices with runtime.tensor_parallel (one without; device_bytes sums them).

Times are seconds from the step's first start. The measured bubble is the share of the stages'
time, over the step's span, in which they did no work: 1 - busy / (stages x span).
"""

import json
import os

from tflm import atomic
from tflm.errors import TflmError
from tflm.jsonl import BadLine, json_objects
from tflm.runs.run_dir import check_still_locked

TRACE_FILE = "pipeline_trace.jsonl"


def trace_path(run_dir):
    """Where a run's pipeline trace is."""
    return os.path.join(run_dir, TRACE_FILE)


def append_trace(run_dir, record):
    """Append one traced step (the chief, holding the run directory's lock)."""
    check_still_locked(run_dir)
    try:
        atomic.append_line(trace_path(run_dir), json.dumps(record))
    except OSError as error:
        raise TflmError(f"cannot write {trace_path(run_dir)}: {error.strerror}") from None


def read_traces(run_dir):
    """The traced steps of a run, oldest first; a TflmError if there are none or the file is damaged."""
    path = trace_path(run_dir)
    if not atomic.exists(path):
        raise TflmError(f"{run_dir} has no pipeline trace ({TRACE_FILE}); train it with "
                        "runtime.pipeline_stages >= 2 and runtime.pipeline_trace_steps >= 1")
    try:
        return [record for _, record in json_objects(atomic.read_bytes(path).decode("utf-8"))]
    except (BadLine, UnicodeDecodeError) as error:
        raise TflmError(f"{path}: {error}") from None


def measured_bubble(record):
    """The share of the stages' time in a traced step in which they were idle."""
    events = record["events"]
    span = max(e["end_s"] for e in events) - min(e["start_s"] for e in events)
    busy = sum(e["end_s"] - e["start_s"] for e in events)
    return 1.0 - busy / (record["stages"] * span) if span > 0 else 0.0

"""The README's Python examples run as written: each ```python block is executed in a fresh
process, in a temporary directory that holds the repository's configs/.

So that the suite stays fast, SUBSTITUTIONS makes the blocks that train tiny: each (old, new) pair
is replaced in the block that contains `old`, and the test fails if `old` is no longer in the
README (edit the pair with the example). Blocks that need a TF Serving server (SERVER_MARKERS) are
compiled, not run: the tests start no server and send nothing off this machine.
"""

import ast
import os
import re
import subprocess
import sys

import pytest

from conftest import REPO

pytestmark = pytest.mark.slow  # the examples train a run

README = os.path.join(REPO, "README.md")
TINY = ('["train.steps=2", "train.eval_every=2", "train.eval_batches=1", "train.global_batch_size=8", '
        '"model.num_layers=1", "model.lstm_units=32", "model.embed_dim=32", "data.seq_len=32"]')
SUBSTITUTIONS = [
    ('["train.steps=200"]', TINY),  # the first example's 200 steps of the full-size LSTM
    ('"runs/transformer-X"', '"runs/lstm"'),  # the score example reads the run the first one trained
]
SERVER_MARKERS = ("grpc.insecure_channel",)


def python_blocks():
    """[(line number, code)] of every ```python block of the README, in order."""
    text = open(README, encoding="utf-8").read()
    return [(text.count("\n", 0, match.start()) + 2, match.group(1))
            for match in re.finditer(r"^```python\n(.*?)^```$", text, re.S | re.M)]


def test_the_readme_python_examples_run(tmp_path):
    blocks = python_blocks()
    assert len(blocks) >= 3
    for old, _ in SUBSTITUTIONS:
        assert any(old in code for _, code in blocks), f"{old} is no longer in a README example: update SUBSTITUTIONS"
    runnable = []
    for line, code in blocks:
        if any(marker in code for marker in SERVER_MARKERS):
            compile(code, f"README.md:{line}", "exec")
            continue
        for old, new in SUBSTITUTIONS:
            code = code.replace(old, new)
        runnable.append((line, code))
    os.symlink(os.path.join(REPO, "configs"), tmp_path / "configs")
    script = "\n".join(f"exec(compile({code!r}, 'README.md:{line}', 'exec'), {{'__name__': '__main__'}})"
                       for line, code in runnable)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=900,
                            cwd=tmp_path, env={**os.environ, "PYTHONPATH": REPO, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert os.path.isfile(tmp_path / "runs" / "lstm" / "config.yaml")
    printed = [ast.literal_eval(line) for line in result.stdout.splitlines() if line.startswith("['")]
    assert len(printed) == 1 and len(printed[0]) == 1 and printed[0][0], result.stdout  # the first example's completion

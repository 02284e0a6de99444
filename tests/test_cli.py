"""The command line answers --help at once: no command module loads TensorFlow when it is imported."""

import re
import subprocess
import sys

import pytest

from conftest import REPO
from tflm.cli import COMMANDS

HEAVY = re.compile(r"^import time: .*\| +(tensorflow|keras|keras_nlp|keras_hub)(\.\S+)?$", re.MULTILINE)


def python(*args, timeout=60):
    """Run `python args...` in the checkout; the CompletedProcess."""
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, cwd=REPO)


HELP_COMMANDS = ([["-m", "tflm", "--help"]] + [["-m", "tflm", name, "--help"] for name in COMMANDS]
                 + [["-m", f"tflm.{name}", "--help"] for name in COMMANDS])


@pytest.mark.parametrize("args", HELP_COMMANDS, ids=" ".join)
def test_help_answers_without_loading_tensorflow(args):
    result = python("-X", "importtime", *args)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("usage:")
    assert HEAVY.findall(result.stderr) == []
    if args[-2:] != ["tflm", "--help"]:
        assert "--verbose" in result.stdout


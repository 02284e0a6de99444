"""The command line answers --help and --version at once (no TensorFlow), and `import tflm` names
the public API without loading TensorFlow until a function that needs it is used."""

import importlib
import os
import re
import subprocess
import sys
import textwrap
import time

import pytest

from conftest import REPO
from tflm import __version__
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
        name = args[-2].removeprefix("tflm.")
        module = importlib.import_module(f"tflm.{name}")
        assert result.stdout.startswith(f"usage: python -m tflm.{name} ")  # the same, however it is started
        assert " ".join(module.__doc__.splitlines()[0].split()) in " ".join(result.stdout.split())
        assert "--verbose" in result.stdout


def test_the_help_lists_every_command_and_an_unknown_one_is_exit_2():
    listed = python("-m", "tflm", "--help").stdout
    assert all(re.search(rf"^  {name} +\S", listed, re.MULTILINE) for name in COMMANDS)
    unknown = python("-m", "tflm", "trian")
    assert unknown.returncode == 2 and unknown.stdout == "" and "usage: tflm COMMAND" in unknown.stderr


@pytest.mark.parametrize("args", [["-m", "tflm.launch"], ["-m", "tflm", "launch"]], ids=" ".join)
def test_a_command_s_mistake_is_one_line_and_exit_2_however_it_is_started(args):
    result = python(*args, "--workers", "0", "--", "--run-dir", "runs/x")
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == "tflm: error: --workers must be at least 1, got 0\n"


def test_version_is_printed_and_is_the_one_setup_py_installs():
    assert python("-m", "tflm", "--version").stdout == f"tflm {__version__}\n"
    assert python("setup.py", "--version").stdout.strip().splitlines()[-1] == __version__


PUBLIC_API = textwrap.dedent("""
    import json, os, sys
    import tflm
    from tflm import TflmError, load_config, plot_runs

    def heavy():
        return sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras", "keras_nlp"))

    run = os.path.join(sys.argv[1], "run")
    os.makedirs(run)
    with open(os.path.join(run, "history.jsonl"), "w") as f:
        f.write(json.dumps({"step": 1, "tokens_seen": 8, "elapsed_s": 1.0, "loss": 2.0, "accuracy": 0.1,
                            "val_loss": 2.1, "val_accuracy": 0.1}) + "\\n")
    plot_runs([run]).savefig(os.path.join(sys.argv[1], "curves.png"))
    assert load_config(None, ["train.steps=5"]).train.steps == 5
    print("after import, config and plot:", heavy())

    from tflm import export_run, load_run, score_texts  # noqa: F401
    from tflm.serving.decoding import generate  # noqa: F401
    from tflm.training.train import train  # noqa: F401
    assert [getattr(tflm, name).__module__ for name in tflm.__all__] == [tflm.API[name] for name in tflm.__all__]
    print("after importing every function:", heavy())
""")


def test_import_tflm_names_the_public_api_without_loading_tensorflow(tmp_path):
    result = python("-c", PUBLIC_API, str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines() == ["after import, config and plot: []", "after importing every function: []"]
    assert os.path.getsize(tmp_path / "curves.png") > 1000


def test_a_yaml_alias_bomb_is_one_short_line_in_a_second_with_little_memory(tmp_path):
    # 387 bytes standing for 9**9 strings: once 1 GB and a 351 MB error line (MemoryError one level
    # deeper). Run under a 1 GB address-space limit, which the expanded value would exceed.
    bomb = "[" + ", ".join(["&b0 [" + ",".join(["lol"] * 9) + "]"]
                           + [f"&b{i} [" + ",".join([f"*b{i - 1}"] * 9) + "]" for i in range(1, 9)]) + "]"
    limit = "import resource; resource.setrlimit(resource.RLIMIT_AS, (2**30, 2**30)); "
    started = time.monotonic()
    result = python("-c", limit + "import sys; from tflm.train import main; from tflm.quiet import run_command; "
                    "sys.exit(run_command(main))", "--set", f"data.paths={bomb}", "--run-dir", str(tmp_path / "r"))
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr == ("tflm: error: --set 'data.paths': the YAML value expands to more than 100,000 values "
                             "(through aliases)\n")
    assert time.monotonic() - started < 20 and not (tmp_path / "r").exists()

"""Commands are quiet: TensorFlow's native start-up lines are hidden, tflm's own lines and every
genuine error still arrive (even through os._exit or a crash), and --verbose shows everything."""

import itertools
import os
import subprocess
import sys
import textwrap

import pytest

from conftest import REPO
from tflm.quiet import FLUSH_REQUEST, filter_lines, is_noise, verbose_requested

# What TensorFlow 2.21 prints on a CPU-only machine before tflm's first line (and a GPU machine's kin).
NOISE = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "I0000 00:00:1795447620.745766   12767 cudart_stub.cc:31] Could not find cuda drivers on your machine, "
    "GPU will not be used.",
    "I0000 00:00:1795447620.799969   12767 cpu_feature_guard.cc:227] This TensorFlow binary is optimized to use "
    "available CPU instructions in performance-critical operations.",
    "To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow with the "
    "appropriate compiler flags.",
    "E0000 00:00:1795447624.398389   12767 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: "
    "Failed call to cuInit: UNKNOWN ERROR (303)",
    "I0000 00:00:1795447680.252088   13606 service.cc:153] XLA service 0x7f16a8032880 initialized for platform "
    "Host (this does not guarantee that XLA will be used). Devices:",
    "I0000 00:00:1795447683.259369   13606 device_compiler.h:208] Compiled cluster using XLA!  This line is "
    "logged at most once for the lifetime of the process.",
    "W0000 00:00:1795447683.259369   13606 gpu_device.cc:2344] Cannot dlopen some GPU libraries.",
    "E0000 00:00:1795447683.259369   13606 cuda_dnn.cc:8310] Unable to register cuDNN factory: Attempting to "
    "register factory for plugin cuDNN when one has already been registered",
    "2024-01-01 10:00:00.123456: I tensorflow/core/platform/cpu_feature_guard.cc:182] This TensorFlow binary "
    "is optimized to use available CPU instructions in performance-critical operations.",
]
KEPT = [
    "E0000 00:00:1795447683.259369   13606 collective_ops.cc:120] Collective to worker 1 failed: socket closed",
    "F0000 00:00:1795447683.259369   13606 tensor.cc:123] Check failed: NumElements() == 1",
    "Fatal Python error: Segmentation fault",
    "  File \"/tmp/x.py\", line 1 in <module>",
    "tflm: error: something a user can fix",
    "",
]


def filtered(text):
    """What the filter passes on of `text` written to descriptor 2."""
    source, sink = os.pipe()
    out_read, out_write = os.pipe()
    os.write(sink, text.encode("utf-8"))
    os.close(sink)
    filter_lines(source, out_write)
    os.close(source)
    os.close(out_write)
    with os.fdopen(out_read, "rb") as out:
        return out.read().decode("utf-8")


def test_tensorflow_noise_is_left_out_and_every_other_line_is_kept_unchanged():
    interleaved = [line for pair in itertools.zip_longest(NOISE, KEPT) for line in pair if line is not None]
    assert filtered("\n".join(interleaved) + "\n") == "\n".join(KEPT) + "\n"
    assert filtered(NOISE[1] + "\na last line without a newline") == "a last line without a newline"


def test_the_task_list_that_goes_on_a_hidden_info_line_is_hidden_and_an_error_s_is_kept():
    info = ("I0000 00:00:1796560321.379534   17443 coordination_service.cc:505] Example stragglers:\n"
            "/job:worker/replica:0/task:1\n")
    error = ("E0000 00:00:1796560566.480966   22525 base_collective_executor.cc:252] The following tasks are "
             "unhealthy (stopped sending heartbeats):\n/job:worker/replica:0/task:1\n")
    after_a_kept_line = "tflm: a line\n/job:worker/replica:0/task:2\n"
    assert filtered(info + after_a_kept_line) == after_a_kept_line
    assert filtered(info + error) == error


def test_a_flush_request_is_acknowledged_and_never_shown():
    source, sink = os.pipe()
    out_read, out_write = os.pipe()
    ack_read, ack_write = os.pipe()
    os.write(sink, b"half a line" + FLUSH_REQUEST + b"\nnext\n")
    os.close(sink)
    filter_lines(source, out_write, ack_write)
    for fd in (source, out_write, ack_write):
        os.close(fd)
    assert os.read(out_read, 100) == b"half a linenext\n"
    assert os.read(ack_read, 100) == b"."


@pytest.mark.parametrize("argv, env, verbose", [
    (["--run-dir", "r"], {}, False),
    (["--run-dir", "r", "--verbose"], {}, True),
    (["--verb"], {}, True),  # argparse takes an unambiguous abbreviation
    (["--workers", "2", "--", "--verbose"], {}, False),  # launch: the workers' argument, not the launcher's
    ([], {"TFLM_VERBOSE": "1"}, True),
    ([], {"TFLM_VERBOSE": "0"}, False),
])
def test_verbose_is_asked_by_flag_or_environment(monkeypatch, argv, env, verbose):
    monkeypatch.delenv("TFLM_VERBOSE", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert verbose_requested(argv) is verbose


# A command whose main writes what TensorFlow's C++ code writes (to descriptor 2, not sys.stderr),
# then ends as the test says. Run as `python -c COMMAND HOW [ARGS]`.
COMMAND = textwrap.dedent("""
    import os, signal, subprocess, sys
    from tflm.errors import TflmError, exit_on_user_error
    from tflm.quiet import run_command
    from tflm.training.strategy import exit_now

    NOISE, KEPT = {noise!r}, {kept!r}

    @exit_on_user_error
    def main(argv):
        print("tflm: stdout line", flush=True)
        os.write(2, (NOISE + "\\n" + KEPT + "\\n").encode())
        how = argv[0]
        if how == "error":
            raise TflmError("a mistake")
        if how == "exit_now":
            exit_now("tflm: error: lost worker 1 at step 3", 3)
        if how == "crash":
            os.write(2, b"F0000 00:00:1.2  1 check.cc:1] Check failed: boom\\n")
            os.kill(os.getpid(), signal.SIGKILL)
        if how == "child":
            subprocess.run([sys.executable, "-c", "import os; os.write(2, b'from a child\\\\n')"])
        print(f"TFLM_VERBOSE={{os.environ.get('TFLM_VERBOSE')}}", flush=True)
        return 0

    sys.exit(run_command(main))
""").format(noise="\n".join(NOISE), kept=KEPT[0])


def run_command_process(*args, env=None):
    """Run COMMAND in a fresh process; the CompletedProcess."""
    full_env = {k: v for k, v in os.environ.items() if k not in ("TFLM_VERBOSE", "TF_CPP_MIN_LOG_LEVEL")}
    return subprocess.run([sys.executable, "-c", COMMAND, *args], capture_output=True, text=True, timeout=60,
                          cwd=REPO, env={**full_env, **(env or {})})


def test_a_command_hides_the_noise_and_its_error_is_the_last_line():
    result = run_command_process("error")
    assert result.returncode == 2
    assert result.stdout == "tflm: stdout line\n"
    assert result.stderr == KEPT[0] + "\ntflm: error: a mistake\n"


def test_nothing_is_lost_through_os_exit_a_crash_or_a_child_process():
    result = run_command_process("exit_now")
    assert result.returncode == 3
    assert result.stderr == KEPT[0] + "\ntflm: error: lost worker 1 at step 3\n"

    result = run_command_process("crash")
    assert result.returncode == -9
    assert result.stderr == KEPT[0] + "\nF0000 00:00:1.2  1 check.cc:1] Check failed: boom\n"

    result = run_command_process("child")
    assert result.returncode == 0 and result.stderr == KEPT[0] + "\nfrom a child\n"


@pytest.mark.parametrize("args, env", [(["--verbose"], None), ([], {"TFLM_VERBOSE": "1"})])
def test_verbose_shows_everything_and_passes_it_on(args, env):
    result = run_command_process("ok", *args, env=env)
    assert result.returncode == 0
    assert result.stderr == "\n".join(NOISE + [KEPT[0]]) + "\n"
    assert "TFLM_VERBOSE=1" in result.stdout  # so the workers tflm.launch starts are verbose too


def test_tflm_used_as_a_library_leaves_stderr_alone():
    library_use = textwrap.dedent("""
        import os, sys
        from tflm.train import main
        main(["--print-config"])
        os.write(2, {noise!r}.encode())
    """).format(noise=NOISE[0] + "\n")
    result = subprocess.run([sys.executable, "-c", library_use], capture_output=True, text=True, timeout=60,
                            cwd=REPO)
    assert result.returncode == 0 and "train:" in result.stdout
    assert result.stderr == NOISE[0] + "\n"


def tflm_process(*args):
    """`python -m tflm...` as a user runs it: no TF_CPP_MIN_LOG_LEVEL, no TFLM_VERBOSE."""
    env = {k: v for k, v in os.environ.items() if k not in ("TFLM_VERBOSE", "TF_CPP_MIN_LOG_LEVEL")}
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=300, cwd=REPO,
                          env=env)


@pytest.mark.slow
def test_train_score_and_generate_print_only_their_own_lines_unless_verbose(tmp_path):
    run_dir = str(tmp_path / "run")
    trained = tflm_process("tflm.train", "--set", "train.steps=2", "--set", "train.eval_every=2", "--set",
                           "train.eval_batches=1", "--set", "model.num_layers=1", "--set", "model.embed_dim=32",
                           "--set", "data.seq_len=32", "--run-dir", run_dir)
    assert (trained.returncode, trained.stderr) == (0, "")
    assert "done: step 2" in trained.stdout
    scored = tflm_process("tflm", "score", "--run-dir", run_dir, "def main():")  # as the tflm console script
    assert (scored.returncode, scored.stderr) == (0, "") and scored.stdout.startswith("log_prob ")
    generated = tflm_process("tflm.generate", "--run-dir", run_dir, "--prompt", "def ", "--max-new-tokens", "8")
    assert (generated.returncode, generated.stderr) == (0, "") and generated.stdout.startswith("def ")

    mistake = tflm_process("tflm.score", "--run-dir", run_dir, "--stride", "0", "def")  # found after TF started
    assert mistake.returncode == 2
    assert mistake.stderr == "tflm: error: stride must be an integer from 1 to the context (32), got 0\n"

    verbose = tflm_process("tflm.score", "--run-dir", run_dir, "--verbose", "def")
    assert verbose.returncode == 0
    assert "absl::InitializeLog" in verbose.stderr and any(map(is_noise, verbose.stderr.splitlines()))

"""Export arguments checked before any run is loaded: a bad model name or request limit, or a run
directory without a checkpoint, is one line (exit 2 from the command line) and writes nothing.
(Exports of trained runs: tests/serving/test_export.py.)"""

import os

import pytest

from conftest import checkpointless_run
from tflm.errors import TflmError
from tflm.export import main
from tflm.serving.export import export_run


@pytest.mark.parametrize("name", ["../elsewhere", ".hidden", "a b"])
def test_a_model_name_that_is_no_plain_directory_name_is_refused(tmp_path, name):
    with pytest.raises(TflmError, match=r"^model name must be letters, digits, '_', '\.' or '-' "
                                        r"\(not starting with '\.'\), got "):
        export_run(checkpointless_run(tmp_path / "run"), base=str(tmp_path / "models"), name=name)
    assert not (tmp_path / "models").exists()


@pytest.mark.parametrize("limit, value", [("max_request_chars", 0), ("max_batch_size", 2**31), ("max_batch_size", 2.5),
                                          ("max_request_chars", True)])
def test_request_limits_out_of_range_are_refused(tmp_path, limit, value):
    with pytest.raises(TflmError, match=f"^{limit} must be an integer from 1 to 2147483647, got {value!r}$"):
        export_run(checkpointless_run(tmp_path / "run"), base=str(tmp_path / "models"), **{limit: value})
    assert not (tmp_path / "models").exists()


def run_export(capsys, *args):
    """The one error line of `python -m tflm.export args` run in this process; asserts exit 2."""
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith("tflm: error: ") and error.count("\n") == 1, error
    return error


def test_command_line_mistakes_are_one_line_and_add_nothing_to_the_model_directory(tmp_path, capsys):
    model_dir = tmp_path / "models" / "small"
    model_dir.mkdir(parents=True)
    (model_dir / "1").mkdir()
    (model_dir / "notes").mkdir()
    run_dir = checkpointless_run(tmp_path / "run")
    common = ["--run-dir", run_dir, "--base", str(tmp_path / "models"), "--name", "small"]
    assert run_export(capsys, *common, "--max-request-chars", "0") == (
        "tflm: error: max_request_chars must be an integer from 1 to 2147483647, got 0\n")
    error = run_export(capsys, *common)
    assert error == f"tflm: error: {run_dir} has no checkpoint yet; train it first (python -m tflm.train " \
                    f"--run-dir {run_dir})\n"
    assert "no such run directory" in run_export(capsys, *common[2:], "--run-dir", str(tmp_path / "nowhere"))
    assert sorted(os.listdir(model_dir)) == ["1", "notes"]
    assert sorted(os.listdir(tmp_path / "models")) == ["small"]

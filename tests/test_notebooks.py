"""The notebooks run top to bottom (tiny parameters, outputs in a temp dir) and are committed clean."""

import glob
import importlib.util
import os
import re

import nbformat
import pytest
from nbclient import NotebookClient

from conftest import REPO

NOTEBOOK_DIR = os.path.join(REPO, "notebooks")
NOTEBOOKS = sorted(os.path.basename(p) for p in glob.glob(os.path.join(NOTEBOOK_DIR, "*.ipynb")))
TINY_MODEL = ["model.embed_dim=16", "model.num_layers=1", "model.num_heads=2", "model.ff_dim=32",
              "model.lstm_units=16", "data.seq_len=16", "runtime.jit_compile=false"]


def tiny_parameters(name, tmp):
    """What CI sets in place of each notebook's defaults: a few steps of tiny models, files in `tmp`."""
    steps = {"STEPS": 4, "EVAL_EVERY": 2, "EVAL_BATCHES": 2, "OVERRIDES": TINY_MODEL}
    return {
        "01_quickstart.ipynb": {**steps, "RUN_ROOT": f"{tmp}/runs", "PNG_PATH": f"{tmp}/quickstart.png",
                                "MAX_NEW_TOKENS": 8},
        "02_data_parallel.ipynb": {**steps, "GLOBAL_BATCH": 4, "RUN_ROOT": f"{tmp}/runs"},
        "03_serving.ipynb": {**steps, "RUN_DIR": f"{tmp}/runs/serving", "EXPORT_BASE": f"{tmp}/saved_models",
                             "MAX_NEW_TOKENS": 8},
        "04_finetune.ipynb": {**steps, "PRETRAIN_STEPS": 4, "RUN_ROOT": f"{tmp}/runs",
                              "PNG_PATH": f"{tmp}/finetune.png"},
        "05_model_parallel.ipynb": {**steps, "GLOBAL_BATCH": 16, "MICROBATCHES": 8, "TRACE_STEPS": 2,
                                    "RUN_ROOT": f"{tmp}/runs",  # 2 blocks: 4 pieces for 4 stages
                                    "OVERRIDES": [s for s in TINY_MODEL if s != "model.num_layers=1"] + [
                                        "model.num_layers=2"]},
    }[name]


def read(name):
    return nbformat.read(os.path.join(NOTEBOOK_DIR, name), as_version=4)


def with_parameters(notebook, values):
    """`notebook` with a cell setting `values` right after its cell tagged "parameters"."""
    index = next(i for i, cell in enumerate(notebook.cells) if "parameters" in cell.metadata.get("tags", []))
    defined = set(re.findall(r"^(\w+) =", notebook.cells[index].source, re.MULTILINE))
    assert set(values) <= defined, f"not parameters of the notebook: {set(values) - defined}"
    source = "\n".join(f"{key} = {value!r}" for key, value in values.items())
    notebook.cells.insert(index + 1, nbformat.v4.new_code_cell(source))
    return notebook


def images(notebook):
    """How many PNG images the executed notebook displays."""
    return sum("image/png" in output.get("data", {}) for cell in notebook.cells
               for output in cell.get("outputs", []))


def test_there_are_five_notebooks():
    assert NOTEBOOKS == ["01_quickstart.ipynb", "02_data_parallel.ipynb", "03_serving.ipynb", "04_finetune.ipynb",
                         "05_model_parallel.ipynb"]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_notebook_has_no_outputs(name):
    dirty = [i for i, cell in enumerate(read(name).cells)
             if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None)]
    assert not dirty, f"{name}: cells {dirty} have outputs; clear them before committing"


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_top_to_bottom(name, tmp_path, monkeypatch):
    if name == "03_serving.ipynb" and importlib.util.find_spec("tflm.export") is None:
        pytest.skip("tflm.export (inference and export) is not there yet")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
    notebook = with_parameters(read(name), tiny_parameters(name, tmp_path))
    beside = sorted(os.listdir(NOTEBOOK_DIR))
    # A failing cell raises CellExecutionError, with the cell and its traceback, and fails the test.
    NotebookClient(notebook, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": NOTEBOOK_DIR}}).execute()
    if name != "03_serving.ipynb":  # the curves are displayed (05: and the bytes per device and two timelines)
        assert images(notebook) == (4 if name == "05_model_parallel.ipynb" else 1)
    if name == "01_quickstart.ipynb":
        assert (tmp_path / "quickstart.png").stat().st_size > 10_000
    assert sorted(os.listdir(NOTEBOOK_DIR)) == beside  # runs and exports went to tmp_path


def test_readme_shows_the_quickstart_curves_first():
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        pictures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)|<img [^>]*src=\"([^\"]+)\"", f.read())
    first = next(filter(None, pictures[0])) if pictures else None
    assert first == "docs/quickstart_curves.png"
    assert os.path.getsize(os.path.join(REPO, first)) > 10_000

"""tflm: train, evaluate and serve character language models with Keras 3 and tf.distribute.

What a Python user may import from `tflm` (each name loads its module on first use, so `import
tflm` and plotting never load TensorFlow):

    load_config(path, overrides) -> Config          the run configuration (tflm.config)
    load_run(run_dir) -> LoadedRun                  a trained run, ready for inference (tflm.serving.loading)
    score_texts(run, texts) -> [dict]               log-probability, NLL and perplexity (tflm.serving.scoring)
    classify_texts(run, texts) -> [dict]            a classifier's labels and probabilities (tflm.serving.classifying)
    export_run(run_dir, base, name) -> directory    a SavedModel for TF Serving (tflm.serving.export)
    plot_runs(run_dirs, metrics, x) -> Figure       training curves (tflm.runs.plot)
    TflmError                                       what every mistake a user can fix raises (tflm.errors)

Training and sampling are named after their commands' modules, so they are imported from there:
`from tflm.train import train` (train or resume a run), `from tflm.generate import generate`.

The package follows the flow of a run: data/ (text, tokenizers, token store, input pipelines) ->
models/ (the networks) -> tasks/ (what is learned: lm, classify) -> training/ (the loop) -> runs/
(the run directory, checkpoints, curves) -> serving/ (loading, scoring, decoding, export). Each
command is a thin module here, tflm/<command>.py, built with tflm.cli.command; config.py,
errors.py, atomic.py (files), jsonl.py, lazy.py and quiet.py serve them all.
"""

import importlib

__version__ = "0.1.0"

API = {
    "load_config": "tflm.config",
    "load_run": "tflm.serving.loading",
    "score_texts": "tflm.serving.scoring",
    "classify_texts": "tflm.serving.classifying",
    "export_run": "tflm.serving.export",
    "plot_runs": "tflm.runs.plot",
    "TflmError": "tflm.errors",
}
__all__ = sorted(API)


def __getattr__(name):
    """Load a name of the public API from its module on first use."""
    if name not in API:
        raise AttributeError(f"module 'tflm' has no attribute {name!r}")
    return getattr(importlib.import_module(API[name]), name)


def __dir__():
    return sorted(set(globals()) | set(API))

"""tflm: train, evaluate and serve character language models with Keras 3 and tf.distribute.

What a Python user may import from `tflm` (each name loads its module on first use, so `import
tflm` and plotting never load TensorFlow):

    load_config(path, overrides) -> Config          the run configuration (tflm.config)
    train(config, run_dir) -> run directory         train or resume a run (tflm.train)
    load_run(run_dir) -> LoadedRun                  a trained run, ready for inference (tflm.inference)
    score_texts(run, texts) -> [dict]               log-probability, NLL and perplexity (tflm.score)
    generate(run, prompts, ...) -> [str]            sampled completions (tflm.generate)
    export_run(run_dir, base, name) -> directory    a SavedModel for TF Serving (tflm.export)
    plot_runs(run_dirs, metrics, x) -> Figure       training curves (tflm.plot)
    TflmError                                       what every mistake a user can fix raises (tflm.errors)

`tflm.train` and `tflm.generate` are those functions; their modules are imported by name
(`from tflm.train import main`).
"""

import importlib
import sys
import types

__version__ = "0.1.0"

API = {
    "load_config": "tflm.config",
    "train": "tflm.train",
    "load_run": "tflm.inference",
    "score_texts": "tflm.score",
    "generate": "tflm.generate",
    "export_run": "tflm.export",
    "plot_runs": "tflm.plot",
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


class _Package(types.ModuleType):
    """The `tflm` module, where importing the module tflm.train (or tflm.generate) does not hide
    the function of the same name, as it would by binding `tflm.train` to the module."""

    def __setattr__(self, name, value):
        if not (name in API and isinstance(value, types.ModuleType)):
            super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package

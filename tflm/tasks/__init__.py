"""What is learned, and from what: a task owns its data (the token store, or labelled examples),
the model it trains (a language model, or a classifier on one), its loss and metrics, the fields
of its history records, and what its runs serve (scoring and decoding, or classifying). The
Trainer, the Controller, loading a run and the export take a Task object and never ask which
task they have: `task_class(task.type)` here is the one place that turns `task.type` into code
(`task_for(config)` gives a run its Task), and a task named `T` is the class `Task` in the
module `tflm.tasks.T` (lm.py, classify.py). Loads no TensorFlow.
"""

import importlib


def task_class(task_type):
    """The Task class of a `task.type` (its module is tflm.tasks.<task_type>)."""
    return importlib.import_module(f"tflm.tasks.{task_type}").Task


def task_for(config):
    """The Task of a run configured by `config` (its task.type)."""
    return task_class(config.task.type)(config)

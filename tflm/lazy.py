"""TensorFlow and Keras imported on first use, so `--help`, `import tflm` and plotting start in a blink.

Importing TensorFlow takes seconds. A module that only *calls* TensorFlow inside its functions
imports `tf` and `keras` from here; the real import happens at the first attribute access
(`tf.constant`, `keras.Model`, ...). Modules that define Keras subclasses (the network files of
tflm.models, tflm.training.optimizer) or build tf.functions when they load (tflm.training.trainer)
need the real thing, so the modules above them import them only when a model or trainer is built
(tflm.models.build by name, tflm.tasks.classify and tflm.training.train inside functions).
"""

import importlib


class LazyModule:
    """Stands for the module `name` and imports it at the first attribute access."""

    def __init__(self, name):
        self._name = name
        self._module = None

    def __getattr__(self, attribute):
        return getattr(self.import_now(), attribute)

    def import_now(self):
        """The module, imported now if it is not yet (e.g. before a deadline starts)."""
        if self._module is None:
            self._module = importlib.import_module(self._name)
        return self._module

    def __repr__(self):
        return f"<lazy module {self._name!r}{'' if self._module is None else ' (imported)'}>"


tf = LazyModule("tensorflow")
keras = LazyModule("keras")

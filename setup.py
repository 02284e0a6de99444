"""tflm: train, evaluate and serve character language models with Keras 3 and tf.distribute."""

import os
import re

from setuptools import find_packages, setup


def read_version():
    """tflm/__init__.py's __version__, read as text: importing tflm here would need its dependencies."""
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "tflm", "__init__.py"), encoding="utf-8") as f:
        return re.search(r'^__version__ = "([^"]+)"$', f.read(), re.MULTILINE).group(1)


setup(
    name="tflm",
    version=read_version(),
    description="Language models with Keras 3, keras-nlp and tf.distribute, exported for TF Serving",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.11",  # keras 3.15 and keras-hub 0.32 require it
    packages=find_packages(include=["tflm", "tflm.*"]),
    install_requires=[
        "tensorflow==2.21.*",  # tensorboard, tensorflow-text and tensorflow-serving-api move with it
        "tensorboard==2.21.*",  # tf.summary needs it; TF 2.21 no longer pulls it in
        "tensorflow-text==2.21.*",
        "tensorflow-serving-api==2.21.*",  # tflm.serving.warmup writes TF Serving warmup requests with it
        # tflm overrides keras.optimizers.AdamW._all_reduce_sum_gradients (tflm/training/optimizer.py), a private
        # method, and builds on keras-nlp / keras-hub layer internals: the minors it is tested with.
        "keras==3.15.*",
        "keras-nlp==0.32.*",
        "keras-hub==0.32.*",
        "tensorflow-datasets>=4.9.10",
        "sentencepiece>=0.2",  # trains the sentencepiece tokenizer (tflm.data.tokenizers)
        "numpy>=1.26",
        "matplotlib>=3.8",
        "pyyaml>=6.0",
    ],
    extras_require={
        "gpu": ["tensorflow[and-cuda]==2.21.*"],  # CUDA and cuDNN from pip, for NVIDIA GPUs on Linux
        # python -m tflm.prepare --beam-options: 2.69 is the first to accept TensorFlow 2.21's protobuf 6
        "beam": ["apache-beam>=2.69,<3"],
        "dev": [
            "pytest>=8",
            "pytest-xdist>=3.5",  # setup.cfg runs the tests in two processes
            "protobuf",  # the tests read TF Serving's models.config with protobuf's text format
            "nbclient>=0.10",
            "nbformat>=5.10",
            "ipykernel>=6.29",
        ],
    },
    entry_points={"console_scripts": ["tflm=tflm.cli:main"]},
)

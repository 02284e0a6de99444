"""tflm: train, evaluate and serve character language models with Keras 3 and tf.distribute."""

from setuptools import find_packages, setup

setup(
    name="tflm",
    version="0.1.0",
    description="Language models with Keras 3, keras-nlp and tf.distribute, exported for TF Serving",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["tflm", "tflm.*"]),
    install_requires=[
        "tensorflow==2.21.*",
        "tensorboard==2.21.*",  # tf.summary needs it; TF 2.21 no longer pulls it in
        "keras>=3.15",
        "keras-nlp==0.32.*",
        "keras-hub==0.32.*",
        "tensorflow-text==2.21.*",
        "tensorflow-datasets>=4.9.10",
        "matplotlib>=3.8",
        "pyyaml>=6.0",
    ],
    extras_require={
        "dev": [
            "pytest>=8",
            "tensorflow-serving-api==2.21.*",  # warmup requests and the gRPC client example
            "nbclient>=0.10",
            "nbformat>=5.10",
            "ipykernel>=6.29",
        ],
    },
    entry_points={"console_scripts": ["tflm=tflm.cli:main"]},
)

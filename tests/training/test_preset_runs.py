"""Fine-tuning KerasHub presets with tflm's trainer: losses fall, resume is exact, 2 devices and 2
workers equal one, and LoRA trains only its adapters (serving them: tests/serving/test_preset_serving.py)."""

import glob
import os
import shutil

import numpy as np
import pytest

from conftest import max_weight_difference, run_tflm, write_config
from tiny_presets import preset_config, write_corpus
from tflm.config import updated
from tflm.runs import run_dir as runs
from tflm.train import main
from tflm.training.train import train

pytestmark = pytest.mark.slow  # every test trains, and most start processes

FAMILIES = ("gpt2", "llama")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A file of random sentences over a small vocabulary."""
    return write_corpus(str(tmp_path_factory.mktemp("corpus") / "text.txt"))


@pytest.fixture(scope="module")
def one_device_runs(tiny_presets, corpus, tmp_path_factory):
    """{family: a run fine-tuned on one device}, trained once."""
    base = tmp_path_factory.mktemp("one_device")
    return {family: train(preset_config(tiny_presets[family], corpus), str(base / family)) for family in FAMILIES}


@pytest.mark.parametrize("family", FAMILIES)
def test_fine_tuning_lowers_validation_loss_and_resumes_exactly(tiny_presets, corpus, one_device_runs, tmp_path,
                                                                 family):
    history = runs.read_history(one_device_runs[family])
    assert history[-1]["val_loss"] < history[0]["val_loss"] - 0.05
    resumed = str(tmp_path / "resumed")
    shutil.copytree(one_device_runs[family], resumed, ignore=shutil.ignore_patterns("lock"))
    for path in glob.glob(os.path.join(resumed, "checkpoints", "*")):  # back to step 12
        if os.path.basename(path).startswith(("ckpt-18", "ckpt-24", "checkpoint")):
            os.remove(path)
    train(preset_config(tiny_presets[family], corpus), resumed)
    assert [r["step"] for r in runs.read_history(resumed)] == [6, 12, 18, 24]
    assert max_weight_difference(resumed, one_device_runs[family]) <= 1e-6


@pytest.mark.parametrize("family", FAMILIES)
def test_two_logical_cpus_and_two_workers_equal_one_device(tiny_presets, corpus, one_device_runs, tmp_path, family):
    config = preset_config(tiny_presets[family], corpus)
    mirrored = updated(config, runtime={"strategy": "mirrored", "logical_cpus": 2})
    result = run_tflm("train", "--config", write_config(tmp_path / "m.yaml", mirrored), "--run-dir",
                      str(tmp_path / "mirrored"))
    assert result.returncode == 0, result.stderr[-3000:]
    result = run_tflm("launch", "--workers", "2", "--", "--config", write_config(tmp_path / "w.yaml", config),
                      "--run-dir", str(tmp_path / "workers"))
    assert result.returncode == 0, result.stdout[-3000:]
    assert "CollectiveAllReduceStrategy, 2 replica(s)" in result.stdout
    for run_dir in (tmp_path / "mirrored", tmp_path / "workers"):
        losses = [r["loss"] for r in runs.read_history(str(run_dir))]
        expected = [r["loss"] for r in runs.read_history(one_device_runs[family])]
        np.testing.assert_allclose(losses, expected, rtol=1e-4)
        assert max_weight_difference(str(run_dir), one_device_runs[family]) <= 1e-4


def checkpoint_bytes(run_dir):
    """Bytes of the run's newest checkpoint's files."""
    newest = sorted(glob.glob(os.path.join(run_dir, "checkpoints", "ckpt-*.index")))[-1][:-len(".index")]
    return sum(os.path.getsize(path) for path in glob.glob(newest + ".*"))


def test_lora_trains_only_the_adapters_and_checkpoints_a_small_fraction(tiny_presets, corpus, one_device_runs,
                                                                        tmp_path, capsys):
    import keras_hub

    from tflm.serving.loading import load_run

    config = preset_config(tiny_presets["llama"], corpus, lora_rank=2, learning_rate=0.02)
    run_dir = train(config, str(tmp_path / "lora"))
    history = runs.read_history(run_dir)
    assert history[-1]["val_loss"] < history[0]["val_loss"]
    assert checkpoint_bytes(run_dir) < 0.25 * checkpoint_bytes(one_device_runs["llama"])
    model = load_run(run_dir).model
    preset = keras_hub.models.Backbone.from_preset(tiny_presets["llama"])
    weights = {v.path: v.numpy() for v in preset.weights}
    adapters = [v for v in model.backbone.weights if "lora_kernel" in v.path]
    assert adapters and any(np.abs(v.numpy()).max() > 0 for v in adapters if v.path.endswith("lora_kernel_b"))
    for variable in model.backbone.weights:
        if "lora_kernel" not in variable.path:
            np.testing.assert_array_equal(variable.numpy(), weights[variable.path], err_msg=variable.path)

    with pytest.raises(SystemExit) as exit_info:  # a LoRA run holds no whole network to start another from
        main(["--init-from", run_dir, "--run-dir", str(tmp_path / "next")])
    assert exit_info.value.code == 2 and "a LoRA run (train.lora_rank=2) keeps only its adapters" in capsys.readouterr().err
    assert not (tmp_path / "next").exists()

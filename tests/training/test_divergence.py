"""Divergence is an event: a NaN/inf gradient is skipped (within a budget) or stops the run with
exit code 4, and nothing non-finite is ever saved."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import run_tflm, small_config, write_config
from tflm.runs import run_dir as runs
from tflm.runs.checkpoint import Checkpointer, list_checkpoints
from tflm.training.controller import Controller
from tflm.errors import Diverged
from tflm.training.progress import Progress
from tflm.training.cluster import Worker
from tflm.tasks import lm
from tflm.training.trainer import Trainer
from tflm.training.optimizer import make_optimizer


@pytest.mark.slow
@pytest.mark.parametrize("runtime", [{}, {"pipeline_stages": 2, "logical_cpus": 2}], ids=["one_device", "two_stages"])
def test_a_diverging_run_stops_with_exit_4_and_saves_nothing_non_finite(tmp_path, runtime):
    config = small_config(train={"steps": 40, "eval_every": 2, "eval_batches": 1, "learning_rate": 1e9,
                                 "warmup_steps": 0}, runtime=runtime)
    run_dir = str(tmp_path / "run")
    result = run_tflm("train", "--config", write_config(tmp_path / "c.yaml", config), "--run-dir", run_dir)
    assert result.returncode == 4, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("tflm: diverged: the loss or gradient became NaN/inf at step ")
    assert "without saving" in last and "train.learning_rate" in last
    for path in list_checkpoints(os.path.join(run_dir, "checkpoints")):
        reader = tf.train.load_checkpoint(path)
        for name in reader.get_variable_to_shape_map():
            value = reader.get_tensor(name)
            if np.issubdtype(np.asarray(value).dtype, np.floating):
                assert np.all(np.isfinite(value)), f"{path}: {name}"
    for record in runs.read_history(run_dir):
        assert np.isfinite(record["loss"]) and np.isfinite(record["val_loss"])


class PoisonableLM(keras.Model):
    """Embedding -> Dense whose logits are multiplied by a settable factor (NaN to poison a step)."""

    def __init__(self, vocabulary_size=16):
        super().__init__()
        self.vocabulary_size = vocabulary_size
        self.embedding = keras.layers.Embedding(vocabulary_size, 8)
        self.head = keras.layers.Dense(vocabulary_size)
        self.factor = tf.Variable(1.0, trainable=False)

    def call(self, token_ids, training=False, example_ids=None):
        return self.head(self.embedding(token_ids)) * self.factor


@pytest.fixture
def poisonable(tmp_path):
    """(trainer, controller, iterator) over a tiny model, allowing one non-finite step."""
    config = small_config(train={"steps": 10, "max_nonfinite_steps": 1, "learning_rate": 0.01, "warmup_steps": 0,
                                 "global_batch_size": 8}, data={"seq_len": 4})
    strategy = tf.distribute.get_strategy()
    model = PoisonableLM()
    model(tf.zeros((1, 4), tf.int32))
    optimizer = make_optimizer(config.train)
    optimizer.build(model.trainable_variables)
    trainer = Trainer(strategy, model, optimizer, lm.Task(config), config.train, jit_compile=False)
    worker = Worker(type="worker", index=1, num_workers=1)  # not the chief: no history, no TensorBoard
    checkpointer = Checkpointer(str(tmp_path), worker, model, optimizer, 3, trainer.state())
    checkpointer.restore_latest()
    controller = Controller(trainer, checkpointer, config.train, 4 * 8, str(tmp_path), worker,
                            Progress(10, 32, stream=open(os.devnull, "w")))
    windows = tf.random.stateless_uniform((64, 5), seed=(1, 2), maxval=16, dtype=tf.int32)
    batches = tf.data.Dataset.from_tensor_slices(windows).enumerate().batch(8).repeat()
    batches = batches.map(lambda ids, w: (w[:, :-1], w[:, 1:], ids))
    yield trainer, controller, iter(strategy.experimental_distribute_dataset(batches))
    checkpointer.close()


def test_a_non_finite_step_is_skipped_within_the_budget_and_the_next_one_stops(poisonable):
    trainer, controller, iterator = poisonable
    weights = lambda: [v.numpy().copy() for v in trainer.model.trainable_variables]  # noqa: E731
    trainer.train_step(iterator)
    before = weights()

    trainer.model.factor.assign(float("nan"))
    trainer.train_step(iterator)
    for a, b in zip(before, weights()):
        np.testing.assert_array_equal(a, b)  # skipped: no update at all
    assert trainer.step == 2 and int(trainer.nonfinite_steps.numpy()) == 1
    assert int(trainer.first_nonfinite_step.numpy()) == 2
    controller._check_divergence(trainer.step)  # 1 of train.max_nonfinite_steps=1: training goes on
    trainer.train_step(iterator)
    with pytest.raises(Diverged, match=r"NaN/inf at step 2 \(2 such step\(s\), train.max_nonfinite_steps=1\)"):
        controller._check_divergence(trainer.step)

    trainer.model.factor.assign(1.0)
    trainer.train_step(iterator)
    assert any(np.any(a != b) for a, b in zip(before, weights()))  # finite again: updates resume


def test_non_finite_weights_are_never_saved(poisonable):
    trainer, controller, _ = poisonable
    controller.checkpointer.save(1)
    trainer.model.head.kernel.assign(tf.fill(trainer.model.head.kernel.shape, float("inf")))
    with pytest.raises(Diverged, match="not finite at step 2"):
        controller.checkpointer.save(2)
    assert [os.path.basename(p) for p in list_checkpoints(controller.checkpointer._private_dir)] == ["ckpt-1"]

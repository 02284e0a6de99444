"""Tensor parallelism (runtime.tensor_parallel): a block's heads and feed-forward columns split
over devices train the same run as one device, alone and with pipeline stages, replicas and
workers; its checkpoints are one-device checkpoints. (A classifier in stages of shards, from a
split language model: tests/training/test_pipeline.py.)

Every comparison is test_pipeline's: the same config and global batch, dropout on, per-step
training losses and every final weight within 1e-5 (relative) of the one-device run's.
"""

import os

import numpy as np
import pytest

from conftest import run_tflm, write_config
from tflm.config import updated
from test_pipeline import (assert_refused, assert_same_run, inspect_trainer, pipeline_config, split, train_in_process,
                           train_subprocess)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The one-device run of pipeline_config()."""
    return train_in_process(pipeline_config(), tmp_path_factory.mktemp("one_device") / "run")


# --- the block's math, split (fast) ------------------------------------------------------------------

def test_the_shards_parts_sum_to_the_whole_block_dropout_masks_included():
    import tensorflow as tf

    from tflm.models.block_shards import BlockShard, BlockTrunk, block_sources
    from tflm.models.transformer import ATTENTION, FEEDFORWARD, DecoderBlock
    from tflm.training.tensor_parallel import split as split_value

    block = DecoderBlock(num_heads=4, ff_dim=16, dropout=0.5, seed=3, site=1, name="decoder_1")
    x = tf.random.stateless_normal([3, 5, 8], seed=[1, 2])
    block(x)
    trunk, shards = BlockTrunk(block), [BlockShard(block, t, 2) for t in range(2)]
    for layer in (trunk, *shards):
        layer.build(x.shape)
    for weight, parts in block_sources(block, trunk, shards):
        for (part, _), value in zip(parts, split_value(weight, len(parts), parts[0][1])):
            part.assign(value)
    example_ids = tf.constant([7, 8, 9], tf.int64)
    for kind in (ATTENTION, FEEDFORWARD):
        whole = block.partial(kind, x, example_ids, training=True)
        summed = sum(shard.partial(kind, x, example_ids, training=True) for shard in shards)
        np.testing.assert_allclose(summed.numpy(), whole.numpy(), rtol=1e-5, atol=1e-6)
    assert not np.allclose(block.partial(ATTENTION, x, example_ids, training=True).numpy(),
                           block.partial(ATTENTION, x, example_ids, training=False).numpy())  # dropout is on


# --- bad input: one line, exit 2, nothing written ---------------------------------------------------

@pytest.mark.parametrize("settings,message", [
    (["runtime.tensor_parallel=3"], "runtime.tensor_parallel=3 does not divide model.num_heads=2"),
    (["runtime.tensor_parallel=2", "model.ff_dim=63"], "runtime.tensor_parallel=2 does not divide model.ff_dim=63"),
    (["runtime.tensor_parallel=2", "model.type=lstm"],
     "runtime.tensor_parallel=2 splits Transformer blocks; model.type=lstm is not split"),
    (["runtime.tensor_parallel=2", "runtime.precision=mixed_float16"],
     "runtime.precision=mixed_float16 is not supported with runtime.pipeline_stages or runtime.tensor_parallel > 1"),
])
def test_shards_that_do_not_divide_the_model_are_one_line_errors(tmp_path, settings, message):
    assert_refused(tmp_path, settings, message)


@pytest.mark.slow
@pytest.mark.parametrize("settings,message", [
    (["runtime.tensor_parallel=2"], "runtime.tensor_parallel=2 needs a multiple of 2 devices per worker"),
    (["runtime.tensor_parallel=2", "runtime.pipeline_stages=2", "runtime.logical_cpus=6"],
     "runtime.pipeline_stages=2 x runtime.tensor_parallel=2 needs a multiple of 4 devices per worker "
     "(replicas x stages x shards), found 6 CPU(s)"),
])
def test_fewer_devices_than_stages_times_shards_stop_before_anything_is_written(tmp_path, settings, message):
    assert_refused(tmp_path, settings, message)


# --- equal to one device -----------------------------------------------------------------------------

@pytest.mark.slow
def test_a_one_device_checkpoint_resumes_as_two_replicas_of_two_stages_of_two_shards_as_one_device(
        tmp_path, reference):
    train_in_process(updated(pipeline_config(), train={"steps": 3}), tmp_path / "run")
    config = split(pipeline_config(runtime={"pipeline_trace_steps": 1}), shards=2, stages=2, replicas=2,
                   microbatches=2)
    run_dir, out = train_subprocess(tmp_path, "run", config)  # on 8 logical CPUs, from step 3
    assert "(pipelines of 2 stages x 2 shards, 2 replica(s))" in out and "resuming from" in out
    assert_same_run(run_dir, reference)
    from tflm.runs.pipeline_trace import read_traces

    [trace] = read_traces(run_dir)
    # Megatron's count: 2 sums forward and 2 backward per block, per micro-batch: 2 blocks x 4 x 2 micro-batches
    assert trace["lane_sums"] == 16 and trace["lanes"] == [["/device:CPU:0", "/device:CPU:1"],
                                                          ["/device:CPU:2", "/device:CPU:3"]]


@pytest.mark.slow
def test_two_workers_of_two_shards_train_as_one_device(tmp_path, reference):
    run_dir = str(tmp_path / "run")
    result = run_tflm("launch", "--workers", "2", "--", "--config",
                      write_config(tmp_path / "c.yaml", split(pipeline_config())), "--run-dir", run_dir, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "[worker 1] tflm: run directory" in result.stdout and "(one stage x 2 shards, 2 replica(s))" in result.stdout
    assert_same_run(run_dir, reference)


@pytest.mark.slow
def test_two_shards_train_as_one_device_resume_on_one_device_and_serve_as_it(tmp_path, reference):
    from tflm.serving.decoding import generate
    from tflm.serving.export import export_run
    from tflm.serving.loading import load_run
    from tflm.serving.scoring import score_texts

    def leg(steps, **layout):
        config = updated(pipeline_config(), train={"steps": steps})
        return split(config, **layout) if layout else config

    run_dir, out = train_subprocess(tmp_path, "run", leg(3, shards=2))
    assert "one stage x 2 shards" in out and "stage 0 on /device:CPU:0, /device:CPU:1" in out
    train_subprocess(tmp_path, "run", leg(6))  # a split checkpoint resumed on one device
    assert_same_run(run_dir, reference)
    texts = ["def main():\n    return 0"]
    run, one_device = load_run(run_dir), load_run(reference)
    [got], [expected] = score_texts(run, texts), score_texts(one_device, texts)
    assert got["mean_nll"] == pytest.approx(expected["mean_nll"], rel=1e-5)
    assert generate(run, ["import "], 12, temperature=0.0) == generate(one_device, ["import "], 12, temperature=0.0)
    assert os.path.exists(os.path.join(export_run(run_dir, base=str(tmp_path / "saved_models"), name="split"),
                                       "saved_model.pb"))


PLACEMENT_CHECK = """
from tflm.training.tensor_parallel import unsplit_layers
placed = []  # (path, the device it belongs on, its device)
for stage, lanes in zip(trainer.stages[0], trainer.layout.lanes[0]):
    for piece in stage.pieces:
        if piece.name in replica.splits:
            trunk, shards = replica.splits[piece.name]
            owned = [(trunk, lanes[0])] + list(zip(shards, lanes))
        else:
            owned = [(layer, lanes[0]) for layer in unsplit_layers(piece)]
        placed += [(v.path, lane, v.value.device) for layer, lane in owned for v in replica.layer_state(layer)]
covered = {id(h) for h, _ in replica.sources}
print(json.dumps({"placed": placed, "block_bytes": trainer.block_bytes(),
                  "uncovered": [v.path for v in trainer.model.weights if id(v) not in covered]}))
"""


@pytest.mark.slow
def test_every_shard_and_its_optimizer_slots_live_on_their_lane():
    config = split(pipeline_config(model={"num_layers": 4, "num_heads": 4, "ff_dim": 128}), shards=2, stages=2)
    found = inspect_trainer(config, PLACEMENT_CHECK)
    assert found["uncovered"] == []  # every one-device weight has its place
    assert {lane for _, lane, _ in found["placed"]} == {f"/device:CPU:{i}" for i in range(4)}
    for path, lane, device in found["placed"]:
        assert device.endswith(lane), (path, lane, device)
    assert len(found["block_bytes"]) == 4
    for held in found["block_bytes"].values():  # the goal: <= 1.1 x 1/T of the block on each lane
        assert max(held) <= 1.1 * sum(held) / 2, held

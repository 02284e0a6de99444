"""The token store and the windows read from it: every window once per epoch, the same global
batches for any number of replicas and workers, O(1) resume, damaged stores reported."""

import json
import os
import time

import numpy as np
import pytest
import tensorflow as tf

from tflm import prepare as prepare_command
from tflm.data.pipeline import Windows, eval_dataset_fn, train_dataset_fn, training_window
from tflm.errors import TflmError
from tflm.data.store import FORMAT, ShardWriter, TokenStore, id_dtype, write_index

SEQ_LEN = 9  # windows of 10 tokens
SHARDS = {"train": [103, 57, 300, 9], "validation": [64]}


def write_store(path, shards=SHARDS, vocabulary_size=1000):
    """A store whose token at position p of shard s is s * 1000 + p % 1000 (so a window tells
    where it came from), one source file per shard."""
    dtype = id_dtype(vocabulary_size)
    splits = {}
    for split, sizes in shards.items():
        writer = ShardWriter(str(path), split, dtype)
        for s, size in enumerate(sizes):
            writer.add(s * 1000 + np.arange(size) % 1000, size)
            writer.end_file()
        splits[split] = writer.close()
    write_index(str(path), {"format": FORMAT, "dtype": dtype.str, "splits": splits, "data": {},
                            "tokenizer": {"kind": "test", "fingerprint": "0", "vocabulary_size": vocabulary_size}})
    return TokenStore.open(str(path))


def origin(window):
    """(shard, position) a window of write_store came from."""
    return int(window[0]) // 1000, int(window[0]) % 1000


def global_batches(store, steps, global_batch, pipelines=1, replicas=1, start_step=0, seed=0):
    """[(example ids, windows)] per step, gathered across every pipeline and replica in replica order."""
    per_pipeline = []
    for pipeline in range(pipelines):
        context = tf.distribute.InputContext(pipelines, pipeline, replicas)
        dataset = train_dataset_fn(store, SEQ_LEN, global_batch, seed, start_step)(context)
        per_pipeline.append(list(dataset.take(steps * replicas // pipelines).as_numpy_iterator()))
    local = replicas // pipelines
    result = []
    for step in range(steps):
        parts = [per_pipeline[p][step * local + r] for p in range(pipelines) for r in range(local)]
        windows = np.concatenate([np.concatenate([x[:, :1], t], axis=1) for x, t, _ in parts])
        result.append((np.concatenate([ids for _, _, ids in parts]).tolist(), windows.tolist()))
    return result


def test_every_training_window_is_used_once_per_epoch_at_a_shift_that_changes(tmp_path):
    store = write_store(tmp_path / "store")
    windows = Windows.of(store, "train", SEQ_LEN)
    per_epoch, length = windows.total, SEQ_LEN + 1
    assert per_epoch == 9 + 4 + 29 + 0  # the windows that fit at any shift; none in a 9-token file
    ((ids, batch),) = global_batches(store, 1, per_epoch * 4)  # four epochs in one global batch
    assert ids == list(range(4 * per_epoch))
    shifts = []
    for epoch in range(4):
        seen = [origin(w) for w in batch[epoch * per_epoch:(epoch + 1) * per_epoch]]
        (shift,) = {position % length for _, position in seen}  # one alignment per epoch
        for shard in range(4):
            positions = sorted(p for s, p in seen if s == shard)
            assert positions == [shift + k * length for k in range(windows.counts[shard])]  # each once
        shifts.append(shift)
    assert len(set(shifts)) > 1
    assert batch[:per_epoch] != batch[per_epoch:2 * per_epoch]  # reshuffled


@pytest.mark.parametrize("pipelines,replicas", [(1, 2), (2, 2), (2, 4)])
def test_replicas_and_workers_read_exactly_the_global_batches_of_one_device(tmp_path, pipelines, replicas):
    store = write_store(tmp_path / "store")
    one_device = global_batches(store, 7, 8)
    assert global_batches(store, 7, 8, pipelines, replicas) == one_device


def test_resuming_at_step_one_million_starts_there_at_once(tmp_path):
    store = write_store(tmp_path / "store")
    windows = Windows.of(store, "train", SEQ_LEN)
    started = time.perf_counter()
    ((ids, batch),) = global_batches(store, 1, 8, start_step=10**6)
    assert time.perf_counter() - started < 5
    assert ids == list(range(8 * 10**6, 8 * 10**6 + 8))
    shards, positions = training_window(windows, 0, tf.constant(ids, tf.int64))
    assert [origin(w) for w in batch] == list(zip(shards.numpy().tolist(), positions.numpy().tolist()))


def test_validation_windows_are_in_order_and_the_same_every_pass(tmp_path):
    store = write_store(tmp_path / "store")
    dataset = eval_dataset_fn(store, SEQ_LEN, 2, 3)(tf.distribute.InputContext())
    firsts = [int(x[i, 0]) for x, _ in dataset.take(6).as_numpy_iterator() for i in range(2)]
    assert firsts == [0, 10, 20, 30, 40, 50] * 2


def test_ids_that_need_more_than_16_bits_are_stored_as_uint32(tmp_path):
    store = write_store(tmp_path / "store", {"train": [100], "validation": [30]}, vocabulary_size=70000)
    assert store.dtype == np.dtype("<u4")
    assert os.path.getsize(tmp_path / "store" / "train" / "00000.bin") == 400


def test_a_damaged_store_is_reported_naming_the_part(tmp_path):
    store = write_store(tmp_path / "store")
    store.verify()
    shard = tmp_path / "store" / "train" / "00002.bin"
    data = bytearray(shard.read_bytes())
    data[100] ^= 1
    shard.write_bytes(bytes(data))
    with pytest.raises(TflmError, match="train/00002.bin does not match its checksum"):
        store.verify()
    shard.write_bytes(bytes(data[:-2]))
    with pytest.raises(TflmError, match=r"train/00002.bin is 598 bytes, index.json says 600 \(truncated or changed\)"):
        store.verify()
    shard.unlink()
    with pytest.raises(TflmError, match="train/00002.bin is missing"):
        store.verify()
    (tmp_path / "store" / "index.json").write_text('{"format": ')
    with pytest.raises(TflmError, match="index.json is damaged"):
        TokenStore.open(str(tmp_path / "store"))
    with pytest.raises(TflmError, match="is not a prepared token store"):
        TokenStore.open(str(tmp_path / "elsewhere"))


@pytest.mark.parametrize("damage, message", [
    (lambda index: index.pop("dtype"), "no key 'dtype'"),
    (lambda index: index["tokenizer"].pop("fingerprint"), "no key 'tokenizer.fingerprint'"),
    (lambda index: index["splits"]["train"]["shards"][1].pop("crc32"), "no key 'splits.train.shards[1].crc32'"),
    (lambda index: index["splits"]["validation"].update(tokens="64"), "'splits.validation.tokens' must be an integer"),
    (lambda index: index["splits"]["train"]["shards"][0].update(file="../../etc/passwd"),
     "'splits.train.shards[0]' is {'file': '../../etc/passwd'"),
    (lambda index: index.update(dtype="<f8"), "'dtype' is '<f8', not one of <u2, <u4"),
])
def test_an_index_that_lacks_a_key_names_the_key_and_the_file(tmp_path, capsys, damage, message):
    write_store(tmp_path / "store")
    index_path = tmp_path / "store" / "index.json"
    index = json.loads(index_path.read_text())
    damage(index)
    index_path.write_text(json.dumps(index))
    with pytest.raises(TflmError) as error:
        TokenStore.open(str(tmp_path / "store"))
    assert str(error.value).startswith(f"{index_path} is damaged ({message}")
    assert str(error.value).endswith("; prepare the store again")
    with pytest.raises(SystemExit) as exit_:
        prepare_command.main(["--verify", str(tmp_path / "store")])
    assert exit_.value.code == 2
    assert capsys.readouterr().err == f"tflm: error: {error.value}\n"

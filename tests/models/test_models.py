"""The models: dropout masks that belong to examples, cached decoding equal to a full pass, and the
interface callers use instead of asking which model they have (built from `model.type`, cache rows)."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from conftest import REPO, small_config
from tflm.config import ModelConfig, field_types, load_config
from tflm.errors import TflmError
from tflm.models.randomness import ExampleDropout, example_uniforms
from tflm.models.build import build_model, model_class, weight_shape_keys

MODEL_TYPES = field_types(ModelConfig)["type"][1].choices  # every model.type the config accepts


def mask(ids, rate=0.5, shape=(6, 8), seed=0, site=0, shared_axes=()):
    """The keep-mask ExampleDropout draws for rows named `ids`, as numpy booleans."""
    layer = ExampleDropout(rate, seed, site, shared_axes)
    return layer(tf.ones((len(ids), *shape)), tf.constant(ids, tf.int64), training=True).numpy() != 0


def test_a_mask_belongs_to_its_example_not_to_its_place_in_the_batch():
    together = mask([3, 7, 2**40 + 5])
    assert (together[0] == mask([3])[0]).all() and (together[1] == mask([7])[0]).all()
    assert (together[2] == mask([9, 2**40 + 5])[1]).all()
    assert not (together[0] == together[1]).all() and not (together[0] == together[2]).all()
    assert not (mask([3], seed=1)[0] == together[0]).all()
    assert not (mask([3], site=1)[0] == together[0]).all()


def test_dropout_drops_the_rate_and_rescales_what_it_keeps():
    layer = ExampleDropout(0.3, seed=4, site=2)
    out = layer(tf.ones((64, 32, 16)), tf.range(64, dtype=tf.int64), training=True).numpy()
    assert set(np.unique(out)) == {0.0, np.float32(1 / 0.7)}
    assert abs((out == 0).mean() - 0.3) < 0.01
    assert (layer(tf.ones((2, 3)), None, training=False).numpy() == 1).all()
    uniforms = example_uniforms(0, 0, tf.range(256), [1024]).numpy()
    assert 0 <= uniforms.min() and uniforms.max() < 1 and abs(uniforms.mean() - 0.5) < 0.01


def test_shared_axes_keep_one_mask_along_them():
    over_time = mask([1, 2], shape=(10, 8), shared_axes=(1,))
    assert (over_time == over_time[:, :1, :]).all() and not (over_time[0] == over_time[1]).all()


@pytest.mark.parametrize("model_type", ["transformer", "lstm"])
def test_cached_decoding_gives_the_logits_of_a_full_pass(model_type):
    config = small_config(model_type)
    model = build_model(config.model, 40, config.data.seq_len)
    tokens = tf.random.stateless_uniform((2, 20), seed=(3, 4), minval=1, maxval=40, dtype=tf.int32)
    full = model(tokens).numpy()
    cache = model.initial_cache(2)
    prefill, cache = model.call_with_cache(tokens[:, :12], cache, 0)  # a prompt at once, then one at a time
    steps = [prefill.numpy()]
    for t in range(12, 20):
        logits, cache = model.call_with_cache(tokens[:, t:t + 1], cache, t)
        steps.append(logits.numpy())
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, atol=1e-4)


@pytest.mark.parametrize("model_type", ["transformer", "lstm"])
def test_a_ragged_batch_in_one_call_gives_each_row_what_it_gives_alone(model_type):
    config = small_config(model_type)
    model = build_model(config.model, 40, config.data.seq_len)
    tokens = tf.random.stateless_uniform((3, 10), seed=(5, 6), minval=1, maxval=40, dtype=tf.int32)
    lengths = tf.constant([10, 4, 1])
    logits, cache = model.call_with_cache(tokens, model.initial_cache(3), 0, lengths)
    after, _ = model.call_with_cache(tokens[:, :1], cache, lengths)  # each row goes on at its own position
    for row, length in enumerate(lengths.numpy()):
        alone, alone_cache = model.call_with_cache(tokens[row:row + 1, :length], model.initial_cache(1), 0)
        np.testing.assert_allclose(logits[row, :length], alone[0], atol=1e-4)
        alone_after, _ = model.call_with_cache(tokens[row:row + 1, :1], alone_cache, length)
        np.testing.assert_allclose(after[row], alone_after[0], atol=1e-4)


def model_of_type(model_type, presets, seq_len=32):
    """A built model of `model_type` (a preset's: the tiny GPT-2) and its vocabulary size."""
    if model_type != "preset":
        return build_model(small_config(model_type).model, 40, seq_len), 40
    from tflm.data.tokenizers.preset import PresetTokenizer

    vocabulary = PresetTokenizer.from_preset(presets["gpt2"]).vocabulary_size
    config = load_config(None, [f"model.preset={presets['gpt2']}", f"data.seq_len={seq_len}"])
    return build_model(config.model, vocabulary, seq_len), vocabulary


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_every_model_type_the_config_accepts_is_built_from_its_own_file(model_type, tiny_presets):
    model, vocabulary = model_of_type(model_type, tiny_presets)
    assert type(model) is model_class(model_type)
    assert type(model).__module__ == f"tflm.models.{model_type}"
    assert model(tf.ones((2, 5), tf.int32)).shape == (2, 5, vocabulary)


def test_an_unknown_model_type_is_a_one_line_error_of_the_config():
    with pytest.raises(TflmError) as error:
        load_config(None, ["model.type=gru"])
    assert str(error.value) == f"model.type must be one of {', '.join(MODEL_TYPES)}, got 'gru'"


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_weight_shape_keys_name_what_outside_the_model_section_changes_the_weights(model_type, tiny_presets):
    def shapes(seq_len):
        return [tuple(w.shape) for w in model_of_type(model_type, tiny_presets, seq_len)[0].weights]

    assert (shapes(16) != shapes(32)) == ("data.seq_len" in weight_shape_keys(model_type))


def test_the_transformer_reads_its_seq_len_at_most_and_the_lstm_any_length():
    transformer, lstm = (build_model(small_config(t).model, 40, 32) for t in ("transformer", "lstm"))
    assert transformer.context == 32 and weight_shape_keys("transformer") == ("data.seq_len",)
    assert lstm.context is None and weight_shape_keys("lstm") == ()


def assert_caches_equal(actual, expected):
    for a, e in zip(tf.nest.flatten(actual), tf.nest.flatten(expected), strict=True):
        np.testing.assert_array_equal(a.numpy(), e.numpy())


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_rows_taken_from_a_cache_go_on_as_in_the_whole_batch_and_write_back_in_place(model_type, tiny_presets):
    model, _ = model_of_type(model_type, tiny_presets)
    tokens = tf.random.stateless_uniform((4, 8), seed=(11, 12), minval=1, maxval=40, dtype=tf.int32)
    _, cache = model.call_with_cache(tokens[:, :6], model.initial_cache(4), 0)
    whole, _ = model.call_with_cache(tokens[:, 6:], cache, 6)
    rows, others = tf.constant([3, 1]), tf.constant([0, 2])
    taken, row_cache = model.call_with_cache(tf.gather(tokens[:, 6:], rows), model.cache_rows(cache, rows), 6)
    np.testing.assert_allclose(taken, tf.gather(whole, rows), atol=1e-5)
    assert_caches_equal(model.with_cache_rows(cache, rows, model.cache_rows(cache, rows)), cache)
    written = model.with_cache_rows(cache, rows, row_cache)
    assert_caches_equal(model.cache_rows(written, rows), row_cache)
    assert_caches_equal(model.cache_rows(written, others), model.cache_rows(cache, others))


def test_a_window_written_again_from_position_0_leaves_no_trace_of_the_old_one():
    config = small_config("transformer")
    model = build_model(config.model, 40, config.data.seq_len)
    old = tf.random.stateless_uniform((2, 30), seed=(7, 8), minval=1, maxval=40, dtype=tf.int32)
    window = tf.random.stateless_uniform((2, 9), seed=(9, 10), minval=1, maxval=40, dtype=tf.int32)
    _, cache = model.call_with_cache(old, model.initial_cache(2), 0)
    restarted, _ = model.call_with_cache(window, cache, 0)
    fresh, _ = model.call_with_cache(window, model.initial_cache(2), 0)
    np.testing.assert_allclose(restarted, fresh, atol=1e-5)


MIRRORED_MASKS = textwrap.dedent("""
    import json, sys
    import tensorflow as tf
    from tflm.training.strategy import split_cpu
    split_cpu(2)
    from tflm.models.randomness import ExampleDropout
    layer = ExampleDropout(0.5, seed=0, site=0)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"], cross_device_ops=tf.distribute.ReductionToOneDevice())
    ids = tf.data.Dataset.range(8).batch(8)  # a global batch of 8: replica 0 gets examples 0-3, replica 1 gets 4-7
    batch = next(iter(strategy.experimental_distribute_dataset(ids)))
    masks = strategy.run(lambda i: layer(tf.ones((tf.shape(i)[0], 16)), i, training=True), args=(batch,))
    replicas = [m.numpy().tolist() for m in strategy.experimental_local_results(masks)]
    alone = layer(tf.ones((8, 16)), tf.range(8, dtype=tf.int64), training=True).numpy().tolist()
    print(json.dumps({"replicas": replicas, "alone": alone}))
""")


def test_replicas_draw_the_masks_one_device_draws_never_a_shared_one():
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, "-c", MIRRORED_MASKS], capture_output=True, text=True, timeout=180,
                          cwd=REPO, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    first, second = (np.array(r) for r in result["replicas"])
    assert not (first == second).all()
    np.testing.assert_array_equal(np.concatenate([first, second]), np.array(result["alone"]))

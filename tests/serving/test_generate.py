"""The decoding loop and the sampler, with stand-in models: no training, each test in well under a second."""

import math

import numpy as np
import pytest
import tensorflow as tf

from conftest import small_config
from tflm.serving.decoding import (MAX_NEW_TOKENS, MASKED, bucketed, completion_texts, decode, decode_function,
                                   generate_ids, keep_top_k_top_p, prepare_prompts, sample, stop_pattern)
from tflm.serving.loading import LoadedRun
from tflm.models.build import build_model
from tflm.tasks import task_for
from tflm.data.tokenizers import PAD_ID, CharTokenizer

LETTERS = CharTokenizer(list("abcdefgh"))  # ids 2..9, what the stand-in model draws


class ChecksumModel:
    """A stand-in model whose next token is a checksum of the (position, token) pairs it sees, so a
    decoding loop's output reveals which tokens sat at which positions of each row's window. It
    offers the decoding interface of tflm.models: its cache is the window's tokens, plus a spare
    slot where padding goes."""

    vocabulary_size = 10

    def __init__(self, context):
        self.context = context
        self.capacity = context or 256

    def initial_cache(self, batch_size):
        return tf.zeros([batch_size, self.capacity + 1], tf.int32)

    def call_with_cache(self, token_ids, cache, cache_index, lengths=None):
        batch, time = tf.shape(token_ids)[0], tf.shape(token_ids)[1]
        positions = tf.broadcast_to(cache_index, [batch])[:, None] + tf.range(time)[None, :]
        if lengths is not None:
            positions = tf.where(tf.range(time)[None, :] < lengths[:, None], positions, self.capacity)
        rows = tf.broadcast_to(tf.range(batch)[:, None], tf.shape(token_ids))
        cache = tf.tensor_scatter_nd_update(cache, tf.stack([rows, positions], axis=-1), token_ids)
        return self.logits(cache, positions), cache

    def __call__(self, token_ids, training=False):
        return self.logits(token_ids, tf.broadcast_to(tf.range(tf.shape(token_ids)[1]), tf.shape(token_ids)))

    def logits(self, tokens, positions):
        """One-hot logits at `positions` [batch, time] of `tokens` [batch, width] seen from position 0."""
        sums = tf.cumsum((tf.range(tf.shape(tokens)[1]) + 1) * tokens, axis=1)
        seen = tf.gather(sums, tf.minimum(positions, tf.shape(tokens)[1] - 1), batch_dims=1)
        return tf.one_hot(seen % 8 + 2, self.vocabulary_size) * 10.0


def checksum_continuation(prompt, n, context):
    """What greedy decoding with ChecksumModel must give: the row's window holds its last tokens,
    at most `context` of them; a full window restarts from its last context // 2 at position 0."""
    window = list(prompt[-context:] if context else prompt) or [PAD_ID]
    completion = []
    for _ in range(n):
        token = sum((j + 1) * t for j, t in enumerate(window)) % 8 + 2
        completion.append(token)
        if context and len(window) == context:
            window = window[len(window) - max(1, context // 2) + 1:]
        window.append(token)
    return completion


def greedy(model, prompts, n, cached=True, stop=""):
    """decode() on lists of prompt ids, greedy: completion ids [batch, n] (numpy)."""
    tokens, lengths = prepare_prompts(tf.ragged.constant(prompts, tf.int32, ragged_rank=1, inner_shape=()),
                                      model.context or 10**6)
    sampling = (tf.constant(0.0), tf.constant(0), tf.constant(1.0), tf.constant(0))
    ids = decode(model, tokens, lengths, tf.constant(n), sampling, stop_pattern(LETTERS, tf.constant(stop)), cached)
    return ids.numpy()[:, :n]


PROMPTS = [[], [3], [4, 5, 6], [2, 3, 4, 5, 6, 7, 8, 9], [9, 8, 7, 6, 5, 4, 3, 2, 9, 8, 7, 6, 5, 4, 3]]


@pytest.mark.parametrize("cached", [True, False], ids=["cached", "recomputed"])
def test_each_row_slides_its_own_window_as_if_it_were_alone(cached):
    model = ChecksumModel(context=8)  # prompts of 0 to 15 tokens fill it at different steps
    ids = greedy(model, PROMPTS, 30, cached)
    for row, prompt in zip(ids, PROMPTS):
        assert row.tolist() == checksum_continuation(prompt, 30, context=8)


def test_a_model_without_context_keeps_everything():
    model = ChecksumModel(context=None)
    ids = greedy(model, PROMPTS, 40)
    for row, prompt in zip(ids, PROMPTS):
        assert row.tolist() == checksum_continuation(prompt, 40, context=None)


def test_a_window_of_one_token_keeps_only_the_newest():
    ids = greedy(ChecksumModel(context=1), [[5, 6, 7]], 6)
    assert ids[0].tolist() == checksum_continuation([5, 6, 7], 6, context=1)


@pytest.mark.parametrize("model_type", ["transformer", "lstm"])
def test_ragged_prompts_read_in_one_call_decode_as_if_fed_token_by_token(model_type):
    config = small_config(model_type)
    model = build_model(config.model, 10, config.data.seq_len)
    prompts = [[4, 5, 6, 7, 8, 9, 2, 3, 4], [7], [2, 3, 4, 5]]
    ids = greedy(model, prompts, 6)
    for prompt, row in zip(prompts, ids):
        cache, tokens = model.initial_cache(1), list(prompt)
        for position, token in enumerate(prompt + row[:-1].tolist()):
            logits, cache = model.call_with_cache(tf.constant([[token]]), cache, position)
            if position >= len(prompt) - 1:
                tokens.append(int(tf.argmax(logits[0, -1, 1:])) + 1)  # greedy, padding excluded
        assert tokens[len(prompt):] == row.tolist()


@pytest.mark.parametrize("cached", [True, False], ids=["cached", "recomputed"])
def test_requests_of_any_batch_prompt_length_stop_and_max_new_tokens_trace_the_decoder_once(cached):
    config = small_config("lstm")
    run = LoadedRun("(random)", config, LETTERS, build_model(config.model, LETTERS.vocabulary_size, 32), "",
                    task_for(config))
    requests = [(["ab"], 3, ""), (["abcdefgh" * 5, ""], 5, "hh"), (["a", "b", "c"], 4, "abcdefgh" * 3)]
    for prompts, max_new_tokens, stop in requests:
        ids = generate_ids(run, prompts, max_new_tokens, temperature=0.5, seed=1, stop=stop, cached=cached,
                           jit_compile=False)
        assert ids.shape == (len(prompts), max_new_tokens)
    assert decode_function(run, cached, False).experimental_get_tracing_count() == 1


def test_xla_widths_are_bucketed_the_prompts_padded_after_and_the_stop_before():
    tokens = bucketed(tf.ones([2, 65], tf.int32), 64, limit=100)
    assert tokens.shape == (2, 100) and tokens.numpy()[:, 65:].max() == PAD_ID
    assert bucketed(tf.constant([4, 5]), 16).numpy().tolist() == [-1] * 14 + [4, 5]
    assert bucketed(tf.zeros([0], tf.int32), 16).shape == (0,)


def test_completions_end_before_the_first_stop_and_decoding_ends_when_every_row_has_met_it():
    prompt = [4, 5, 6]
    expected = checksum_continuation(prompt, 40, context=8)
    text = LETTERS.detokenize(expected).numpy().decode()
    stop = text[5:7]  # two characters, first met at the 6th new token (or before)
    first = text.index(stop)
    ids = greedy(ChecksumModel(8), [prompt], 40, stop=stop)
    assert ids[0, :first + 2].tolist() == expected[:first + 2]
    assert (ids[0, first + 2:] == PAD_ID).all()  # nothing drawn after every row stopped
    assert completion_texts(LETTERS, ids, tf.constant(stop)).numpy()[0].decode() == text[:first]


def test_decoding_goes_on_while_some_row_has_not_met_the_stop_and_pads_those_that_have():
    prompts = [[4, 5, 6], [2]]
    expected = [checksum_continuation(p, 40, context=8) for p in prompts]
    texts = [LETTERS.detokenize(e).numpy().decode() for e in expected]
    stop = next(texts[0][5:5 + n] for n in range(2, 30) if texts[0][5:5 + n] not in texts[1])
    ids = greedy(ChecksumModel(8), prompts, 40, stop=stop)
    end = texts[0].index(stop) + len(stop)
    assert ids[0].tolist() == expected[0][:end] + [PAD_ID] * (40 - end)  # nothing after its own stop
    assert ids[1].tolist() == expected[1]
    cut = completion_texts(LETTERS, ids, tf.constant(stop)).numpy()
    assert [t.decode() for t in cut] == [texts[0][:texts[0].index(stop)], texts[1]]


def test_a_stop_is_met_inside_the_completion_only_and_never_by_text_no_token_spells():
    prompt = [4, 5, 6]
    expected = checksum_continuation(prompt, 20, context=8)
    text = LETTERS.detokenize(expected).numpy().decode()
    across = "f" + text[0]  # the prompt's last character "f" and the first new one
    assert across not in text
    for stop in (across, "z", "\u2603", text[:3] + "z"):
        ids = greedy(ChecksumModel(8), [prompt], 20, stop=stop)
        assert ids[0].tolist() == expected
        assert completion_texts(LETTERS, ids, tf.constant(stop)).numpy()[0].decode() == text


def test_stop_patterns_spell_the_stop_one_id_per_character():
    ids, length = stop_pattern(LETTERS, tf.constant("ab\u2603"))
    assert ids.numpy().tolist() == [2, 3, -1] and int(length) == 3  # -1: no id is a snowman
    ids, length = stop_pattern(LETTERS, tf.constant("\ufffd"))  # what out-of-vocabulary ids read as
    assert ids.numpy().tolist() == [1] and int(length) == 1
    assert int(stop_pattern(LETTERS, tf.constant(""))[1]) == 0
    assert int(stop_pattern(LETTERS, tf.constant("a" * (MAX_NEW_TOKENS + 1)))[1]) == 0  # cannot fit


def draws(logits, temperature=1.0, top_k=0, top_p=1.0, seed=1, step=0, rows=2000):
    """Token ids drawn for `rows` copies of one row of logits (index 0 is padding)."""
    logits = tf.constant([logits] * rows, tf.float32)
    return sample(logits, tf.constant(temperature), tf.constant(top_k), tf.constant(top_p), tf.constant(seed),
                  tf.constant(step)).numpy()


def kept(logits, top_k=0, top_p=1.0):
    """Indices keep_top_k_top_p leaves drawable."""
    scaled = keep_top_k_top_p(tf.constant([logits], tf.float32), tf.constant(top_k), tf.constant(top_p))
    return set(np.flatnonzero(scaled.numpy()[0] > MASKED).tolist())


def test_top_k_keeps_every_token_tied_with_the_kth():
    logits = [MASKED, 5.0, 4.0, 4.0, 4.0, 1.0]
    assert kept(logits, top_k=2) == {1, 2, 3, 4}
    assert kept(logits, top_k=1) == {1}
    assert kept(logits, top_k=5) == kept(logits, top_k=0) == {1, 2, 3, 4, 5}
    assert set(draws(logits, top_k=2)) == {1, 2, 3, 4}


def test_top_p_keeps_the_smallest_set_that_reaches_it_and_whatever_ties_with_its_last():
    halves = [MASKED] + [k * math.log(2.0) for k in (3, 2, 1, 1)]  # probabilities 1/2, 1/4, 1/8, 1/8 exactly
    assert kept(halves, top_p=0.5) == {1}  # 1/2 reaches 0.5: the next token is not needed
    assert kept(halves, top_p=0.75) == {1, 2}  # on the boundary 1/2 + 1/4
    assert kept(halves, top_p=0.76) == {1, 2, 3, 4}  # the third token, and the fourth tied with it
    assert kept([MASKED, 0.0, 0.0, 0.0, 0.0], top_p=0.3) == {1, 2, 3, 4}  # ties: all or none
    assert kept(halves, top_k=3, top_p=0.99) == {1, 2, 3, 4}  # top-k's tie at the 3rd stays for top-p
    assert set(draws(halves, top_p=0.75)) == {1, 2}


def test_temperature_zero_is_the_argmax_of_everything_but_padding():
    logits = np.random.default_rng(0).normal(size=(64, 30)).astype(np.float32)
    logits[:, PAD_ID] = 100.0
    tokens = sample(tf.constant(logits), tf.constant(0.0), tf.constant(3), tf.constant(0.5), tf.constant(0),
                    tf.constant(0)).numpy()
    np.testing.assert_array_equal(tokens, logits[:, 1:].argmax(axis=1) + 1)


def test_a_seed_and_step_give_the_same_draws_and_others_give_different_ones():
    uniform = [MASKED] + [0.0] * 20
    first = draws(uniform, seed=7, step=3, rows=200)
    np.testing.assert_array_equal(draws(uniform, seed=7, step=3, rows=200), first)
    assert (draws(uniform, seed=8, step=3, rows=200) != first).any()
    assert (draws(uniform, seed=7, step=4, rows=200) != first).any()
    assert len(set(first)) > 10  # rows of one batch draw differently


@pytest.mark.parametrize("settings", [{}, {"top_k": 3}, {"top_p": 0.9}, {"temperature": 1e30}])
def test_padding_is_never_drawn(settings):
    logits = [3.0] + [0.0] * 9  # padding the likeliest
    assert PAD_ID not in draws(logits, **settings)


def test_xla_and_tensorflow_kernels_draw_the_same_tokens():
    """Python decodes under XLA, TF Serving without it: a seed must give the same text in both."""
    logits = tf.constant(np.random.default_rng(1).normal(size=(256, 40)).astype(np.float32))

    def draw(temperature, top_k, top_p):
        return sample(logits, tf.constant(temperature), tf.constant(top_k), tf.constant(top_p), tf.constant(9),
                      tf.constant(4))

    for settings in ((1.0, 0, 1.0), (0.7, 10, 0.9)):
        np.testing.assert_array_equal(tf.function(draw, jit_compile=True)(*settings), draw(*settings))

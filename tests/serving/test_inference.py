"""Loading a run, scoring text and generating from it, in Python and from the command line."""

import importlib
import json
import math

import numpy as np
import pytest
import tensorflow as tf

from conftest import checkpointless_run, small_config
from tflm.serving import scoring as score_module
from tflm.errors import TflmError
from tflm.serving.decoding import MAX_NEW_TOKENS, MAX_SEED, check_sampling, generate, generate_ids, sample
from tflm.serving.loading import MAX_BATCH_SIZE, load_run
from tflm.serving.reading import next_token_logits
from tflm.serving.inputs import check_strings, read_texts
from tflm.serving.scoring import check_stride, score_ids, score_texts
from tflm.data.tokenizers import PAD_ID
from tflm.training.train import train

MODEL_TYPES = ("transformer", "lstm")
CONTEXT = small_config().data.seq_len


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{model type: run directory}, each trained once for the whole module (so its tests are slow)."""
    base = tmp_path_factory.mktemp("runs")
    return {t: train(small_config(t), str(base / t)) for t in MODEL_TYPES}


@pytest.fixture(scope="module")
def loaded(runs):
    """{model type: LoadedRun}."""
    return {t: load_run(runs[t]) for t in MODEL_TYPES}


def direct_log_probs(model, ids):
    """log P(ids[i] | ids[:i]) for i >= 1 from one plain forward pass (numpy)."""
    log_probs = tf.nn.log_softmax(model(np.array([ids[:-1]], np.int32))).numpy()[0]
    return np.array([log_probs[i, ids[i + 1]] for i in range(len(ids) - 1)])


def ids_of(run, text):
    return run.tokenizer.tokenize(text).numpy().tolist()


@pytest.mark.slow
@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_load_run_restores_every_trained_weight(runs, loaded, model_type):
    again = load_run(runs[model_type])  # a second model, freshly initialised before restoring
    reader = tf.train.load_checkpoint(loaded[model_type].checkpoint)
    for i, (a, b) in enumerate(zip(loaded[model_type].model.trainable_variables, again.model.trainable_variables)):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
    # The head sits under model/ in the checkpoint; its trained value is what was restored.
    head = reader.get_tensor("model/head/bias/.ATTRIBUTES/VARIABLE_VALUE")
    np.testing.assert_array_equal(loaded[model_type].model.head.bias.numpy(), head)
    assert loaded[model_type].config.model.type == model_type
    assert loaded[model_type].tokenizer.vocabulary_size == loaded[model_type].model.vocabulary_size


def test_run_dir_without_checkpoint_is_a_user_error(tmp_path):
    bare = checkpointless_run(tmp_path / "bare")
    with pytest.raises(TflmError, match="no checkpoint"):
        load_run(bare)
    with pytest.raises(TflmError, match="missing: no such run directory"):
        load_run(str(tmp_path / "missing"))
    with pytest.raises(TflmError, match="not a tflm run directory"):
        load_run(str(tmp_path))


@pytest.mark.slow
@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_score_is_the_sum_of_next_token_log_probs(loaded, model_type):
    run = loaded[model_type]
    text = "def f(x):\n    return x"
    result = score_texts(run, [text])[0]
    expected = direct_log_probs(run.model, ids_of(run, text))
    assert result["num_tokens"] == len(text) - 1
    assert result["log_prob"] == pytest.approx(expected.sum(), abs=1e-4)
    assert result["mean_nll"] == pytest.approx(-expected.mean(), abs=1e-5)
    assert result["perplexity"] == pytest.approx(math.exp(-expected.mean()), rel=1e-5)
    # Every scored character here is one UTF-8 byte: bits per byte is the summed loss in bits / 22.
    assert result["bits_per_byte"] == pytest.approx(-expected.sum() / math.log(2) / (len(text) - 1), rel=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("stride", [8, CONTEXT])
def test_long_text_is_scored_in_sliding_windows(loaded, stride):
    run = loaded["transformer"]
    text = "import os\nprint(os.getcwd())\n" * 4  # 116 characters, several contexts
    ids = ids_of(run, text)
    expected = 0.0
    for i in range(1, len(ids)):
        # Target i is scored by the first window that reaches it; windows start every `stride`.
        start = 0 if i <= CONTEXT else -(-(i - CONTEXT) // stride) * stride
        logits = run.model(np.array([ids[start:i]], np.int32)).numpy()[0, -1]
        expected += float(tf.nn.log_softmax(logits)[ids[i]])
    result = score_texts(run, [text], stride=stride)[0]
    assert result["num_tokens"] == len(ids) - 1
    assert result["log_prob"] == pytest.approx(expected, abs=2e-4)


@pytest.mark.slow
@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_batches_mixing_empty_unseen_and_long_texts_score_like_single_texts(loaded, model_type):
    run = loaded[model_type]
    texts = ["", "a", "print(1)", "\u2603\u2603 unseen \u2603", "x = 1\n" * 20]
    batch = score_texts(run, texts)
    assert batch[0] == {"text": "", "log_prob": 0.0, "mean_nll": 0.0, "perplexity": 1.0, "bits_per_byte": 0.0,
                        "num_tokens": 0}
    assert batch[1]["num_tokens"] == 0 and batch[1]["perplexity"] == 1.0
    assert 1 in ids_of(run, texts[3])  # the snowman is out of vocabulary
    for text, result in zip(texts, batch):
        alone = score_texts(run, [text])[0]
        assert math.isfinite(result["log_prob"])
        assert result["log_prob"] == pytest.approx(alone["log_prob"], abs=1e-4)
        assert result["num_tokens"] == alone["num_tokens"] == max(len(text) - 1, 0)


class TokenCounter:
    """Wraps a model and records how many token positions each call runs it on."""

    def __init__(self, model):
        self.model, self.calls = model, []

    def __call__(self, tokens, training=False):
        self.calls.append(int(tf.size(tokens)))
        return self.model(tokens, training=training)

    def call_with_cache(self, tokens, cache, cache_index=None):
        self.calls.append(int(tf.size(tokens)))
        return self.model.call_with_cache(tokens, cache, cache_index)

    def __getattr__(self, name):  # context, initial_cache, cache_rows, ...: the model's
        return getattr(self.model, name)


@pytest.mark.slow
@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_scoring_runs_the_model_on_the_tokens_sent_in_bounded_chunks(loaded, model_type, monkeypatch):
    run = loaded[model_type]
    monkeypatch.setattr(score_module, "CHUNK_TOKENS", 256)
    long_text = "x = 1\n" * 300  # 1800 characters

    def tokens_run(texts):
        counter = TokenCounter(run.model)
        log_prob, _ = score_ids(counter, run.tokenizer.tokenize(tf.constant(texts)), 16)
        return counter.calls, log_prob.numpy()

    alone, alone_log_prob = tokens_run([long_text])
    beside_empty, log_probs = tokens_run([long_text] + [""] * 31)
    assert sum(beside_empty) == sum(alone)  # not 32 rows padded to the longest
    assert max(beside_empty) <= 256
    assert log_probs[0] == pytest.approx(alone_log_prob[0], abs=1e-3) and not log_probs[1:].any()
    if model_type == "lstm":
        assert sum(alone) == len(long_text) - 1  # one pass: every input token once
    else:
        assert sum(alone) == CONTEXT * (1 + -(-(len(long_text) - 1 - CONTEXT) // 16))  # its windows only


@pytest.mark.slow
def test_score_texts_takes_more_texts_than_one_request_may_hold(loaded):
    run = loaded["lstm"]
    texts = [f"x = {i}" for i in range(2 * MAX_BATCH_SIZE + 3)]
    results = score_texts(run, texts)
    assert [r["text"] for r in results] == texts
    for i in (0, MAX_BATCH_SIZE, len(texts) - 1):  # the first of each batch
        assert results[i]["log_prob"] == pytest.approx(score_texts(run, [texts[i]])[0]["log_prob"], abs=1e-4)


def test_a_file_holds_one_text_per_newline_and_keeps_other_line_breaks(tmp_path):
    path = tmp_path / "texts.txt"
    path.write_bytes("page\fbreak\u2028sep\r\nwindows\r\n\nlone\rcr\nlast".encode("utf-8"))
    assert read_texts(["arg"], str(path)) == ["arg", "page\fbreak\u2028sep", "windows", "", "lone\rcr", "last"]
    path.write_bytes(b"one\ntwo\n")
    assert read_texts([], str(path)) == ["one", "two"]


def test_bad_score_arguments_are_user_errors():
    """score_texts checks its texts and stride with these (through the command line:
    test_command_line_mistakes_print_one_line_and_exit_2)."""
    assert check_stride(None, CONTEXT) == CONTEXT // 2 and check_stride(CONTEXT, CONTEXT) == CONTEXT
    for stride in (0, CONTEXT + 1, 2.0, True):
        with pytest.raises(TflmError, match=rf"^stride must be an integer from 1 to the context \({CONTEXT}\), got "):
            check_stride(stride, CONTEXT)
    with pytest.raises(TflmError, match="^texts must be a list of strings, got str$"):
        check_strings("abc", "texts")


@pytest.mark.slow
@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_cached_greedy_decoding_equals_recomputing_the_prefix(loaded, model_type):
    run = loaded[model_type]
    # Mixed lengths, a prompt longer than the context, and enough tokens for the Transformer's
    # window to slide past seq_len twice.
    prompts = ["def ", "", "import numpy as np\nimport tensorflow as tf\n# long prompt"]
    cached = generate_ids(run, prompts, 2 * CONTEXT, temperature=0.0)
    uncached = generate_ids(run, prompts, 2 * CONTEXT, temperature=0.0, cached=False)
    assert cached.shape == (3, 2 * CONTEXT)
    np.testing.assert_array_equal(cached, uncached)
    assert (cached != 0).all()  # padding is never generated


@pytest.mark.slow
@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_first_greedy_token_is_the_argmax_of_next_token_logits(loaded, model_type):
    run = loaded[model_type]
    ids = ids_of(run, "for i in range(10):")
    logits = next_token_logits(run, tf.constant([ids + [0, 0]])).numpy()[0]  # trailing padding
    np.testing.assert_allclose(logits, run.model(np.array([ids], np.int32)).numpy()[0, -1], atol=1e-5)
    first = generate_ids(run, ["for i in range(10):"], 1, temperature=0.0)[0, 0]
    assert first == int(np.argmax(logits[1:])) + 1  # argmax over everything but padding


@pytest.mark.slow
def test_prompts_longer_than_the_context_keep_their_last_tokens(loaded):
    run = loaded["transformer"]
    tail = "x" * (CONTEXT - 9) + "def main("  # exactly one context
    assert generate(run, ["# " * 40 + tail], 12, temperature=0.0) == generate(run, [tail], 12, temperature=0.0)


@pytest.mark.slow
def test_sampling_is_seeded_and_top_k_1_is_greedy(loaded):
    run = loaded["lstm"]
    first = generate(run, ["import ", "x"], 30, temperature=1.0, top_p=0.95, seed=7)
    assert generate(run, ["import ", "x"], 30, temperature=1.0, top_p=0.95, seed=7) == first
    assert generate(run, ["import ", "x"], 30, temperature=1.0, top_p=0.95, seed=8) != first
    assert generate(run, ["import "], 30, temperature=1.5, top_k=1, seed=3) == \
        generate(run, ["import "], 30, temperature=0.0)
    assert all(len(text) == 30 for text in first)


@pytest.mark.parametrize("kwargs, match", [
    ({"max_new_tokens": 0}, "max_new_tokens"),
    ({"max_new_tokens": MAX_NEW_TOKENS + 1}, "max_new_tokens"),
    ({"temperature": -0.5}, "temperature"),
    ({"temperature": float("inf")}, "temperature must be a finite number"),
    ({"seed": MAX_SEED + 1}, "seed must be an integer from 0 to 2147483647"),
    ({"seed": -1}, "seed"),
    ({"top_k": -1}, "top_k"),
    ({"top_p": 0.0}, "top_p"),
])
def test_bad_generation_arguments_are_user_errors(kwargs, match):
    """generate checks its sampling arguments with check_sampling (through the command line:
    test_command_line_mistakes_print_one_line_and_exit_2)."""
    arguments = {"max_new_tokens": 100, "temperature": 1.0, "top_k": 0, "top_p": 1.0, "seed": None}
    check_sampling(**arguments)
    with pytest.raises(TflmError, match=match):
        check_sampling(**{**arguments, **kwargs})


def test_padding_is_never_drawn_however_high_the_temperature():
    logits = tf.constant([[3.0] + [0.0] * 9] * 4000)  # padding the likeliest; 1 in 10 if not masked
    for temperature in (0.0, 1.0, 1e30):
        drawn = sample(logits, tf.constant(temperature), tf.constant(0), tf.constant(1.0), tf.constant(5),
                       tf.constant(1)).numpy()
        assert PAD_ID not in drawn
    assert len(set(drawn)) == 9  # a huge temperature is uniform over the other tokens


@pytest.mark.slow
def test_command_lines_score_and_generate(runs, loaded, tmp_path, tflm_cli):
    texts = tmp_path / "texts.txt"
    texts.write_text("print(1)\nx = 2\n", encoding="utf-8")
    scored = tflm_cli("score", "--run-dir", runs["lstm"], "hello", "--file", str(texts), "--json")
    assert scored.returncode == 0, scored.stderr
    lines = [line for line in scored.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 3
    expected = score_texts(loaded["lstm"], ["hello", "print(1)", "x = 2"])
    assert [round(json.loads(line)["log_prob"], 3) for line in lines] == \
        [round(r["log_prob"], 3) for r in expected]

    generated = tflm_cli("generate", "--run-dir", runs["lstm"], "--prompt", "def ", "--max-new-tokens", "20",
                         "--temperature", "0")
    assert generated.returncode == 0, generated.stderr
    assert generated.stdout.rstrip("\n") == "def " + generate(loaded["lstm"], ["def "], 20, temperature=0.0)[0]


@pytest.mark.slow
@pytest.mark.parametrize("module, args, named", [
    ("generate", ["--max-new-tokens", "0", "--prompt", "a"], "max_new_tokens"),
    ("generate", ["--seed", "3000000000", "--prompt", "a"], "seed"),
    ("generate", ["--prompt", "ok", "--prompt", "caf\udce9"], "'caf\\udce9' is not"),  # bytes b"caf\xe9"
    ("score", ["--stride", "0", "abc"], "stride"),
    ("score", ["fine", "caf\udce9"], "'caf\\udce9' is not"),  # argv decoded with surrogateescape
])
def test_command_line_mistakes_print_one_line_and_exit_2(runs, capsys, module, args, named):
    main = importlib.import_module(f"tflm.{module}").main
    with pytest.raises(SystemExit) as exit_info:
        main(["--run-dir", runs["transformer"], *args])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith("tflm: error:") and error.count("\n") == 1
    assert named in error


@pytest.mark.parametrize("module, args", [("generate", ["--max-new-tokens", "5"]), ("score", ["abc"])])
def test_command_lines_on_a_directory_without_a_trained_run_print_one_line_and_exit_2(tmp_path, capsys, module, args):
    main = importlib.import_module(f"tflm.{module}").main
    (tmp_path / "empty").mkdir()
    for run_dir, named in ((str(tmp_path / "empty"), "is not a tflm run directory"),
                           (checkpointless_run(tmp_path / "bare"), "has no checkpoint yet")):
        with pytest.raises(SystemExit) as exit_info:
            main(["--run-dir", run_dir, *args])
        assert exit_info.value.code == 2
        error = capsys.readouterr().err
        assert error.startswith(f"tflm: error: {run_dir}") and error.count("\n") == 1 and named in error


@pytest.mark.slow
def test_several_prompts_print_apart_and_as_json_lines(runs, loaded, capsys):
    from tflm.generate import main

    prompts = ["def ", "\n\n", ""]
    expected = generate(loaded["lstm"], prompts, 30, temperature=0.0)
    common = ["--run-dir", runs["lstm"], "--max-new-tokens", "30", "--temperature", "0"]
    assert main(common + [arg for prompt in prompts for arg in ("--prompt", prompt)]) == 0
    shown = "".join(f"--- prompt {i} of 3\n{prompt + completion}\n"
                    for i, (prompt, completion) in enumerate(zip(prompts, expected), start=1))
    assert capsys.readouterr().out == shown
    assert main(common + ["--json"] + [arg for prompt in prompts for arg in ("--prompt", prompt)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line) for line in lines] == [{"prompt": p, "completion": c} for p, c in zip(prompts, expected)]


@pytest.fixture(scope="module")
def classifier_run(tmp_path_factory):
    """A tiny text classifier (task.type: classify), trained for two steps."""
    tmp = tmp_path_factory.mktemp("classifier")
    for split in ("train", "validation"):
        rows = "".join(f"{'ab' * (i % 4 + 1)},{'odd' if i % 2 else 'even'}\n" for i in range(40))
        (tmp / f"{split}.csv").write_text("text,label\n" + rows, encoding="utf-8")
    config = small_config("lstm", data={"source": "files", "paths": [str(tmp / "train.csv")],
                                        "validation_paths": [str(tmp / "validation.csv")]},
                          train={"steps": 2, "eval_every": 2}, task={"type": "classify"})
    return train(config, str(tmp / "run"))


@pytest.mark.slow
def test_score_and_generate_on_a_classifier_run_are_one_line_errors(classifier_run, capsys, tflm_cli):
    from tflm.score import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--run-dir", classifier_run, "abc"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert error == f"tflm: error: {classifier_run} is a text classifier (task.type: classify), not a language " \
                    "model; use tflm.classify\n"
    generated = tflm_cli("generate", "--run-dir", classifier_run, "--prompt", "ab")
    assert generated.returncode == 2 and generated.stdout == ""
    assert generated.stderr.strip().splitlines() == [error.strip()]

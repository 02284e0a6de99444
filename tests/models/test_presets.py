"""Pretrained KerasHub models (model.preset): tflm computes what KerasHub computes, its tokenizer
keeps tflm's padding id, and a bad preset or setting is one line before anything is written."""

import json
import os
import shutil
import socket

import numpy as np
import pytest

from tflm.config import load_config
from tflm.data.tokenizers import load_tokenizer
from tflm.data.tokenizers.preset import PresetTokenizer
from tflm.models.build import new_model
from tflm.models.preset import MASKED
from tflm.train import main

FAMILIES = ("gpt2", "llama")
TEXTS = ["the quick brown fox", "a cat sat on the mat, then ran!", "hello \u2603 world\n"]


def preset_model(directory, seq_len=32, lora_rank=0):
    """tflm's model of a preset, and its tokenizer."""
    tokenizer = PresetTokenizer.from_preset(directory)
    config = load_config(None, [f"model.preset={directory}", f"data.seq_len={seq_len}"])
    return new_model(config.model, tokenizer.vocabulary_size, seq_len, lora_rank=lora_rank), tokenizer


def ragged_batch(tokenizer):
    """The tokens of TEXTS, right-padded with tflm's padding id 0, and their lengths."""
    ids = tokenizer.tokenize(TEXTS)
    return ids.to_tensor().numpy(), ids.row_lengths().numpy()


@pytest.mark.parametrize("family", FAMILIES)
def test_logits_equal_keras_hub_causal_lm(tiny_presets, family):
    import keras_hub

    model, tokenizer = preset_model(tiny_presets[family])
    ids, lengths = ragged_batch(tokenizer)
    logits = model(ids).numpy()
    causal_lm = keras_hub.models.CausalLM.from_preset(tiny_presets[family], preprocessor=None)
    expected = causal_lm({"token_ids": np.maximum(ids - 1, 0), "padding_mask": ids > 0}).numpy()
    assert logits.shape == expected.shape[:2] + (expected.shape[2] + 1,)
    for row, length in enumerate(lengths):  # causal: padding after a text changes none of its logits
        np.testing.assert_allclose(logits[row, :length, 1:], expected[row, :length], atol=1e-5, rtol=0)
    assert (logits[:, :, 0] == MASKED).all()  # tflm's padding id is never predicted


@pytest.mark.parametrize("family", FAMILIES)
def test_cached_decoding_equals_the_full_forward(tiny_presets, family):
    """A ragged prefill, then one token per row at its own position, as tflm's sampler decodes."""
    import tensorflow as tf

    model, tokenizer = preset_model(tiny_presets[family])
    ids, lengths = ragged_batch(tokenizer)
    full = model(ids).numpy()
    logits, cache = model.call_with_cache(tf.constant(ids), model.initial_cache(len(ids)), 0,
                                          tf.constant(lengths, tf.int32))
    for row, length in enumerate(lengths):
        np.testing.assert_allclose(logits.numpy()[row, :length], full[row, :length], atol=1e-5)
    following = np.array([[5], [9], [13]], np.int32)
    step, _ = model.call_with_cache(tf.constant(following), cache, tf.constant(lengths, tf.int32))
    for row, length in enumerate(lengths):
        extended = np.concatenate([ids[row, :length], following[row]])[None]
        np.testing.assert_allclose(step.numpy()[row, 0], model(extended).numpy()[0, -1], atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_the_preset_tokenizer_keeps_padding_apart_and_saves_whole(tiny_presets, tmp_path, family):
    import keras_hub

    tokenizer = PresetTokenizer.from_preset(tiny_presets[family])
    theirs = keras_hub.tokenizers.Tokenizer.from_preset(tiny_presets[family])
    ids = tokenizer.tokenize(TEXTS)
    assert ids.flat_values.numpy().min() >= 1
    expected = [list(row) for row in theirs.tokenize(TEXTS)]  # KerasHub gives lists eagerly
    assert [list(row - 1) for row in ids.numpy()] == expected
    assert [t.decode() for t in tokenizer.detokenize(ids.to_tensor()).numpy()] == list(theirs.detokenize(expected))
    assert tokenizer.vocabulary_size == theirs.vocabulary_size() + 1
    assert tokenizer.byte_lengths()[0] == 0
    if family == "gpt2":  # byte-level BPE: every text's tokens decode to exactly its bytes
        for text, row in zip(TEXTS, tokenizer.encode(TEXTS)):
            assert tokenizer.byte_lengths()[row].sum() == len(text.encode("utf-8"))
    tokenizer.save(str(tmp_path / "run"))
    reloaded = load_tokenizer(str(tmp_path / "run"))  # the run directory alone: no preset needed
    assert reloaded.fingerprint() == tokenizer.fingerprint()
    np.testing.assert_array_equal(reloaded.encode(TEXTS)[1], tokenizer.encode(TEXTS)[1])
    with open(tmp_path / "run" / "preset_tokenizer" / "tokenizer.json", "a") as f:
        f.write(" ")
    with pytest.raises(Exception, match="is not the file"):
        load_tokenizer(str(tmp_path / "run"))


def test_lora_freezes_the_preset_and_adds_small_adapters(tiny_presets):
    model, _ = preset_model(tiny_presets["gpt2"], lora_rank=2)
    trainable = [v.path for v in model.trainable_variables]
    assert trainable and all("lora_kernel" in path for path in trainable)
    frozen = {id(v) for v in model.frozen_weights()}
    assert {id(v) for v in model.variables} - frozen == {id(v) for v in model.trainable_variables}
    assert sum(np.prod(v.shape) for v in model.trainable_variables) < 0.1 * sum(np.prod(v.shape) for v in model.variables)


def test_a_run_refuses_a_preset_whose_files_changed(tiny_presets, tmp_path):
    from tflm.errors import TflmError
    from tflm.presets import PRESET_FILE, check_recorded_preset, preset_record

    preset = shutil.copytree(tiny_presets["gpt2"], str(tmp_path / "gpt2"))
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / PRESET_FILE).write_text(preset_record(preset))
    check_recorded_preset(str(tmp_path / "run"), preset)  # the same files: nothing to say
    with open(os.path.join(preset, "model.weights.h5"), "ab") as f:  # other weights under the same path
        f.write(b"\0")
    with pytest.raises(TflmError, match="is not the preset the run was trained from: .*preset.json records"):
        check_recorded_preset(str(tmp_path / "run"), preset)


def broken_presets(tiny_presets, base):
    """{name: directory} of directories that are not presets tflm can train."""
    made = {"empty": os.path.join(base, "empty")}
    os.makedirs(made["empty"])
    made["no_tokenizer"] = shutil.copytree(tiny_presets["gpt2"], os.path.join(base, "no_tokenizer"))
    os.remove(os.path.join(made["no_tokenizer"], "tokenizer.json"))
    made["encoder"] = shutil.copytree(tiny_presets["gpt2"], os.path.join(base, "encoder"))
    config_path = os.path.join(made["encoder"], "config.json")
    with open(config_path) as f:
        config = json.load(f)
    config["class_name"] = "BertBackbone"
    with open(config_path, "w") as f:
        json.dump(config, f)
    return made


def loopback_only(host, *args, getaddrinfo=socket.getaddrinfo, **kwargs):
    """socket.getaddrinfo for loopback names only; any other host fails as it does offline."""
    if host not in ("localhost", "127.0.0.1", "::1"):
        raise socket.gaierror(socket.EAI_NONAME, f"no network in the tests (asked for {host})")
    return getaddrinfo(host, *args, **kwargs)


PRESET_ERRORS = [
    ("gpt2", ["model.num_layers=3"], "model.num_layers cannot be set beside model.preset"),
    ("gpt2", ["data.tokenizer=byte"], "data.tokenizer must be preset, not byte"),
    ("gpt2", ["model.dropout=0.1"], "a preset fine-tunes without dropout"),
    ("gpt2", ["runtime.tensor_parallel=2"], "model.type=preset is not split"),
    ("gpt2", ["runtime.pipeline_stages=2"], "not per stage yet"),
    ("gpt2", ["data.seq_len=129"], "data.seq_len=129 is more than the 128 positions"),
    (None, ["train.lora_rank=4"], "train.lora_rank adapts a pretrained model: it needs model.preset"),
    ("empty", [], "no config.json: it is not a KerasHub preset"),
    ("no_tokenizer", [], "no tokenizer.json: the preset has no tokenizer"),
    ("encoder", [], "tflm cannot train its BertBackbone causally; supported: GPT2Backbone, LlamaBackbone"),
    ("/nonexistent/preset", [], "model.preset=/nonexistent/preset: no such directory"),
    ("kaggle://keras/gpt2/keras/gpt2_base_en/2", [], "cannot download it (cannot reach api.kaggle.com); download it once"),
]


@pytest.mark.parametrize("preset,settings,message", PRESET_ERRORS, ids=lambda value: str(value)[:30])
def test_bad_presets_and_settings_are_one_line_exit_2_and_write_nothing(tiny_presets, tmp_path, capsys, preset,
                                                                        settings, message, monkeypatch):
    monkeypatch.setenv("TFLM_PRESET_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(socket, "getaddrinfo", loopback_only)  # a handle's download never leaves this machine
    presets = {**tiny_presets, **broken_presets(tiny_presets, str(tmp_path / "presets"))}
    data = tmp_path / "text.txt"
    data.write_text("the cat sat on the mat. " * 400)
    args = ["data.source=files", f"data.paths=[{data}]", *settings]
    if preset:
        args.append(f"model.preset={presets.get(preset, preset)}")
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(SystemExit) as exit_info:
        main([arg for setting in args for arg in ("--set", setting)] + ["--run-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert err.startswith("tflm: error: ") and err.count("\n") == 1 and message in err, err
    assert sorted(os.listdir(tmp_path)) == before and not (tmp_path / "cache").exists()

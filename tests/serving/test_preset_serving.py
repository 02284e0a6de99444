"""Serving fine-tuned KerasHub presets: the export generates what KerasHub generates, from a
TensorFlow-only process, and a classifier on a preset trains and serves."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from conftest import labelled_rows, write_csv
from tflm.config import Config, updated
from tflm.runs import run_dir as runs
from tflm.training.train import train
from tiny_presets import preset_config, write_corpus

pytestmark = pytest.mark.slow  # every test trains and exports

FAMILIES = ("gpt2", "llama")
PROMPTS = ["the quick", "a cat sat on", "hello"]
NEW_TOKENS = 12


FRESH_PROCESS = textwrap.dedent("""
    import json, sys
    import tensorflow as tf
    import tensorflow_text  # registers the tokenizers' ops, as TF Serving links them in
    prompts, paths, new_tokens = json.loads(sys.argv[1])
    out = {}
    for name, path in paths.items():
        completions = tf.saved_model.load(path).signatures["generate"](
            prompts=tf.constant(prompts), max_new_tokens=tf.constant(new_tokens), temperature=tf.constant(0.0),
            top_k=tf.constant(0), seed=tf.constant(0), top_p=tf.constant(1.0), stop=tf.constant(""))["completions"]
        out[name] = [c.decode("utf-8") for c in completions.numpy()]
    out["modules"] = sorted({m.split(".")[0] for m in sys.modules} & {"keras_nlp", "keras_hub", "tflm"})
    print(json.dumps(out))
""")


def keras_hub_greedy(preset, model, tokenizer, prompts, new_tokens, lora_rank=0):
    """KerasHub's own greedy generate from the same prompt tokens, with `model`'s weights (tflm's
    PresetLM, with LoRA adapters of `lora_rank`)."""
    import keras_hub

    causal_lm = keras_hub.models.CausalLM.from_preset(preset, preprocessor=None)
    causal_lm.compile(sampler="greedy", jit_compile=False)  # the export runs without XLA too
    if lora_rank:
        causal_lm.backbone.enable_lora(lora_rank)
    causal_lm.backbone.set_weights(model.backbone.get_weights())
    rows = [ids - 1 for ids in tokenizer.encode(prompts)]  # the preset's ids
    width = max(len(row) for row in rows) + new_tokens
    token_ids = np.zeros((len(rows), width), np.int32)
    for i, row in enumerate(rows):
        token_ids[i, :len(row)] = row
    out = causal_lm.generate({"token_ids": token_ids, "padding_mask": token_ids != 0}, stop_token_ids=None)
    out = np.asarray(out["token_ids"])
    return [tokenizer.detokenize(out[i, len(row):len(row) + new_tokens] + 1).numpy().decode("utf-8")
            for i, row in enumerate(rows)]


def test_greedy_generate_from_the_export_equals_keras_hub_generate(tiny_presets, tmp_path):
    """Of runs briefly adapted with LoRA (the export applies the adapters): the presets' random
    weights barely trained, so prompts lead to different text (longer training: mostly spaces)."""
    from tflm.serving.export import export_run
    from tflm.serving.loading import load_run

    corpus = write_corpus(str(tmp_path / "text.txt"))
    run_dirs, paths = {}, {}
    for family in FAMILIES:
        config = preset_config(tiny_presets[family], corpus, steps=4, eval_every=4, lora_rank=2, learning_rate=0.02)
        run_dirs[family] = train(config, str(tmp_path / family))
        paths[family] = export_run(run_dirs[family], str(tmp_path / "models"), family)
    done = subprocess.run([sys.executable, "-c", FRESH_PROCESS, json.dumps([PROMPTS, paths, NEW_TOKENS])],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
                          cwd="/")
    assert done.returncode == 0, done.stderr[-3000:]
    served = json.loads(done.stdout.strip().splitlines()[-1])
    assert served.pop("modules") == []  # TensorFlow and tensorflow-text alone
    for family in FAMILIES:
        loaded = load_run(run_dirs[family])
        expected = keras_hub_greedy(tiny_presets[family], loaded.model, loaded.tokenizer, PROMPTS, NEW_TOKENS,
                                    lora_rank=2)
        assert served[family] == expected, family
        assert len(set(expected)) > 1  # the prompts lead somewhere different: the comparison has teeth


def test_a_classifier_on_a_preset_with_lora_trains_and_serves(tiny_presets, tmp_path):
    from tflm.serving.classifying import classify_texts
    from tflm.serving.export import export_run
    from tflm.serving.loading import load_run

    paths = [write_csv(tmp_path / f"{split}.csv", labelled_rows(count, seed))
             for split, count, seed in (("train", 240, 0), ("val", 40, 1))]
    config = updated(Config(), model={"preset": tiny_presets["gpt2"]},
                     data={"source": "files", "paths": [str(paths[0])], "validation_paths": [str(paths[1])],
                           "seq_len": 32},
                     task={"type": "classify"},
                     train={"steps": 30, "eval_every": 10, "global_batch_size": 16, "warmup_steps": 3,
                            "learning_rate": 0.01, "lora_rank": 4})  # the head and the adapters train
    run_dir = train(config, str(tmp_path / "classifier"))
    history = runs.read_history(run_dir)
    assert history[-1]["val_loss"] < history[0]["val_loss"] and history[-1]["val_accuracy"] > 0.5
    import tensorflow as tf

    path = export_run(run_dir, str(tmp_path / "models"), "classifier")
    texts = ["abc dea", "fgh ij", "zzz"]
    served = tf.saved_model.load(path).signatures["classify"](texts=tf.constant(texts))
    expected = classify_texts(load_run(run_dir), texts)
    assert [label.decode() for label in served["labels"].numpy()] == [r["label"] for r in expected]

"""Tiny KerasHub presets built offline, as the tests of model.preset use them: random weights, a
byte-level BPE vocabulary of a few merges (GPT-2) or a SentencePiece model trained in-process (Llama)."""

import io
import os
import random

TEXT = ("the quick brown fox jumps over the lazy dog. " * 3 + "a cat sat on the mat, then the cat ran. " * 3 +
        "hello world! this is text for tiny presets.\n")


def gpt2_preset(directory, layers=2, width=16, max_positions=128, seed=0):
    """A GPT-2 CausalLM preset (`layers` blocks of `width`: heads of 8 to 32, feed-forward 2 x width) in
    `directory`; returns it."""
    import keras
    import keras_hub
    from keras_hub.src.tokenizers.byte_pair_tokenizer import bytes_to_unicode

    keras.utils.set_random_seed(seed)
    vocabulary = {}
    for character in bytes_to_unicode()[1]:
        vocabulary.setdefault(character, len(vocabulary))
    merges = ["Ġ t", "Ġ a", "t h", "h e", "Ġt h", "Ġth e", "a t", "Ġ c", "Ġc at", "o r"]
    for merge in merges:
        vocabulary.setdefault(merge.replace(" ", ""), len(vocabulary))
    vocabulary["<|endoftext|>"] = len(vocabulary)
    tokenizer = keras_hub.models.GPT2Tokenizer(vocabulary=vocabulary, merges=merges)
    backbone = keras_hub.models.GPT2Backbone(vocabulary_size=tokenizer.vocabulary_size(), num_layers=layers,
                                             num_heads=max(2, width // 32), hidden_dim=width, intermediate_dim=2 * width,
                                             max_sequence_length=max_positions, dropout=0.1)
    preprocessor = keras_hub.models.GPT2CausalLMPreprocessor(tokenizer, sequence_length=64)
    keras_hub.models.GPT2CausalLM(backbone, preprocessor).save_to_preset(directory)
    return directory


def llama_preset(directory, layers=2, seed=0):
    """A Llama CausalLM preset (grouped-query attention: 4 query heads, 2 key/value heads; untied
    head) with a 300-piece SentencePiece BPE model, in `directory`; returns it."""
    import keras
    import keras_hub
    import sentencepiece

    keras.utils.set_random_seed(seed)
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(TEXT.split("\n") * 20), model_writer=model, vocab_size=300, model_type="bpe",
        pad_id=0, unk_id=1, bos_id=2, eos_id=3, byte_fallback=True, minloglevel=2)
    tokenizer = keras_hub.models.LlamaTokenizer(proto=model.getvalue())
    backbone = keras_hub.models.LlamaBackbone(vocabulary_size=tokenizer.vocabulary_size(), num_layers=layers,
                                              num_query_heads=4, num_key_value_heads=2, hidden_dim=16,
                                              intermediate_dim=32)
    preprocessor = keras_hub.models.LlamaCausalLMPreprocessor(tokenizer, sequence_length=64)
    keras_hub.models.LlamaCausalLM(backbone, preprocessor).save_to_preset(directory)
    return directory


PRESETS = {"gpt2": gpt2_preset, "llama": llama_preset}


def build_presets(directory):
    """{family: preset directory} of every tiny preset, built under `directory`."""
    return {name: build(os.path.join(directory, name)) for name, build in PRESETS.items()}


WORDS = "the quick brown fox jumps over lazy dog a cat sat on mat then ran hello world this is text".split()


def write_corpus(path, lines=1500, seed=0):
    """A file of random 12-word sentences over WORDS; returns its path."""
    rng = random.Random(seed)
    with open(path, "w") as f:
        f.write("\n".join(" ".join(rng.choice(WORDS) for _ in range(12)) for _ in range(lines)))
    return path


def preset_config(preset, corpus, **train):
    """A run fine-tuning `preset` on the text file `corpus`: 24 steps, evaluated every 6 on 2 batches."""
    from tflm.config import Config, updated

    return updated(Config(), model={"preset": preset}, data={"source": "files", "paths": [corpus], "seq_len": 32},
                   train={"steps": 24, "eval_every": 6, "eval_batches": 2, "global_batch_size": 8, "warmup_steps": 4,
                          **train})

"""The text a run learns from, up to the batches it trains on: where the text comes from
(`sources.py`: the embedded corpus, files, TFDS), labelled text for classifiers (`labelled.py`),
the tokenizers (`tokenizers/`: one interface, one module per kind: char, byte, wordpiece,
sentencepiece), the token store a corpus is tokenized into once (`store.py`) and how it is prepared
(`prepare.py`, text files read in chunks by `chunks.py`; on Apache Beam's workers: `beam.py`), and the tf.distribute input pipelines over the store (`pipeline.py`) and over
labelled examples (`examples.py`). A new tokenizer is a module tokenizers/<kind>.py and its name
among config.py's `data.tokenizer` choices. Importing this package loads no TensorFlow.
"""

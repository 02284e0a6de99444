"""Input pipelines: text -> character ids -> windows of seq_len + 1 -> shuffled, sharded batches.

Training windows are a deterministic function of (corpus, seed, step): the shuffle is seeded, the
data are sharded explicitly (never with AUTO), and a resumed run skips the windows it already
trained on. So a resumed or multi-worker run sees exactly the windows a single uninterrupted run
would, which is what the equivalence and resume tests check.
"""

import dataclasses

import tensorflow as tf

from tflm.errors import TflmError
from tflm.sources import make_source
from tflm.tokenizer import CharTokenizer, count_characters


@dataclasses.dataclass
class Corpus:
    """A text source with its tokenizer and the size of each split in tokens."""

    source: object
    tokenizer: CharTokenizer
    train_tokens: int
    validation_tokens: int


def load_corpus(data_config, tokenizer=None):
    """Scan the source once: learn the vocabulary (unless given) and count tokens per split."""
    source = make_source(data_config)
    counts = count_characters(source.iter_texts("train"))
    if tokenizer is None:
        if not counts:
            raise TflmError("the training split is empty")
        tokenizer = CharTokenizer.from_counts(counts, data_config["max_vocab_size"])
    validation_tokens = sum(len(text) for text in source.iter_texts("validation"))
    return Corpus(source, tokenizer, sum(counts.values()), validation_tokens)


def check_corpus_fits(corpus, seq_len, global_batch_size):
    """Raise if the splits are too small for one window, or validation for one global batch."""
    window = seq_len + 1
    if corpus.train_tokens < window:
        raise TflmError(
            f"data.seq_len={seq_len} is larger than the training split ({corpus.train_tokens} tokens)"
        )
    if corpus.validation_tokens // window < global_batch_size:
        raise TflmError(
            f"the validation split has {corpus.validation_tokens // window} windows of "
            f"seq_len+1={window} tokens, fewer than train.global_batch_size={global_batch_size}"
        )


def shard_policy(config, num_workers, num_files):
    """'file' or 'data': by file when every worker gets at least one file, unless configured."""
    policy = config["data"]["shard_policy"]
    if policy == "auto":
        policy = "file" if num_files >= num_workers > 1 else "data"
    if policy == "file" and num_files < num_workers:
        raise TflmError(f"data.shard_policy=file needs at least {num_workers} files, found {num_files}")
    return policy


def token_windows(texts, tokenizer, seq_len):
    """Dataset of strings -> one stream of ids -> int32 windows of seq_len + 1."""
    ids = texts.map(tokenizer.tokenize, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ids.unbatch().batch(seq_len + 1, drop_remainder=True)


def to_inputs_and_targets(windows):
    """[batch, seq_len + 1] -> (inputs, next-token targets), each [batch, seq_len]."""
    return windows[:, :-1], windows[:, 1:]


def _finish(windows, per_replica_batch):
    dataset = windows.batch(per_replica_batch, drop_remainder=True).map(to_inputs_and_targets)
    options = tf.data.Options()
    options.deterministic = True
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return dataset.with_options(options).prefetch(tf.data.AUTOTUNE)


def train_dataset_fn(corpus, config, start_step=0):
    """A `distribute_datasets_from_function` input fn for training, starting at `start_step`."""
    seq_len, global_batch = config["data"]["seq_len"], config["train"]["global_batch_size"]

    def dataset_fn(input_context):
        pipelines, index = input_context.num_input_pipelines, input_context.input_pipeline_id
        per_replica = input_context.get_per_replica_batch_size(global_batch)
        policy = shard_policy(config, pipelines, len(corpus.source.files))
        files = corpus.source.files[index::pipelines] if policy == "file" else None
        windows = token_windows(corpus.source.texts("train", files), corpus.tokenizer, seq_len)
        windows = windows.shuffle(
            config["data"]["shuffle_buffer"], seed=config["train"]["seed"], reshuffle_each_iteration=True
        ).repeat()
        if policy == "data" and pipelines > 1:
            windows = windows.shard(pipelines, index)
        windows_per_step = global_batch // pipelines
        return _finish(windows.skip(start_step * windows_per_step), per_replica)

    return dataset_fn


def eval_batches_per_pass(corpus, config):
    """How many global batches one evaluation runs (all full batches unless train.eval_batches)."""
    available = corpus.validation_tokens // (config["data"]["seq_len"] + 1) // config["train"]["global_batch_size"]
    wanted = config["train"]["eval_batches"]
    return min(wanted, available) if wanted else available


def eval_dataset_fn(corpus, config):
    """Input fn for validation: the same windows, in order, every pass (repeats forever)."""
    seq_len, global_batch = config["data"]["seq_len"], config["train"]["global_batch_size"]
    batches = eval_batches_per_pass(corpus, config)

    def dataset_fn(input_context):
        pipelines, index = input_context.num_input_pipelines, input_context.input_pipeline_id
        per_replica = input_context.get_per_replica_batch_size(global_batch)
        windows = token_windows(corpus.source.texts("validation"), corpus.tokenizer, seq_len)
        windows = windows.shard(pipelines, index).take(batches * global_batch // pipelines)
        return _finish(windows.cache().repeat(), per_replica)

    return dataset_fn

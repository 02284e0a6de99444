"""Input pipelines: text -> character ids -> windows of seq_len + 1 -> shuffled, sharded batches.

Training windows are a deterministic function of (corpus, seed, step): the shuffle is seeded, the
data are sharded explicitly (never with AUTO), and a resumed run skips the windows it already
trained on. So a resumed or multi-worker run sees exactly the windows a single uninterrupted run
would, which is what the equivalence and resume tests check.
"""

import collections
import dataclasses

from tflm.errors import TflmError
from tflm.lazy import tf
from tflm.sources import make_source
from tflm.tokenizer import CharTokenizer, count_characters


@dataclasses.dataclass
class Corpus:
    """A text source with its tokenizer and the tokens of each split (per file for file sources,
    since windows are formed within files)."""

    source: object
    tokenizer: CharTokenizer
    token_counts: dict  # split -> [tokens per file] (one entry for a single-stream source)

    def tokens(self, split):
        """Tokens in a split."""
        return sum(self.token_counts[split])

    def windows(self, split, seq_len):
        """Windows of seq_len + 1 tokens in one epoch of a split."""
        return sum(n // (seq_len + 1) for n in self.token_counts[split])


def load_corpus(data_config, tokenizer=None):
    """Scan the source once: count characters per file and split, learn the vocabulary from
    the training counts (unless a tokenizer is given)."""
    source = make_source(data_config)
    units = source.files or [None]  # per file, or the whole stream

    def texts(split, unit):
        return source.iter_texts(split) if unit is None else source.iter_file_texts(unit, split)

    train_counts = [count_characters(texts("train", unit)) for unit in units]
    token_counts = {"train": [sum(c.values()) for c in train_counts],
                    "validation": [sum(len(t) for t in texts("validation", unit)) for unit in units]}
    if tokenizer is None:
        counts = sum(train_counts, collections.Counter())
        if not counts:
            raise TflmError("the training split is empty")
        tokenizer = CharTokenizer.from_counts(counts, data_config.max_vocab_size)
    return Corpus(source, tokenizer, token_counts)


def check_corpus_fits(corpus, seq_len, global_batch_size):
    """Raise if training has no window, or validation too few for one global batch."""
    window = seq_len + 1
    if corpus.windows("train", seq_len) == 0:
        raise TflmError(f"data.seq_len={seq_len} is larger than the training split "
                        f"({corpus.tokens('train')} tokens)")
    if corpus.windows("validation", seq_len) < global_batch_size:
        raise TflmError(
            f"the validation split has {corpus.windows('validation', seq_len)} windows of "
            f"seq_len+1={window} tokens, fewer than train.global_batch_size={global_batch_size}"
        )


def shard_policy(config, num_workers, num_files):
    """'file' or 'data': by file when every worker gets at least one file, unless configured."""
    policy = config.data.shard_policy
    if policy == "auto":
        policy = "file" if num_files >= num_workers > 1 else "data"
    if policy == "file" and num_files < num_workers:
        raise TflmError(f"data.shard_policy=file needs at least {num_workers} files, found {num_files}")
    return policy


def token_windows(texts, tokenizer, seq_len):
    """Dataset of strings -> one stream of ids -> int32 windows of seq_len + 1."""
    ids = texts.map(tokenizer.tokenize, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ids.unbatch().batch(seq_len + 1, drop_remainder=True)


def split_windows(source, split, tokenizer, seq_len, files=None):
    """Windows of one split; for file sources, formed within each file, file after file, so the
    set of windows is the same however the files are sharded."""
    if not source.files:
        return token_windows(source.texts(split), tokenizer, seq_len)
    paths = tf.data.Dataset.from_tensor_slices(list(source.files if files is None else files))
    return paths.interleave(lambda path: token_windows(source.file_texts(path, split), tokenizer, seq_len),
                            cycle_length=1)


def train_windows(corpus, config, pipelines=1, index=0, epochs=None):
    """This input pipeline's training windows: shuffled (seeded), repeated, sharded explicitly."""
    policy = shard_policy(config, pipelines, len(corpus.source.files))
    files = corpus.source.files[index::pipelines] if policy == "file" else None
    windows = split_windows(corpus.source, "train", corpus.tokenizer, config.data.seq_len, files)
    windows = windows.shuffle(
        config.data.shuffle_buffer, seed=config.train.seed, reshuffle_each_iteration=True
    ).repeat(epochs)
    return windows.shard(pipelines, index) if policy == "data" and pipelines > 1 else windows


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
    global_batch = config.train.global_batch_size

    def dataset_fn(input_context):
        pipelines, index = input_context.num_input_pipelines, input_context.input_pipeline_id
        windows = train_windows(corpus, config, pipelines, index)
        windows_per_step = global_batch // pipelines
        return _finish(windows.skip(start_step * windows_per_step),
                       input_context.get_per_replica_batch_size(global_batch))

    return dataset_fn


def eval_batches_per_pass(corpus, config):
    """How many global batches one evaluation runs (all full batches unless train.eval_batches)."""
    available = corpus.windows("validation", config.data.seq_len) // config.train.global_batch_size
    wanted = config.train.eval_batches
    return min(wanted, available) if wanted else available


def eval_dataset_fn(corpus, config):
    """Input fn for validation: the same windows, in order, every pass (repeats forever)."""
    seq_len, global_batch = config.data.seq_len, config.train.global_batch_size
    batches = eval_batches_per_pass(corpus, config)

    def dataset_fn(input_context):
        pipelines, index = input_context.num_input_pipelines, input_context.input_pipeline_id
        per_replica = input_context.get_per_replica_batch_size(global_batch)
        windows = split_windows(corpus.source, "validation", corpus.tokenizer, seq_len)
        windows = windows.shard(pipelines, index).take(batches * global_batch // pipelines)
        return _finish(windows.cache().repeat(), per_replica)

    return dataset_fn

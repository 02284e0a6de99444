"""The language-model task: next-token prediction on a token store.

Loss: the next-token cross-entropy summed over the replica's tokens and divided by the global
batch's token count, so that summing gradients over replicas gives the gradient of the
global-batch mean. Metrics: loss (nats/token), accuracy, perplexity and bits per byte, from
four sums per batch [loss, correct, tokens, UTF-8 bytes of the targets]. Bits per byte
compares tokenizers: the summed loss in bits over the bytes those targets decode to.

Data: the chief opens the run's token store (data.store, or RUN_DIR/store) or prepares it, and
creates a new run directory once the data are known good; the other workers wait at a barrier.
Its runs score, generate and serve next-token logits, and can start other runs (train.init_from).
"""

import math
import os

from tflm.atomic import is_local
from tflm.data.pipeline import check_fits, eval_batches_per_pass, eval_dataset_fn, train_dataset_fn
from tflm.data.prepare import StoreExists, check_store_matches, prepare_store
from tflm.data.store import TokenStore
from tflm.data.tokenizers import load_tokenizer
from tflm.lazy import tf
from tflm.models.build import new_model
from tflm.presets import check_recorded_preset
from tflm.runs import run_dir as runs
from tflm.runs.fingerprints import check_recorded_tokenizer
from tflm.tasks.base import Task as BaseTask
from tflm.tasks.base import new_run_records, starting_tokenizer
from tflm.training.strategy import wait_for_every_worker


class Task(BaseTask):
    """A language model on the token store."""

    type = "lm"
    unit = "tokens"
    serves = ("score", "generate")
    signatures = {"serving_default": "logits", "score": "score", "generate": "generate"}
    makes_language_model = True
    what_it_is = "a language model (task.type: lm), not a classifier; use tflm.score or tflm.generate"
    metric_size = 4  # loss, correct, tokens, bytes

    def __init__(self, config):
        super().__init__(config)
        self.store = None
        self.byte_lengths = None  # UTF-8 bytes each token id decodes to (the tokenizer's; None: one each)

    def open_data(self, run_dir, worker, strategy, resuming, source):
        """The token store (prepared if need be) and its tokenizer."""
        self.store, self.tokenizer = open_data(self.config, run_dir, worker, strategy, resuming, source)
        self.byte_lengths = self.tokenizer.byte_lengths()

    @property
    def units_per_step(self):
        """Tokens in one global batch."""
        return self.config.train.global_batch_size * self.config.data.seq_len

    def datasets(self, step):
        """Windows of the store: training ones from `step` on, and a fixed validation pass."""
        store, seq_len, train = self.store, self.config.data.seq_len, self.config.train
        batches = eval_batches_per_pass(store, seq_len, train.global_batch_size, train.eval_batches, train.eval_every)
        return (train_dataset_fn(store, seq_len, train.global_batch_size, train.seed, step),
                eval_dataset_fn(store, seq_len, train.global_batch_size, batches), batches)

    def new_model(self, vocabulary_size, seed=0):
        """The configured language model (tflm.models)."""
        return new_model(self.config.model, vocabulary_size, self.config.data.seq_len, seed, self.config.train.lora_rank)

    def loss_and_sums(self, targets, logits):
        """(summed cross-entropy / global-batch tokens, [loss sum, correct, tokens, target bytes])."""
        loss_sum, correct = token_loss_and_accuracy(targets, logits)
        byte_lengths = None if self.byte_lengths is None else tf.constant(self.byte_lengths, tf.int32)
        return loss_sum / float(self.units_per_step), metric_sums(loss_sum, correct, targets, byte_lengths)

    def summarize(self, sums):
        """Mean loss (nats/token), accuracy, perplexity and bits per byte."""
        return token_metrics(*(float(x) for x in sums))

    def history_fields(self, train, val):
        """Loss and accuracy of both splits, validation perplexity, and bits per byte of both."""
        return {"loss": train["loss"], "accuracy": train["accuracy"], "val_loss": val["loss"],
                "val_accuracy": val["accuracy"], "val_perplexity": val["perplexity"],
                "bits_per_byte": train["bits_per_byte"], "val_bits_per_byte": val["bits_per_byte"]}

    def log_text(self, record):
        """Loss, accuracy, perplexity and bits per byte as the progress line shows them."""
        return (f"loss {record['loss']:.4f}  acc {record['accuracy']:.3f}  val_loss {record['val_loss']:.4f}  "
                f"val_acc {record['val_accuracy']:.3f}  val_ppl {record['val_perplexity']:.2f}  "
                f"val_bpb {record['val_bits_per_byte']:.3f}")


def token_metrics(loss_sum, correct, tokens, target_bytes):
    """{loss (nats/token), accuracy, perplexity, bits_per_byte} from a period's sums."""
    loss = loss_sum / max(tokens, 1.0)
    return {"loss": loss, "accuracy": correct / max(tokens, 1.0), "perplexity": math.exp(min(loss, 50.0)),
            "bits_per_byte": loss_sum / math.log(2) / max(target_bytes, 1.0)}


def token_loss_and_accuracy(targets, logits):
    """Summed next-token cross-entropy and number of correct argmax predictions."""
    losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=targets, logits=tf.cast(logits, tf.float32))
    correct = tf.cast(tf.equal(tf.argmax(logits, axis=-1, output_type=tf.int32), targets), tf.float32)
    return tf.reduce_sum(losses), tf.reduce_sum(correct)


def metric_sums(loss_sum, correct, targets, byte_lengths=None):
    """[loss sum, correct, tokens, UTF-8 bytes the targets decode to] of one batch (without
    `byte_lengths`, each token id's bytes, every token counts as one byte)."""
    tokens = tf.cast(tf.size(targets), tf.float32)
    target_bytes = tokens if byte_lengths is None else tf.reduce_sum(tf.cast(tf.gather(byte_lengths, targets),
                                                                               tf.float32))
    return tf.stack([loss_sum, correct, tokens, target_bytes])


def open_data(config, run_dir, worker, strategy, resuming, source=None):
    """(token store, tokenizer) of the run. The chief opens the store, or prepares it (no
    deadline: a large corpus takes long), and creates a new run directory once the data are
    known good; the other workers wait for it at a barrier without deadline, then open it."""
    path = config.data.store or os.path.join(run_dir, "store")
    if worker.is_chief:
        store = chief_store(config, run_dir, path, resuming, source)
        check_fits(store, config.data.seq_len, config.train.global_batch_size)
        if not resuming:
            create_run_dir(config, run_dir, store, path, new_run_records(config, source) or None)
    if worker.num_workers > 1:
        wait_for_every_worker(strategy)
    store = TokenStore.open(path)
    check_fits(store, config.data.seq_len, config.train.global_batch_size)
    return store, load_tokenizer(os.path.join(path, "tokenizer"))


def chief_store(config, run_dir, path, resuming, source=None):
    """The store at `path`, checked against the config (and the run's tokenizer when resuming, or
    the source run's when starting from one), or a new one: prepared in place, or, for a new
    run's own store, in the run directory's reservation (tflm.runs.run_dir.reserve)."""
    run_tokenizer = runs.load_tokenizer(run_dir) if resuming else starting_tokenizer(config, source)
    if resuming:
        check_recorded_tokenizer(run_dir, config, run_tokenizer)  # names the swapped files, unlike the store's check
        check_recorded_preset(run_dir, config.model.preset)
    if not TokenStore.exists(path):
        # A new local run's own store is prepared in its reservation, which becomes the run directory
        # when it is created, so the directory appears whole; elsewhere (no atomic rename) in place.
        beside = path == os.path.join(run_dir, "store") and not runs.is_run_dir(run_dir) and is_local(run_dir)
        try:
            return prepare_store(config.data, os.path.join(runs.reservation_path(run_dir), "store") if beside
                                 else path, run_tokenizer, wait=True)
        except StoreExists:
            pass  # another process prepared this shared store while this one waited: check it as any other
    store = TokenStore.open(path)
    check_store_matches(store, config.data, run_tokenizer)
    if resuming:
        # Resuming stays O(1) in the store's size: every shard's size and the validation split's
        # checksums now, the training shards' checksums while training resumes, before the first
        # history record or checkpoint is written (a damaged shard stops the run there, exit 2).
        store.verify(checksums=False)
        store.verify(("validation",))
        runs.check_before_writing(run_dir, store.verify_in_background(("train",)))
    else:
        store.verify()  # once, before a run starts on a store
    return store


def create_run_dir(config, run_dir, store, path, extra_files=None):
    """A new run's directory with its config and tokenizer (and `extra_files`), and its store
    moved in if it has one of its own (prepared beside it)."""
    tokenizer = load_tokenizer(os.path.join(store.path, "tokenizer"))
    own_store = store.path if store.path != path else None
    if runs.is_run_dir(run_dir):  # a directory that never trained: it takes the new config
        runs.replace_config(run_dir, config, tokenizer, extra_files)
    else:
        runs.create(run_dir, config, tokenizer, own_store, extra_files)

"""What every task offers the shared training loop and the serving code (tflm.tasks.lm and
tflm.tasks.classify subclass it). A task's metrics are sums over a period (one float64 vector,
so replicas reduce them in one all-reduce), turned into named values by `summarize`; every
name `history_fields` returns is written to history.jsonl and TensorBoard, so a new metric is
one edit in its task. Loads no TensorFlow until a method needs it.
"""

from tflm.errors import TflmError
from tflm.lazy import tf
from tflm.models.build import built


def starting_tokenizer(config, source=None):
    """The tokenizer a new run starts with when it is not learned: the source run's
    (train.init_from), or the preset's (model.preset); None: learn one."""
    if source:
        return source.tokenizer()
    if config.model.preset:
        from tflm.data.tokenizers.preset import PresetTokenizer
        from tflm.presets import open_preset

        return PresetTokenizer.from_preset(open_preset(config.model.preset))
    return None


def new_run_records(config, source=None):
    """{file name: text} a new run directory records beside its config: the run it started from
    (init_from.json) and the preset it fine-tunes (preset.json)."""
    from tflm.presets import PRESET_FILE, preset_record
    from tflm.runs.init_from import RECORD_FILE

    return {**({RECORD_FILE: source.record()} if source else {}),
            **({PRESET_FILE: preset_record(config.model.preset)} if config.model.preset else {})}


class Task:
    """The parts of training and serving that depend on what is learned."""

    type = None  # config task.type
    unit = "tokens"  # what a step's global batch is counted in (history: <unit>_seen, <unit>_per_sec)
    unit_shown = "tok"  # ... as progress lines abbreviate it
    serves = ()  # what its runs answer: "score", "generate", "classify"
    signatures = {}  # {exported signature name: kind} (tflm.serving.export)
    makes_language_model = False  # whether its runs can start others (train.init_from)
    what_it_is = ""  # "a language model (task.type: lm), not a classifier; use ...": why it cannot serve

    def __init__(self, config):
        self.config = config
        self.tokenizer = None
        self.labels = ()  # a classifier's label names, in id order

    @classmethod
    def check_config(cls, config):
        """Raise a TflmError for settings this task cannot train with (config.validate calls it)."""

    def check_serves(self, what, run_dir):
        """Raise a TflmError unless runs of this task can do `what` ("score", "generate", "classify")."""
        if what not in self.serves:
            raise TflmError(f"{run_dir} is {self.what_it_is}")

    # --- training --------------------------------------------------------------------------

    def open_data(self, run_dir, worker, strategy, resuming, source):
        """Read (or prepare) the run's data and tokenizer; the chief creates a new run directory."""
        raise NotImplementedError

    @property
    def units_per_step(self):
        """Units (tokens, examples) in one global batch."""
        raise NotImplementedError

    def datasets(self, step):
        """(training input fn from `step` on, validation input fn, validation batches per evaluation)."""
        raise NotImplementedError

    def new_model(self, vocabulary_size, seed=0):
        """The task's model, not built yet (its weights are made where it is first called)."""
        raise NotImplementedError

    def build_model(self, vocabulary_size, seed=0):
        """The task's model with fresh weights, built on a dummy batch."""
        return built(self.new_model(vocabulary_size, seed), self.config.data.seq_len)

    def language_model(self, model):
        """The language model inside `model` (what train.init_from restores into)."""
        return model

    def phases(self, step, steps):
        """[(phase, steps)]: which part of the model the next `steps` steps from `step` train."""
        return [("all", steps)]

    def trained_variables(self, model, phase):
        """The variables a step of `phase` updates."""
        return model.trainable_variables

    metric_size = 0  # length of the metric sums vector

    def loss_and_sums(self, targets, logits):
        """(this replica's share of the global-batch loss, the batch's metric sums [metric_size])."""
        raise NotImplementedError

    def summarize(self, sums):
        """The named metrics of a period's summed values (numpy float64 [metric_size])."""
        raise NotImplementedError

    def history_fields(self, train, val):
        """The metrics of an evaluation's history record, in order."""
        raise NotImplementedError

    def log_text(self, record):
        """An evaluation's metrics as the progress line shows them."""
        raise NotImplementedError

    # --- serving ---------------------------------------------------------------------------

    def load_for_inference(self, run_dir):
        """Read what the task keeps in a run directory besides the config and tokenizer."""


class SummedMetrics:
    """A period's metric sums: a plain float64 variable updated with values already reduced over
    replicas (Keras metrics' cross-replica reduction is what fails under
    MultiWorkerMirroredStrategy); `summarize` names them."""

    def __init__(self, size, summarize):
        self.summarize = summarize
        self.sums = tf.Variable(tf.zeros([size], tf.float64), trainable=False)

    def update(self, sums):
        """Add one global batch's sums (one tensor: one all-reduce)."""
        self.sums.assign_add(tf.cast(sums, tf.float64))

    def result(self):
        """The named metrics of the sums so far."""
        return self.summarize(self.sums.numpy())

    def reset(self):
        """Start a new period."""
        self.sums.assign(tf.zeros_like(self.sums))

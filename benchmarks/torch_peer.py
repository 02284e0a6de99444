"""tflm's models, loss, optimizer and training data, written again in plain PyTorch: a peer to time tflm against.

What is the same as tflm (`--check` compares it with tflm itself):
- Models (tflm/models/): the pre-LN GPT Transformer (token + learned position embeddings; per
  block x + Attention(LN(x)), x + FF(LN(x)) with exact GELU; final LayerNorm, dense head; LayerNorm
  epsilon 1e-5; causal attention through `F.scaled_dot_product_attention`), and the LSTM
  (embedding, then per layer dropout shared over time and one `nn.LSTM` layer, then dropout and a
  dense head). Sizes come from tflm's own config (`tflm.config`, which does not import TensorFlow).
  Keras's LSTM has one bias per layer, PyTorch's two: `bias_hh` is kept at zero and frozen, so the
  trainable parameters and the function are Keras's. Initialisers follow Keras's (Glorot uniform,
  uniform +-0.05 embeddings, orthogonal recurrent kernels, forget-gate bias 1).
- Loss: mean next-token cross-entropy over the global batch (tflm: sum / global tokens).
- Optimizer: torch.optim.AdamW, betas (0.9, 0.99), epsilon 1e-7 (Keras's default), weight decay
  on matrices and embeddings only (Keras: not on variables named bias, gamma, beta), gradients
  clipped to global norm train.clip_norm, learning rate from `keras_learning_rate` (Keras's
  CosineDecay with linear warmup from 0, as tflm.training.optimizer.make_optimizer builds it). One
  difference: Keras adds epsilon to sqrt(v) before the bias correction ("epsilon hat"), PyTorch
  after it, i.e. Keras's epsilon is PyTorch's times sqrt(1 - beta_2^t); it changes no timing.
- Precision: runtime.precision as `torch.autocast` runs it (mixed_bfloat16: bf16 autocast on the
  CPU or GPU; mixed_float16: fp16 autocast with a GradScaler; auto: bf16 where the CPU has AMX or
  AVX512-BF16 or the GPU has bf16), weights in fp32 as tflm keeps them. On a GPU when there is one.
- Data: the default corpus (`pydoc_data.topics`, every 10th topic held out), tflm's vocabulary
  (ids 0 padding, 1 out-of-vocabulary, then characters by falling frequency), windows of
  seq_len + 1 cut from the concatenated training topics, as tflm.data.pipeline cuts them. Only the order
  differs: a seeded full permutation per epoch instead of tf.data's 10,000-window shuffle buffer.

    python benchmarks/torch_peer.py --check                                  # compare with tflm
    python benchmarks/torch_peer.py --run-dir /tmp/peer                      # a whole default run
    python benchmarks/torch_peer.py --config configs/char_lstm.yaml --set train.steps=100 --run-dir /tmp/peer-lstm

A run writes RUN_DIR/history.jsonl (tflm's keys: step, tokens_seen, elapsed_s, loss, accuracy,
val_loss, val_accuracy, val_perplexity, tokens_per_sec) and RUN_DIR/checkpoint.pt (model,
optimizer and schedule, replaced at every evaluation, as tflm checkpoints at every evaluation).
Benchmark-only: needs `pip install -r benchmarks/requirements.txt`; tflm itself never imports torch.
"""

import argparse
import collections
import json
import math
import os
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout's tflm

from tflm.config import load_config  # noqa: E402  (pure Python: no TensorFlow)

BETAS = (0.9, 0.99)  # tflm.training.optimizer.make_optimizer: Keras's beta_1, and beta_2=0.99
EPSILON = 1e-7  # keras.optimizers.AdamW's default epsilon (PyTorch's default is 1e-8)
LAYER_NORM_EPSILON = 1e-5  # tflm.models
EMBEDDING_INIT = 0.05  # keras "uniform" initializer: U(-0.05, 0.05)
PAD_ID, OOV_ID = 0, 1  # tflm.data.tokenizers
AUTOCAST = {"mixed_bfloat16": torch.bfloat16, "mixed_float16": torch.float16}  # runtime.precision -> autocast


# ----------------------------------------------------------------------------- data


def default_corpus(validation_fraction):
    """{"train": [...], "validation": [...]} topics of the Python manual, split as tflm.data.sources.DefaultCorpus."""
    from pydoc_data.topics import topics

    period = max(2, round(1 / validation_fraction))
    names = sorted(topics)
    return {"train": [topics[n] for i, n in enumerate(names) if i % period != period - 1],
            "validation": [topics[n] for i, n in enumerate(names) if i % period == period - 1]}


def vocabulary(train_texts, max_vocab_size):
    """The most frequent characters, ties broken by character, as tflm.data.tokenizers.CharTokenizer.from_counts."""
    counts = collections.Counter()
    for text in train_texts:
        counts.update(text)
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return [char for char, _ in ranked[: max(1, max_vocab_size - 2)]]


def windows(texts, characters, seq_len):
    """int64 [n, seq_len + 1]: the texts' ids as one stream, cut into windows (the remainder dropped)."""
    ids_of = {char: i + 2 for i, char in enumerate(characters)}
    ids = np.fromiter((ids_of.get(char, OOV_ID) for text in texts for char in text), dtype=np.int64)
    count = len(ids) // (seq_len + 1)
    return ids[: count * (seq_len + 1)].reshape(count, seq_len + 1)


def load_data(data_config):
    """(characters, training windows, validation windows) of the default corpus."""
    if data_config.source != "default":
        raise SystemExit("torch_peer: only data.source=default is implemented")
    texts = default_corpus(data_config.validation_fraction)
    characters = vocabulary(texts["train"], data_config.vocab_size)
    return (characters, windows(texts["train"], characters, data_config.seq_len),
            windows(texts["validation"], characters, data_config.seq_len))


def training_batches(train_windows, batch_size, seed):
    """Endless (inputs, targets) batches: a seeded permutation of the windows per epoch."""
    rng = np.random.default_rng(seed)
    while True:
        order = rng.permutation(len(train_windows))
        for start in range(0, len(order) - batch_size + 1, batch_size):
            batch = torch.from_numpy(train_windows[order[start:start + batch_size]])
            yield batch[:, :-1], batch[:, 1:]


def validation_batches(validation_windows, batch_size, eval_batches):
    """The first `eval_batches` batches of validation windows in order (0: every full batch), as tflm evaluates."""
    available = len(validation_windows) // batch_size
    count = min(eval_batches, available) if eval_batches else available
    return [(torch.from_numpy(validation_windows[i * batch_size:(i + 1) * batch_size, :-1]),
             torch.from_numpy(validation_windows[i * batch_size:(i + 1) * batch_size, 1:])) for i in range(count)]


# ----------------------------------------------------------------------------- models


def glorot_(weight, fan_in, fan_out):
    """Keras's glorot_uniform in place: U(-limit, limit), limit = sqrt(6 / (fan_in + fan_out))."""
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    with torch.no_grad():
        weight.uniform_(-limit, limit)


def dense(in_features, out_features):
    """nn.Linear initialised as keras.layers.Dense (Glorot uniform kernel, zero bias)."""
    layer = nn.Linear(in_features, out_features)
    glorot_(layer.weight, in_features, out_features)
    nn.init.zeros_(layer.bias)
    return layer


def embedding(rows, dim):
    """nn.Embedding initialised as keras.layers.Embedding (U(-0.05, 0.05))."""
    layer = nn.Embedding(rows, dim)
    nn.init.uniform_(layer.weight, -EMBEDDING_INIT, EMBEDDING_INIT)
    return layer


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention: one fused q/k/v projection, SDPA, an output projection."""

    def __init__(self, embed_dim, num_heads, dropout):
        super().__init__()
        self.num_heads, self.dropout = num_heads, dropout
        self.qkv = dense(embed_dim, 3 * embed_dim)
        for part in self.qkv.weight.data.chunk(3):  # Keras: three EinsumDense kernels, each d x d
            glorot_(part, embed_dim, embed_dim)
        self.out = dense(embed_dim, embed_dim)

    def forward(self, x):
        """[batch, time, width] -> [batch, time, width]; position t attends to positions <= t."""
        batch, time_steps, width = x.shape
        q, k, v = self.qkv(x).view(batch, time_steps, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True)
        return self.out(y.transpose(1, 2).reshape(batch, time_steps, width))


class DecoderBlock(nn.Module):
    """x + Dropout(Attention(LN(x))), then x + Dropout(FF(LN(x))), FF = Dense(GELU) -> Dense."""

    def __init__(self, embed_dim, num_heads, ff_dim, dropout):
        super().__init__()
        self.dropout = dropout
        self.attention_norm = nn.LayerNorm(embed_dim, eps=LAYER_NORM_EPSILON)
        self.attention = CausalSelfAttention(embed_dim, num_heads, dropout)
        self.feedforward_norm = nn.LayerNorm(embed_dim, eps=LAYER_NORM_EPSILON)
        self.feedforward_in = dense(embed_dim, ff_dim)
        self.feedforward_out = dense(ff_dim, embed_dim)

    def forward(self, x):
        """The block over a whole sequence."""
        x = x + F.dropout(self.attention(self.attention_norm(x)), self.dropout, self.training)
        y = self.feedforward_out(F.gelu(self.feedforward_in(self.feedforward_norm(x))))  # exact GELU, as Keras's
        return x + F.dropout(y, self.dropout, self.training)


class TransformerLM(nn.Module):
    """Token + learned position embeddings -> N x DecoderBlock -> LayerNorm -> Dense over the vocabulary."""

    def __init__(self, vocabulary_size, seq_len, embed_dim, num_layers, num_heads, ff_dim, dropout):
        super().__init__()
        self.token_embedding = embedding(vocabulary_size, embed_dim)
        self.position_embedding = embedding(seq_len, embed_dim)
        self.blocks = nn.ModuleList(DecoderBlock(embed_dim, num_heads, ff_dim, dropout) for _ in range(num_layers))
        self.final_norm = nn.LayerNorm(embed_dim, eps=LAYER_NORM_EPSILON)
        self.head = dense(embed_dim, vocabulary_size)

    def forward(self, token_ids):
        """Logits [batch, time, vocabulary] for token ids [batch, time]."""
        positions = torch.arange(token_ids.shape[1], device=token_ids.device)
        x = self.token_embedding(token_ids) + self.position_embedding(positions)
        for block in self.blocks:
            x = block(x)
        return self.head(self.final_norm(x))


def time_shared_dropout(x, rate, training):
    """Dropout of [batch, time, features] with one mask per example for all time steps (tflm: shared_axes=(1,))."""
    if not training or rate == 0:
        return x
    keep = torch.empty(x.shape[0], 1, x.shape[2], dtype=x.dtype, device=x.device).bernoulli_(1 - rate)
    return x * keep / (1 - rate)


def keras_lstm(input_size, units):
    """A one-layer nn.LSTM with Keras's parameters and initialisers; bias_hh stays 0 (Keras has one bias)."""
    lstm = nn.LSTM(input_size, units, batch_first=True)
    glorot_(lstm.weight_ih_l0, input_size, 4 * units)
    nn.init.orthogonal_(lstm.weight_hh_l0)
    with torch.no_grad():
        lstm.bias_ih_l0.zero_()
        lstm.bias_ih_l0[units:2 * units] = 1.0  # unit_forget_bias; gates are i, f, g, o in both
        lstm.bias_hh_l0.zero_()
    lstm.bias_hh_l0.requires_grad_(False)
    return lstm


class LstmLM(nn.Module):
    """Embedding -> N x (dropout shared over time, LSTM) -> dropout -> Dense over the vocabulary."""

    def __init__(self, vocabulary_size, embed_dim, num_layers, lstm_units, dropout):
        super().__init__()
        self.dropout = dropout
        self.embedding = embedding(vocabulary_size, embed_dim)
        self.lstms = nn.ModuleList(keras_lstm(embed_dim if i == 0 else lstm_units, lstm_units)
                                   for i in range(num_layers))
        self.head = dense(lstm_units, vocabulary_size)

    def forward(self, token_ids):
        """Logits [batch, time, vocabulary] for token ids [batch, time]."""
        x = self.embedding(token_ids)
        for lstm in self.lstms:
            x, _ = lstm(time_shared_dropout(x, self.dropout, self.training))
        return self.head(F.dropout(x, self.dropout, self.training))


def build_model(model_config, vocabulary_size, seq_len):
    """The model named by model.type with tflm's sizes (call torch.manual_seed first)."""
    m = model_config
    if m.type == "lstm":
        return LstmLM(vocabulary_size, m.embed_dim, m.num_layers, m.lstm_units, m.dropout)
    return TransformerLM(vocabulary_size, seq_len, m.embed_dim, m.num_layers, m.num_heads, m.ff_dim, m.dropout)


def trainable_parameters(model):
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# ----------------------------------------------------------------------------- optimizer


def keras_learning_rate(step, train_config):
    """keras.optimizers.schedules.CosineDecay(0, steps - warmup, alpha, warmup_target, warmup_steps)(step)."""
    t = train_config
    decay_steps = max(1, t.steps - t.warmup_steps)
    step = min(step, t.warmup_steps + decay_steps)
    if step < t.warmup_steps:
        return t.learning_rate * step / t.warmup_steps
    cosine = 0.5 * (1.0 + math.cos(math.pi * (step - t.warmup_steps) / decay_steps))
    return t.learning_rate * ((1 - t.min_learning_rate_ratio) * cosine + t.min_learning_rate_ratio)


def make_optimizer(model, train_config):
    """(AdamW with decay on matrices and embeddings only, LambdaLR following keras_learning_rate)."""
    t = train_config
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in trainable if p.ndim >= 2], "weight_decay": t.weight_decay},
              {"params": [p for p in trainable if p.ndim < 2], "weight_decay": 0.0}]  # biases, LayerNorms
    optimizer = torch.optim.AdamW(groups, lr=t.learning_rate, betas=BETAS, eps=EPSILON)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: keras_learning_rate(step, t) / t.learning_rate)
    return optimizer, schedule


# ----------------------------------------------------------------------------- training


class Peer:
    """A model, its optimizer and schedule, and the compiled-or-eager callable that runs it."""

    def __init__(self, config, vocabulary_size, compile_model=False):
        torch.manual_seed(config.train.seed)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = build_model(config.model, vocabulary_size, config.data.seq_len).to(self.device)
        self.optimizer, self.schedule = make_optimizer(self.model, config.train)
        self.forward = torch.compile(self.model) if compile_model else self.model
        self.clip_norm = config.train.clip_norm
        self.compute_dtype = AUTOCAST.get(resolved_precision(config.runtime.precision, self.device))
        self.scaler = torch.amp.GradScaler(self.device, enabled=self.compute_dtype == torch.float16)

    def train_step(self, inputs, targets):
        """One optimizer step; (summed loss, correct predictions) as tensors."""
        inputs, targets = inputs.to(self.device), targets.to(self.device)
        with torch.autocast(self.device, dtype=self.compute_dtype, enabled=self.compute_dtype is not None):
            logits = self.forward(inputs)
        loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())  # mean over the global batch
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.schedule.step()
        with torch.no_grad():
            return loss.detach() * targets.numel(), (logits.argmax(-1) == targets).sum()

    @torch.no_grad()
    def evaluate(self, batches):
        """Mean loss and accuracy over validation batches (dropout off)."""
        self.model.eval()
        loss_sum = correct = tokens = 0.0
        for inputs, targets in batches:
            inputs, targets = inputs.to(self.device), targets.to(self.device)
            with torch.autocast(self.device, dtype=self.compute_dtype, enabled=self.compute_dtype is not None):
                logits = self.forward(inputs).float()
            loss_sum += float(F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="sum"))
            correct += float((logits.argmax(-1) == targets).sum())
            tokens += targets.numel()
        self.model.train()
        return loss_sum / tokens, correct / tokens

    def save(self, path, step):
        """Model, optimizer and schedule to `path`, written aside and renamed into place."""
        torch.save({"step": step, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                    "schedule": self.schedule.state_dict()}, path + ".tmp")
        os.replace(path + ".tmp", path)


def train(config, run_dir, compile_model=False):
    """A whole run as `python -m tflm.train` does it: evaluations every train.eval_every steps and at the end."""
    t = config.train
    characters, train_windows, validation_windows = load_data(config.data)
    peer = Peer(config, len(characters) + 2, compile_model)
    batches = training_batches(train_windows, t.global_batch_size, t.seed)
    validation = validation_batches(validation_windows, t.global_batch_size, t.eval_batches)
    os.makedirs(run_dir, exist_ok=True)
    tokens_per_step = t.global_batch_size * config.data.seq_len
    start = period_start = time.perf_counter()
    period_sums, period_start_step = [], 0
    for step in range(1, t.steps + 1):
        period_sums.append(peer.train_step(*next(batches)))
        if step % t.eval_every == 0 or step == t.steps:
            loss = float(sum(s[0] for s in period_sums)) / (len(period_sums) * tokens_per_step)
            accuracy = float(sum(s[1] for s in period_sums)) / (len(period_sums) * tokens_per_step)
            train_time_s = time.perf_counter() - period_start
            val_loss, val_accuracy = peer.evaluate(validation)
            record = {"step": step, "tokens_seen": step * tokens_per_step,
                      "elapsed_s": round(time.perf_counter() - start, 3), "loss": loss, "accuracy": accuracy,
                      "val_loss": val_loss, "val_accuracy": val_accuracy,
                      "val_perplexity": math.exp(min(val_loss, 50.0)),
                      "tokens_per_sec": (step - period_start_step) * tokens_per_step / train_time_s}
            log_evaluation(run_dir, record, t.steps)
            peer.save(os.path.join(run_dir, "checkpoint.pt"), step)
            period_sums, period_start, period_start_step = [], time.perf_counter(), step
    return run_dir


def log_evaluation(run_dir, record, total_steps):
    """Print an evaluation as tflm does and append it to RUN_DIR/history.jsonl."""
    print(f"step {record['step']}/{total_steps}  loss {record['loss']:.4f}  acc {record['accuracy']:.3f}  "
          f"val_loss {record['val_loss']:.4f}  val_acc {record['val_accuracy']:.3f}  "
          f"val_ppl {record['val_perplexity']:.2f}  {record['tokens_per_sec']:.0f} tok/s", flush=True)
    with open(os.path.join(run_dir, "history.jsonl"), "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def time_training(config, warmup_steps, timed_steps, compile_model=False):
    """Steady-state speed: `timed_steps` training steps timed after `warmup_steps` untimed ones."""
    characters, train_windows, _ = load_data(config.data)
    peer = Peer(config, len(characters) + 2, compile_model)
    batches = training_batches(train_windows, config.train.global_batch_size, config.train.seed)
    for _ in range(warmup_steps):
        peer.train_step(*next(batches))
    start = time.perf_counter()
    for _ in range(timed_steps):
        peer.train_step(*next(batches))  # eager CPU ops are synchronous: the step is done when it returns
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "steps": timed_steps, "parameters": trainable_parameters(peer.model),
            "vocabulary_size": len(characters) + 2}


def resolved_precision(precision, device):
    """tflm's runtime.precision as PyTorch runs it: auto is bf16 where the device has it fast."""
    if precision != "auto":
        return precision
    if device == "cuda":
        return "mixed_bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    with open("/proc/cpuinfo", encoding="utf-8") as f:
        flags = f.read()
    return "mixed_bfloat16" if "amx_bf16" in flags or "avx512_bf16" in flags else "float32"


def matmul_flops_per_s(size, repeats=10, dtype=torch.float32):
    """Best FLOP/s of torch.matmul on two size x size matrices of `dtype` (2 size^3 FLOPs each)."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    out = torch.empty(size, size, dtype=dtype)
    torch.matmul(a, b, out=out)
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        torch.matmul(a, b, out=out)
        best = min(best, time.perf_counter() - start)
    return 2 * size ** 3 / best


def set_threads(threads):
    """Intra-op and inter-op threads of this process (0: PyTorch's defaults)."""
    if threads:
        torch.set_num_threads(threads)
        torch.set_num_interop_threads(threads)


# ----------------------------------------------------------------------------- --check


def check(config_paths):
    """Compare with tflm itself; print each comparison; return whether all agree."""
    # TensorFlow and tflm's model code: only for the check
    from tflm.data.pipeline import Windows
    from tflm.models.build import build_model as build_tflm_model
    from tflm.data.prepare import prepare_store
    from tflm.data.store import TokenStore
    from tflm.data.tokenizers import load_tokenizer
    from tflm.training.optimizer import make_optimizer as make_tflm_optimizer

    ok = True
    for path in config_paths:
        config = load_config(path)
        characters, train_windows, validation_windows = load_data(config.data)
        store_dir = os.path.join(tempfile.mkdtemp(prefix="torch-peer-check-"), "store")
        prepare_store(config.data, store_dir, log=lambda *_: None)
        store, tokenizer = TokenStore.open(store_dir), load_tokenizer(os.path.join(store_dir, "tokenizer"))
        tflm_model = build_tflm_model(config.model, tokenizer.vocabulary_size, config.data.seq_len)
        optimizer = make_tflm_optimizer(config.train)
        peer = Peer(config, len(characters) + 2)
        # Keras's own (private) test of which variables AdamW decays: the truth to compare with.
        decayed = count(v for v in tflm_model.trainable_variables if optimizer._use_weight_decay(v))
        peer_decayed = sum(p.numel() for p in peer.optimizer.param_groups[0]["params"])
        name = os.path.basename(path) if path else "default config"
        ok &= report(f"{name}: vocabulary", tokenizer.characters, characters,
                     f"{len(characters)} characters in the same order")
        # tflm's training windows must fit at every alignment shift, so it may have a few fewer.
        ok &= report(f"{name}: validation windows", Windows.of(store, "validation", config.data.seq_len).total,
                     len(validation_windows))
        ok &= report(f"{name}: trainable parameters", count(tflm_model.trainable_variables),
                     trainable_parameters(peer.model))
        ok &= report(f"{name}: parameters with weight decay", decayed, peer_decayed)
        ok &= report(f"{name}: AdamW (beta_1, beta_2, epsilon, weight decay)",
                     (optimizer.beta_1, optimizer.beta_2, optimizer.epsilon, optimizer.weight_decay),
                     (*BETAS, EPSILON, config.train.weight_decay))
        ok &= check_schedule(name, optimizer, config.train)
        ok &= check_logits(name, tflm_model, peer.model, validation_windows[:4, :-1])
    return ok


def count(variables):
    """Number of elements in Keras variables."""
    return sum(int(np.prod(v.shape)) for v in variables)


def report(what, tflm_value, peer_value, summary=None):
    """Print one comparison (`summary`, or both values); whether the values are equal."""
    same = tflm_value == peer_value
    text = summary or f"tflm {tflm_value}, PyTorch {peer_value}"
    print(f"{'ok  ' if same else 'FAIL'} {what}: {text}{'' if same else ' (differ)'}")
    return same


def check_schedule(name, optimizer, train_config):
    """keras_learning_rate against tflm's schedule at steps around warmup and the end."""
    t = train_config
    steps = sorted({0, 1, t.warmup_steps // 2, t.warmup_steps, t.warmup_steps + 1, t.steps // 2, t.steps - 1,
                    t.steps, t.steps + 100})
    worst = 0.0
    for step in steps:
        optimizer.iterations.assign(step)
        worst = max(worst, abs(float(optimizer.learning_rate) - keras_learning_rate(step, t)))
    optimizer.iterations.assign(0)
    ok = worst <= 1e-9 + 1e-6 * t.learning_rate
    print(f"{'ok  ' if ok else 'FAIL'} {name}: learning rate at steps {steps}: largest difference {worst:.2e}")
    return ok


def check_logits(name, tflm_model, peer_model, token_ids):
    """Copy tflm's weights into the PyTorch model; both must give the same logits (inference)."""
    copy_weights(tflm_model, peer_model)
    peer_model.eval()
    with torch.no_grad():
        peer_logits = peer_model(torch.from_numpy(token_ids)).numpy()
    tflm_logits = np.asarray(tflm_model(token_ids.astype(np.int32), training=False))
    scale = float(np.max(np.abs(tflm_logits)))
    difference = float(np.max(np.abs(peer_logits - tflm_logits))) / scale
    ok = difference < 1e-4
    print(f"{'ok  ' if ok else 'FAIL'} {name}: logits with tflm's weights: largest difference {difference:.2e} "
          f"of the largest logit ({scale:.3g})")
    return ok


def copy_weights(tflm_model, peer_model):
    """tflm (Keras) weights -> the PyTorch model of the same type."""
    def put(parameter, value):
        with torch.no_grad():
            parameter.copy_(torch.from_numpy(np.asarray(value)).reshape(parameter.shape))

    def dense_into(linear, layer):
        put(linear.weight, np.asarray(layer.kernel).reshape(-1, linear.weight.shape[0]).T)
        put(linear.bias, layer.bias)

    if isinstance(peer_model, LstmLM):
        put(peer_model.embedding.weight, tflm_model.embedding.embeddings)
        for lstm, keras_layer in zip(peer_model.lstms, tflm_model.lstm_layers):
            kernel, recurrent, bias = keras_layer.get_weights()
            put(lstm.weight_ih_l0, kernel.T)
            put(lstm.weight_hh_l0, recurrent.T)
            put(lstm.bias_ih_l0, bias)
        dense_into(peer_model.head, tflm_model.head)
        return
    put(peer_model.token_embedding.weight, tflm_model.embedding.token_embedding.embeddings)
    put(peer_model.position_embedding.weight, tflm_model.embedding.position_embedding.position_embeddings)
    for block, keras_block in zip(peer_model.blocks, tflm_model.blocks):
        attention = keras_block._self_attention_layer
        d = block.attention.out.weight.shape[0]
        projections = [getattr(attention, f"_{n}_dense") for n in ("query", "key", "value")]
        put(block.attention.qkv.weight, np.concatenate([np.asarray(p.kernel).reshape(d, d) for p in projections], 1).T)
        put(block.attention.qkv.bias, np.concatenate([np.asarray(p.bias).reshape(-1) for p in projections]))
        dense_into(block.attention.out, attention._output_dense)
        for norm, keras_norm in ((block.attention_norm, keras_block._self_attention_layer_norm),
                                 (block.feedforward_norm, keras_block._feedforward_layer_norm)):
            put(norm.weight, keras_norm.gamma)
            put(norm.bias, keras_norm.beta)
        dense_into(block.feedforward_in, keras_block._feedforward_intermediate_dense)
        dense_into(block.feedforward_out, keras_block._feedforward_output_dense)
    put(peer_model.final_norm.weight, tflm_model.final_norm.gamma)
    put(peer_model.final_norm.bias, tflm_model.final_norm.beta)
    dense_into(peer_model.head, tflm_model.head)


# ----------------------------------------------------------------------------- command line


def main():
    """Check against tflm, or train a run."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="tflm YAML config (default: tflm's default Transformer)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one config value, as python -m tflm.train --set")
    parser.add_argument("--run-dir", help="train a whole run into this directory")
    parser.add_argument("--threads", type=int, default=0, help="intra- and inter-op threads (0: PyTorch's default)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (default: eager)")
    parser.add_argument("--check", action="store_true",
                        help="compare vocabulary, windows, parameter counts, optimizer, schedule and logits "
                             "with tflm, for the default config and configs/char_lstm.yaml")
    args = parser.parse_args()
    set_threads(args.threads)
    if args.check:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        return 0 if check([None, os.path.join(root, "configs", "char_lstm.yaml")]) else 1
    if not args.run_dir:
        parser.error("give --run-dir (train a run) or --check")
    train(load_config(args.config, args.set), args.run_dir, args.compile)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Checks of settings that are wrong together across sections: how the model is split over
devices (micro-batches, pipeline stages, tensor parallelism, loss scaling), and what a KerasHub preset fixes.
tflm/config.py's `validate` runs them after each section's own checks.
"""

from tflm.errors import TflmError

# What a preset fixes, so setting them beside it is an error.
PRESET_SIZES = ("model.embed_dim", "model.num_layers", "model.num_heads", "model.ff_dim", "model.lstm_units",
                "data.vocab_size", "data.sentencepiece_model")


def check_pipeline(config):
    """Raise for micro-batches that do not divide the batch, or more pipeline stages than the model
    has pieces to cut between (its embedding, each block or LSTM layer, and its head)."""
    microbatches, batch = config.train.microbatches, config.train.global_batch_size
    if batch % microbatches:
        raise TflmError(f"train.microbatches={microbatches} does not divide train.global_batch_size={batch}")
    stages, layers = config.runtime.pipeline_stages, config.model.num_layers
    if stages > layers + 2 and not config.model.preset:  # a preset's layers are counted when it is built
        raise TflmError(f"runtime.pipeline_stages={stages} is more than the {layers + 2} pieces the model can be "
                        f"cut into (the embedding, model.num_layers={layers} layers, the head)")


def check_loss_scaling(config):
    """Raise for mixed_float16 with a model split over devices: its loss scaling runs in the
    data-parallel trainer only (mixed_bfloat16 needs none)."""
    runtime = config.runtime
    if runtime.precision == "mixed_float16" and (runtime.pipeline_stages > 1 or runtime.tensor_parallel > 1):
        raise TflmError("runtime.precision=mixed_float16 is not supported with runtime.pipeline_stages or "
                        "runtime.tensor_parallel > 1 (loss scaling is data-parallel only); use mixed_bfloat16")


def check_tensor_parallel(config):
    """Raise unless runtime.tensor_parallel splits the model's heads and feed-forward columns evenly;
    the LSTM is not split: its gates split by units would need every unit's state from every
    device at every time step (an all-gather per token), which pipeline stages avoid."""
    shards, model = config.runtime.tensor_parallel, config.model
    if shards == 1:
        return
    if model.type != "transformer":
        raise TflmError(f"runtime.tensor_parallel={shards} splits Transformer blocks; model.type={model.type} is "
                        "not split (use runtime.pipeline_stages or data parallelism for it)")
    for key, value in (("model.num_heads", model.num_heads), ("model.ff_dim", model.ff_dim)):
        if value % shards:
            raise TflmError(f"runtime.tensor_parallel={shards} does not divide {key}={value}")


def check_preset(config):
    """Raise for a size set beside a preset (it fixes them), its tokenizer without it, LoRA without
    a preset, or a split the preset's blocks do not support."""
    preset = config.model.preset
    for key in PRESET_SIZES if preset else ():
        section, name = key.split(".")
        if getattr(getattr(config, section), name) != getattr(type(getattr(config, section))(), name):
            raise TflmError(f"{key} cannot be set beside model.preset: the preset fixes its network and tokenizer")
    if (config.data.tokenizer == "preset") != bool(preset):
        raise TflmError("data.tokenizer=preset needs model.preset" if not preset else
                        f"model.preset brings its own tokenizer: data.tokenizer must be preset, not {config.data.tokenizer}")
    if config.train.lora_rank and not preset:
        raise TflmError("train.lora_rank adapts a pretrained model: it needs model.preset")
    if preset and config.runtime.pipeline_stages > 1:
        raise TflmError(f"runtime.pipeline_stages={config.runtime.pipeline_stages}: a preset's layers are built whole "
                        "when KerasHub loads it, not per stage yet; train it with data parallelism")

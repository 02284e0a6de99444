"""Which precision a run computes in, and whether its step goes through XLA.

`runtime.precision`:
- float32;
- mixed_bfloat16: bf16 compute, fp32 weights and logits;
- mixed_float16: fp16 compute with dynamic loss scaling (Keras' LossScaleOptimizer: see
  tflm.training.optimizer.LossScaling), for GPUs without fast bf16 (before Ampere);
- auto: mixed_bfloat16 where every device of the run has fast bf16 (GPUs of compute capability
  8.0 and newer; CPUs with AMX or AVX512-BF16 instructions) and the step reaches it (on a CPU,
  where the step runs without XLA: see below), float32 elsewhere. The choice is printed and saved
  in the run's config.yaml.

On a CPU the step goes through XLA or through TensorFlow's own (oneDNN) kernels, whichever the
model's width makes faster (`step_uses_xla`). XLA fuses the small ops between matmuls, which
wins for narrow models; its CPU backend's matmuls forfeit the bf16 and AMX instructions oneDNN
uses, which wins for wide ones. Measured (2048 x 2048 matmul, 2 threads, TensorFlow 2.21):
                              fp32 graph   fp32 XLA   bf16 graph (oneDNN)   bf16 XLA
  Intel Xeon with AMX              350         350          1,369-1,468          283   GFLOP/s
  AMD EPYC with AVX512-BF16        200         171                  387          181   GFLOP/s
(`--xla_cpu_use_onednn` and `--xla_cpu_use_xnnpack` changed nothing), and whole training steps
of the Transformer on the AMD EPYC, quiet, T64 B12 unless said (tokens/s, XLA / oneDNN):
  4 x 128, ff 512 (the default)               fp32 20,136 / 14,006    bf16 18,807 / 15,526
  4 x 256, ff 1024                            fp32  6,565 /  5,312    bf16  6,029 /  6,823
  4 x 512, ff 2048, T256, B16 (GPT-2-like)    fp32  1,637 /  1,845    bf16  1,699 /  3,015
So on a CPU the step runs without XLA from a feed-forward width of 1024 in bf16 and of 2048 in
fp32 (and for every KerasHub preset, 768 wide with ff 3072 and more), and `auto` picks bf16 only
where its step runs without XLA. The LSTM keeps XLA: its time loop runs 1.3x slower without it,
and bf16 under XLA is 1.36x slower (tflm/models/fused_lstm.py). On GPUs XLA keeps bf16 and fp16
on the tensor cores, so the step stays compiled there.
"""

import re

from tflm.lazy import tf

FAST_BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")
BF16_GPU_CAPABILITY = (8, 0)  # Ampere


def cpu_flags():
    """The instruction-set flags of this machine's CPU (empty where /proc/cpuinfo is missing)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            match = re.search(r"^flags\s*:\s*(.*)$", f.read(), re.MULTILINE)
    except OSError:
        return set()
    return set(match.group(1).split()) if match else set()


def device_kinds():
    """The device types a run's replicas compute on: {"GPU"} where TensorFlow sees a GPU (every
    strategy then places the model there), else {"CPU"}."""
    return {"GPU"} if tf.config.list_logical_devices("GPU") else {"CPU"}


def has_fast_bf16(kind):
    """Whether devices of this kind ("CPU" or "GPU") on this machine compute bf16 faster than fp32."""
    if kind == "CPU":
        return bool(cpu_flags() & set(FAST_BF16_CPU_FLAGS))
    gpus = tf.config.list_physical_devices("GPU")
    capabilities = [tf.config.experimental.get_device_details(g).get("compute_capability", (0, 0)) for g in gpus]
    return bool(capabilities) and min(capabilities) >= BF16_GPU_CAPABILITY


def resolve_precision(runtime, model_config, kinds):
    """The concrete precision for runtime.precision with this model on devices of `kinds`, and
    why (for auto)."""
    if runtime.precision != "auto":
        return runtime.precision, ""
    fast = {kind: has_fast_bf16(kind) for kind in sorted(kinds)}
    if not all(fast.values()):
        return "float32", f"no fast bf16 on {'/'.join(k for k, ok in fast.items() if not ok)}"
    if "CPU" in kinds and step_uses_xla(runtime.jit_compile, kinds, model_config, "mixed_bfloat16"):
        return "float32", ("this model's CPU step runs through XLA, whose CPU backend computes bf16 no faster "
                           "than fp32")
    return "mixed_bfloat16", f"{'/'.join(fast)} with fast bf16 ({describe_bf16(fast)})"


def describe_bf16(fast):
    """What makes bf16 fast on these device kinds, for the printed choice."""
    if "CPU" in fast:
        return "CPU flags " + " ".join(sorted(cpu_flags() & set(FAST_BF16_CPU_FLAGS)))
    return f"compute capability >= {BF16_GPU_CAPABILITY[0]}.{BF16_GPU_CAPABILITY[1]}"


# From these model.ff_dim a Transformer's CPU step is faster without XLA (module docstring).
WIDE_FEEDFORWARD = {"mixed_bfloat16": 1024, "float32": 2048, "mixed_float16": 2048}


def step_uses_xla(jit_compile, kinds, model_config, precision):
    """Whether the training step is XLA-compiled: runtime.jit_compile, except on CPUs for wide
    Transformers and presets (see the module docstring)."""
    if not jit_compile or "CPU" not in kinds or model_config.type == "lstm":
        return jit_compile
    return model_config.type == "transformer" and model_config.ff_dim < WIDE_FEEDFORWARD[precision]


def compute_note(jit_compile, kinds, model_config, precision):
    """A line saying the step runs without XLA although runtime.jit_compile asks for it; else ""."""
    if jit_compile and not step_uses_xla(jit_compile, kinds, model_config, precision):
        wide = "a KerasHub preset" if model_config.type == "preset" else f"model.ff_dim={model_config.ff_dim}"
        return (f"the training step runs through TensorFlow's oneDNN kernels, not XLA: on CPUs they are faster "
                f"for {wide} in {precision} (tflm/training/precision.py)")
    return ""

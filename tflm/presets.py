"""KerasHub presets: where `model.preset` points, what in it tflm can train, and its fingerprint.

A preset is a directory KerasHub's `save_to_preset` wrote (config.json names the backbone class,
tokenizer.json and assets/ the tokenizer, model.weights.h5 the weights), or a handle KerasHub
downloads (`kaggle://owner/model/keras/variant`, `hf://owner/model`, or a built-in name such as
`gpt2_base_en`). Downloads need network: without it a handle is a one-line error saying to
download it once and point model.preset at the directory. The tokenizer (tflm/data/tokenizers/preset.py)
and the network (tflm/models/preset.py) are both read through `open_preset`.

A run records its preset's fingerprint (PRESET_FILE): a SHA-256 of the preset's files, so a run
resumed, exported or served against another preset's weights is a one-line error, not silent nonsense.
"""

import hashlib
import json
import os
import re

from tflm import atomic
from tflm.errors import TflmError

PRESET_FILE = "preset.json"  # in a run directory: the preset it fine-tunes and its fingerprint
HANDLE_SCHEMES = ("kaggle://", "hf://", "modelscope://", "gs://")
# Backbones whose decoder blocks tflm reads causally, each with its decoding cache in tflm/models/preset.py.
SUPPORTED_BACKBONES = ("GPT2Backbone", "LlamaBackbone")
READ_CHUNK = 1 << 24
CACHE = os.path.join(os.path.expanduser("~"), ".cache", "tflm", "presets")  # downloaded handles ($TFLM_PRESET_CACHE)


def is_handle(preset):
    """Whether `preset` is something KerasHub downloads rather than a local directory."""
    return preset.startswith(HANDLE_SCHEMES) or not (os.sep in preset or os.path.exists(preset))


def open_preset(preset):
    """The local directory of `preset` (downloaded by KerasHub for a handle), checked to be a
    KerasHub preset of a supported causal backbone with a tokenizer; a TflmError otherwise."""
    return opened(preset)[0]


def opened(preset):
    """(open_preset's directory, the backbone's config from its config.json)."""
    directory = download(preset) if is_handle(preset) else preset
    if not os.path.isdir(directory):
        raise TflmError(f"model.preset={preset}: no such directory")
    config = read_json(directory, "config.json", preset, "it is not a KerasHub preset (save one with save_to_preset)")
    backbone = config.get("class_name", "?") if isinstance(config, dict) else "?"
    if backbone not in SUPPORTED_BACKBONES:
        raise TflmError(f"model.preset={preset}: tflm cannot train its {backbone} causally; "
                        f"supported: {', '.join(SUPPORTED_BACKBONES)}")
    read_json(directory, "tokenizer.json", preset, "the preset has no tokenizer")
    return directory, config.get("config", {})


def check_preset_config(config):
    """Raise a TflmError unless the run's preset is one tflm can train (open_preset) and has
    positions for data.seq_len tokens; returns its directory."""
    directory, backbone = opened(config.model.preset)
    most = backbone.get("max_sequence_length")  # learned positions (GPT-2); rotary ones (Llama) have no bound
    if most is not None and config.data.seq_len > most:
        raise TflmError(f"data.seq_len={config.data.seq_len} is more than the {most} positions "
                        f"model.preset={config.model.preset} has")
    return directory


def download(handle):
    """A local Keras-format copy of `handle` (kept in CACHE, so later runs need no network), made by
    KerasHub (which converts Hugging Face checkpoints); one line if it cannot be downloaded."""
    target = os.path.join(os.environ.get("TFLM_PRESET_CACHE", CACHE), re.sub(r"[^\w.-]+", "_", handle))
    if os.path.isdir(target):
        return target
    try:
        import keras_hub

        causal_lm = keras_hub.models.CausalLM.from_preset(handle)
    except Exception as error:  # network, authentication, a name KerasHub does not know
        raise TflmError(f"model.preset={handle}: cannot download it ({download_problem(error)}); download it once where there "
                        f"is network (keras_hub.models.CausalLM.from_preset({handle!r}).save_to_preset(DIR)) and set "
                        "model.preset=DIR") from None
    staging = f"{target}.partial-{os.getpid()}"
    causal_lm.save_to_preset(staging)
    os.replace(staging, target)
    return target


def download_problem(error):
    """A short reason a download failed: the host it could not reach, or the error's first line."""
    text = str(error).strip()
    host = re.search(r"host='([^']+)'", text)
    if host:
        return f"cannot reach {host.group(1)}"
    return (text.splitlines()[0][:160] if text else type(error).__name__)


def read_json(directory, name, preset, missing):
    """The JSON object in the preset's file `name`; a TflmError saying `missing` if it is absent."""
    path = os.path.join(directory, name)
    try:
        return json.loads(atomic.read_bytes(path))
    except OSError:
        raise TflmError(f"model.preset={preset}: no {name}: {missing}") from None
    except ValueError as error:
        raise TflmError(f"model.preset={preset}: {name} is not JSON ({error})") from None


def fingerprint(directory):
    """Hex SHA-256 of every file in the preset directory (names and contents, in name order)."""
    digest = hashlib.sha256()
    for root, dirs, files in os.walk(directory):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(root, name)
            digest.update(os.path.relpath(path, directory).encode("utf-8") + b"\0")
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(READ_CHUNK), b""):
                    digest.update(chunk)
    return digest.hexdigest()


def preset_record(preset):
    """What a run directory's PRESET_FILE holds: the preset as configured and its fingerprint."""
    return json.dumps({"preset": preset, "fingerprint": fingerprint(open_preset(preset))}, indent=1) + "\n"


def check_recorded_preset(run_dir, preset):
    """Raise a TflmError unless `preset` is the one the run in `run_dir` recorded (a run without a
    record, or without a preset, has nothing to compare)."""
    path = os.path.join(run_dir, PRESET_FILE)
    if not preset or not atomic.exists(path):
        return
    recorded = json.loads(atomic.read_bytes(path))["fingerprint"]
    actual = fingerprint(open_preset(preset))
    if actual != recorded:
        raise TflmError(f"model.preset={preset} (fingerprint {actual[:12]}) is not the preset the run was trained "
                        f"from: {path} records {recorded[:12]}; point model.preset at that preset")

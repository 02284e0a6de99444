"""The descriptions of exported signatures agree with themselves: what a task exports is described,
warmup and example requests send only declared inputs and pass the limits checks, and the
function an export traces takes the declared inputs with their defaults, checked before any work.
Fast: no training, no SavedModel (tests/serving/test_export.py exports real runs)."""

import dataclasses
import inspect
import types

import numpy as np
import pytest
import tensorflow as tf

from tflm.data.tokenizers import CharTokenizer
from tflm.serving.export import describe_signature, exported_function
from tflm.serving.signatures import GENERATE_REQUEST, KINDS, Limits, signature_kinds
from tflm.serving.warmup import warmup_requests
from tflm.tasks import task_class

TOKENIZER = CharTokenizer(list("abcdefgh"))
TIGHT = Limits(max_batch_size=1, max_request_chars=8)  # what `tflm.export --max-request-chars 8` allows
LOADED = types.SimpleNamespace(tokenizer=TOKENIZER)  # all a kind's checks read of the run


def test_every_signature_a_task_exports_is_of_a_described_kind():
    for task_type in ("lm", "classify"):
        signatures = task_class(task_type).signatures
        assert "serving_default" in signatures  # what TF Serving calls when a request names none
        assert set(signatures.values()) <= set(KINDS), task_type


@pytest.mark.parametrize("name", sorted(KINDS))
def test_inputs_are_declared_once_required_ones_first_with_defaults_of_their_dtype(name):
    inputs = KINDS[name].inputs
    assert len({i.name for i in inputs}) == len(inputs)
    optional = [i.default is not None for i in inputs]
    assert optional == sorted(optional), "a request may leave out only trailing inputs"
    for i in inputs:
        if i.default is not None:
            assert i.shape == () and np.array(i.default).dtype.kind == {"int32": "i", "float32": "f", "string": "U"}[i.dtype]
    described = describe_signature(KINDS[name])
    assert set(described["defaults"]) <= set(described["inputs"])


@pytest.mark.parametrize("name", sorted(KINDS))
def test_warmup_request_sends_declared_inputs_and_passes_the_tightest_checks(name):
    kind = KINDS[name]
    requests = warmup_requests({name: kind}, TOKENIZER, TIGHT.max_request_chars)
    if kind.tf_serving_flags:  # TF Serving without the flag would fail the warmup and not load the version
        assert requests == {}
        return
    request = requests[name]
    declared = {i.name: i for i in kind.inputs}
    assert set(request) <= set(declared)
    assert {i.name for i in kind.inputs if i.default is None} <= set(request)
    for key, value in request.items():
        assert value.ndim == len(declared[key].shape), key
        assert tf.constant(value).dtype.name == declared[key].dtype, key
    tensors = {i.name: tf.constant(request.get(i.name, i.default), i.dtype) for i in kind.inputs}
    kind.checks(LOADED, tensors, TIGHT)  # eager: a failed check raises here


def test_generate_example_request_is_a_valid_generate_request():
    kind = KINDS["generate"]
    assert set(GENERATE_REQUEST["inputs"]) == {i.name for i in kind.inputs}
    kind.checks(LOADED, {i.name: tf.constant(GENERATE_REQUEST["inputs"][i.name], i.dtype) for i in kind.inputs},
                Limits())


def test_generate_comes_with_its_xla_twin_which_names_the_tf_serving_flag_it_needs():
    kinds = signature_kinds(types.SimpleNamespace(task=task_class("lm")))
    assert list(kinds) == ["serving_default", "score", "generate", "generate_xla"]
    assert kinds["generate_xla"].inputs == kinds["generate"].inputs
    assert kinds["generate_xla"].tf_serving_flags == ("--xla_cpu_compilation_enabled=true",)
    assert describe_signature(kinds["generate_xla"])["tf_serving_flags"] == ["--xla_cpu_compilation_enabled=true"]
    assert "tf_serving_flags" not in describe_signature(kinds["generate"])
    assert all(not kind.tf_serving_flags for kind in signature_kinds(types.SimpleNamespace(
        task=task_class("classify"))).values())


def echo(name):
    """The kind `name`, serving its checked inputs back."""
    return exported_function(name, dataclasses.replace(KINDS[name], serve=lambda loaded, inputs, stride: inputs),
                             LOADED, 16, TIGHT)


def test_the_exported_function_takes_the_declared_inputs_and_fills_in_defaults():
    generate = echo("generate")
    parameters = inspect.signature(generate).parameters
    assert list(parameters) == [i.name for i in KINDS["generate"].inputs]
    served = generate(tf.constant(["ab"]), max_new_tokens=tf.constant(3), temperature=tf.constant(0.5),
                      top_k=tf.constant(0), seed=tf.constant(1))  # a request written before top_p and stop
    assert served["top_p"].numpy() == np.float32(1.0) and served["stop"].numpy() == b""
    assert served["prompts"].numpy().tolist() == [b"ab"]


@pytest.mark.parametrize("name, inputs, message", [
    ("generate", {"prompts": ["a"], "max_new_tokens": 0, "temperature": 0.0, "top_k": 0, "seed": 0},
     "max_new_tokens must be at least 1"),
    ("score", {"texts": ["a", "b"]}, "at most 1 texts per request"),
    ("classify", {"texts": ["abcdefghi"]}, "at most 8 characters of texts per request"),
    ("logits", {"token_ids": [[1, 10]]}, "token_ids must be < the vocabulary size, 10"),
])
def test_the_exported_function_refuses_a_request_over_its_limits(name, inputs, message):
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        echo(name)(**{k: tf.constant(v) for k, v in inputs.items()})

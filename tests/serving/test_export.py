"""SavedModels for TF Serving: layout, signatures, core-only graphs, warmup, consistency, failures."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import small_config
from tflm.serving import export as export_module
from tflm.errors import TflmError
from tflm.serving.export import export_run
from tflm.serving.decoding import MAX_NEW_TOKENS, MAX_SEED, generate
from tflm.serving.loading import MAX_BATCH_SIZE, MAX_REQUEST_CHARS, load_run
from tflm.serving.reading import next_token_logits
from tflm.serving.scoring import score_texts
from tflm.serving.signatures import KINDS
from tflm.serving.warmup import read_warmup_requests
from tflm.data.tokenizers import CharTokenizer
from tflm.training.train import train

pytestmark = pytest.mark.slow  # every test needs two runs trained and exported (about a minute)

MODEL_TYPES = ("transformer", "lstm")
TEXTS = ["def main():\n    return 0", "", "\u2603 unseen \u2603", "x = 1\n" * 15]  # 90 > context
PROMPTS = ["import ", "", "# a prompt longer than the thirty-two character context\n"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{model type: run directory}, each trained once."""
    base = tmp_path_factory.mktemp("runs")
    return {t: train(small_config(t), str(base / t)) for t in MODEL_TYPES}


@pytest.fixture(scope="module")
def exports(runs, tmp_path_factory):
    """(base, {model type: version directory}), each run exported once."""
    base = str(tmp_path_factory.mktemp("serving") / "saved_models")
    return base, {t: export_run(runs[t], base=base, name=t) for t in MODEL_TYPES}


@pytest.fixture(scope="module")
def loaded(runs):
    return {t: load_run(runs[t]) for t in MODEL_TYPES}


def test_export_is_a_tf_serving_model_repository(exports, runs):
    base, paths = exports
    assert paths["transformer"] == os.path.join(base, "transformer", "1")
    assert sorted(os.listdir(os.path.join(base, "transformer"))) == ["1"]  # no staging left behind
    for path in paths.values():
        assert os.path.isfile(os.path.join(path, "saved_model.pb"))
        assert os.path.isdir(os.path.join(path, "variables"))
        with open(os.path.join(path, "assets.extra", "tflm_export.json"), encoding="utf-8") as f:
            description = json.load(f)
        assert description["non_core_ops"] == []
        assert set(description["signatures"]) == {"serving_default", "score", "generate", "generate_xla"}
        assert description["signatures"]["generate_xla"]["tf_serving_flags"] == ["--xla_cpu_compilation_enabled=true"]
        assert description["signatures"]["generate_xla"]["inputs"] == description["signatures"]["generate"]["inputs"]
        assert xla_compiled_functions(path)  # the decoding loop of generate_xla
        assert description["signatures"]["generate"]["inputs"]["top_k"] == {"dtype": "int32", "shape": []}
        assert description["signatures"]["generate"]["inputs"]["stop"] == {"dtype": "string", "shape": []}
        assert description["signatures"]["generate"]["defaults"] == {"top_p": 1.0, "stop": ""}
        assert description["tokenizer"]["characters"] == load_run(runs["lstm"]).tokenizer.characters
        assert description["limits"]["score"] == {
            "max_texts": MAX_BATCH_SIZE, "max_chars_per_request": MAX_REQUEST_CHARS, "texts": "valid UTF-8"}
        assert description["limits"]["generate"]["seed"] == [0, MAX_SEED]
        vocabulary_size = description["model"]["vocabulary_size"]
        assert description["limits"]["serving_default"]["token_ids"] == [0, vocabulary_size - 1]
    again = export_run(runs["lstm"], base=base, name="lstm")  # a new version, never a replacement
    assert again == os.path.join(base, "lstm", "2")
    assert sorted(os.listdir(os.path.join(base, "lstm"))) == ["1", "2"]


def xla_compiled_functions(path):
    """The names of the functions of a SavedModel's graph that carry _XlaMustCompile=true."""
    from tensorflow.core.protobuf import saved_model_pb2

    with open(os.path.join(path, "saved_model.pb"), "rb") as f:
        saved_model = saved_model_pb2.SavedModel.FromString(f.read())
    return [f.signature.name for m in saved_model.meta_graphs for f in m.graph_def.library.function
            if f.attr["_XlaMustCompile"].b]


FRESH_PROCESS = textwrap.dedent("""
    import json, sys
    import tensorflow as tf
    texts, prompts, paths = json.loads(sys.argv[1])
    out = {}
    for name, path in paths.items():
        model = tf.saved_model.load(path)
        score = model.signatures["score"](texts=tf.constant(texts))
        generate = model.signatures["generate"](
            prompts=tf.constant(prompts), max_new_tokens=tf.constant(40), temperature=tf.constant(0.0),
            top_k=tf.constant(0), seed=tf.constant(0), top_p=tf.constant(1.0), stop=tf.constant(""))
        # The decoding loop XLA-compiled: the function keeps _XlaMustCompile in the SavedModel.
        generate_xla = model.signatures["generate_xla"](
            prompts=tf.constant(prompts), max_new_tokens=tf.constant(40), temperature=tf.constant(0.0),
            top_k=tf.constant(0), seed=tf.constant(0), top_p=tf.constant(1.0), stop=tf.constant(""))
        # The call written before top_p and stop existed, through the exported object's attribute.
        old_call = model.generate(prompts=tf.constant(prompts), max_new_tokens=tf.constant(40),
                                  temperature=tf.constant(0.0), top_k=tf.constant(0), seed=tf.constant(0))
        try:
            model.signatures["generate"](prompts=tf.constant(prompts), max_new_tokens=tf.constant(40),
                                         temperature=tf.constant(0.0), top_k=tf.constant(0), seed=tf.constant(0))
            signature_old_call = "accepted"
        except TypeError as error:
            signature_old_call = str(error)
        logits = model.signatures["serving_default"](token_ids=tf.constant([[5, 6, 7, 0, 0]]))
        out[name] = {"score": {k: v.numpy().tolist() for k, v in score.items()},
                     "completions": [c.decode("utf-8") for c in generate["completions"].numpy()],
                     "completions_xla": [c.decode("utf-8") for c in generate_xla["completions"].numpy()],
                     "old_call": [c.decode("utf-8") for c in old_call["completions"].numpy()],
                     "signature_old_call": signature_old_call,
                     "logits": logits["logits"].numpy().tolist()}
    loaded_modules = {m.split(".")[0] for m in sys.modules}
    out["modules"] = sorted(loaded_modules & {"keras_nlp", "keras_hub", "tensorflow_text", "tflm"})
    print(json.dumps(out))
""")


def test_fresh_tensorflow_process_serves_all_signatures_like_tflm(exports, loaded):
    """Loads with tensorflow alone (as TF Serving would); score to 1e-4 and greedy text exactly."""
    _, paths = exports
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, "-c", FRESH_PROCESS, json.dumps([TEXTS, PROMPTS, paths])],
                          capture_output=True, text=True, timeout=300, env=env, cwd="/")
    assert done.returncode == 0, done.stderr[-3000:]
    served = json.loads(done.stdout.strip().splitlines()[-1])
    assert served.pop("modules") == []
    for name, run in loaded.items():
        expected = score_texts(run, TEXTS)
        for key in ("log_prob", "mean_nll", "perplexity"):
            np.testing.assert_allclose(served[name]["score"][key], [r[key] for r in expected], atol=1e-4, rtol=1e-5)
        assert served[name]["score"]["num_tokens"] == [r["num_tokens"] for r in expected]
        assert served[name]["completions"] == generate(run, PROMPTS, 40, temperature=0.0)
        assert served[name]["completions_xla"] == served[name]["completions"]
        assert served[name]["old_call"] == served[name]["completions"]
        # What the README says: TensorFlow's Python loader ignores SignatureDef defaults.
        assert "missing required arguments: stop, top_p" in served[name]["signature_old_call"]
        np.testing.assert_allclose(served[name]["logits"], next_token_logits(run, tf.constant([[5, 6, 7]])).numpy(),
                                   atol=1e-4)


def test_exported_generate_samples_and_stops_like_python(exports, loaded):
    _, paths = exports
    for name, run in loaded.items():
        signature = tf.saved_model.load(paths[name]).signatures["generate"]
        for request in ({"temperature": 1.0, "top_k": 12, "top_p": 0.9, "seed": 5, "stop": ""},
                        {"temperature": 0.7, "top_k": 0, "top_p": 1.0, "seed": 6, "stop": " "},
                        {"temperature": 0.0, "top_k": 0, "top_p": 1.0, "seed": 0, "stop": "e"}):
            served = signature(**generate_inputs(prompts=PROMPTS, max_new_tokens=50, **request))["completions"]
            expected = generate(run, PROMPTS, 50, request["temperature"], request["top_k"], request["top_p"],
                                request["seed"], request["stop"])
            assert [text.decode("utf-8") for text in served.numpy()] == expected, (name, request)


def test_requests_without_top_p_and_stop_are_served_as_before(exports, loaded):
    """TF Serving fills in SignatureDef defaults, as a TF1 session over the export does here."""
    _, paths = exports
    tf1 = tf.compat.v1
    with tf.Graph().as_default(), tf1.Session() as session:
        meta_graph = tf1.saved_model.loader.load(session, ["serve"], paths["transformer"])
        signature = meta_graph.signature_def["generate"]
        assert {k: tf.make_ndarray(v).item() for k, v in signature.defaults.items()} == {"top_p": 1.0, "stop": b""}
        old_request = {"prompts": PROMPTS, "max_new_tokens": 30, "temperature": 0.8, "top_k": 5, "seed": 3}
        completions = session.run(signature.outputs["completions"].name,
                                  {signature.inputs[k].name: v for k, v in old_request.items()})
    assert [text.decode("utf-8") for text in completions] == generate(loaded["transformer"], PROMPTS, 30, 0.8, 5,
                                                                      seed=3)


def test_an_export_that_needs_ops_stock_serving_lacks_fails_and_leaves_no_version(runs, tmp_path, monkeypatch):
    original = export_module.signature_functions

    def with_an_xla_op(loaded, stride, limits):  # keras.ops.slice_update lowers to XlaDynamicUpdateSlice
        functions = original(loaded, stride, limits)
        logits_of = functions["serving_default"]
        return {**functions, "serving_default": lambda token_ids: {"logits": keras.ops.slice_update(
            logits_of(token_ids)["logits"], (0, 0), tf.zeros([1, 1]))}}

    monkeypatch.setattr(export_module, "signature_functions", with_an_xla_op)
    with pytest.raises(TflmError, match="ops stock TF Serving lacks: XlaDynamicUpdateSlice "):
        export_run(runs["lstm"], base=str(tmp_path / "saved_models"), name="m")
    assert os.listdir(tmp_path / "saved_models" / "m") == []
    # A tokenizer that declares the op (as one built on tensorflow-text declares its ops) exports.
    monkeypatch.setattr(CharTokenizer, "non_core_ops", ("XlaDynamicUpdateSlice",))
    path = export_run(runs["lstm"], base=str(tmp_path / "saved_models"), name="m")
    with open(os.path.join(path, "assets.extra", "tflm_export.json"), encoding="utf-8") as f:
        assert json.load(f)["non_core_ops"] == ["XlaDynamicUpdateSlice"]


def test_saved_model_cli_shows_and_runs_score(exports):
    _, paths = exports
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    shown = subprocess.run([cli, "show", "--dir", paths["transformer"], "--all"], capture_output=True, text=True,
                           timeout=120, env=env)
    assert shown.returncode == 0, shown.stderr[-2000:]
    for name in ("signature_def['score']", "signature_def['generate']", "signature_def['generate_xla']",
                 "signature_def['serving_default']",
                 "inputs['texts']", "outputs['log_prob']", "inputs['max_new_tokens']", "outputs['completions']",
                 "inputs['token_ids']", "outputs['logits']"):
        assert name in shown.stdout
    assert "keras_tensor" not in shown.stdout and "output_0" not in shown.stdout
    ran = subprocess.run([cli, "run", "--dir", paths["transformer"], "--tag_set", "serve", "--signature_def", "score",
                          "--input_exprs", "texts=['def main():', 'x']"],
                         capture_output=True, text=True, timeout=120, env=env)
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert "log_prob" in ran.stdout and "perplexity" in ran.stdout and "num_tokens" in ran.stdout


def test_warmup_requests_replay_against_the_export(exports, loaded):
    _, paths = exports
    kinds = loaded["lstm"].task.signatures
    model = tf.saved_model.load(paths["lstm"])
    requests = read_warmup_requests(os.path.join(paths["lstm"], "assets.extra", "tf_serving_warmup_requests"))
    assert [name for name, _ in requests] == ["serving_default", "score", "generate"]
    for name, inputs in requests:
        outputs = model.signatures[name](**{k: tf.constant(v) for k, v in inputs.items()})
        assert set(outputs) == set(KINDS[kinds[name]].outputs)
    assert len(outputs["completions"].numpy()[0].decode("utf-8")) == 8


@pytest.mark.parametrize("max_new_tokens", [0, MAX_NEW_TOKENS + 1])
def test_exported_generate_rejects_max_new_tokens_out_of_range(exports, max_new_tokens):
    _, paths = exports
    signature = tf.saved_model.load(paths["lstm"]).signatures["generate"]
    with pytest.raises(tf.errors.InvalidArgumentError, match="max_new_tokens must be"):
        signature(**generate_inputs(max_new_tokens=max_new_tokens))


def generate_inputs(**changes):
    """A valid `generate` request with `changes`."""
    inputs = {"prompts": ["a"], "max_new_tokens": 4, "temperature": 0.0, "top_k": 0, "seed": 0, "top_p": 1.0,
              "stop": "", **changes}
    return {k: tf.constant(v) for k, v in inputs.items()}


@pytest.mark.parametrize("signature, inputs, match", [
    ("score", {"texts": tf.constant(["a"] * (MAX_BATCH_SIZE + 1))}, f"at most {MAX_BATCH_SIZE} texts"),
    ("score", {"texts": tf.constant(["", "\u2603" * (MAX_REQUEST_CHARS + 1)])},
     f"at most {MAX_REQUEST_CHARS} characters of texts per request"),
    ("score", {"texts": tf.constant(["x" * (MAX_REQUEST_CHARS // 2 + 1)] * 2)}, "characters of texts per request"),
    ("score", {"texts": tf.constant([b"ok", b"caf\xe9"])}, "texts must be valid UTF-8"),  # as the CLI refuses it
    ("generate", generate_inputs(prompts=["a"] * (MAX_BATCH_SIZE + 1)), f"at most {MAX_BATCH_SIZE} prompts"),
    ("generate", generate_inputs(prompts=["x" * (MAX_REQUEST_CHARS // 2 + 1)] * 2),
     f"at most {MAX_REQUEST_CHARS} characters of prompts per request"),
    ("generate", generate_inputs(prompts=[b"\xed\xa0\x80"]), "prompts must be valid UTF-8"),  # a lone surrogate
    ("generate", generate_inputs(temperature=float("inf")), "temperature must be finite"),
    ("generate", generate_inputs(seed=-1), "seed must be from 0"),
    ("generate", generate_inputs(top_p=0.0), "top_p must be in"),
    ("generate", generate_inputs(top_p=1.5), "top_p must be in"),
    ("generate", generate_inputs(top_p=float("nan")), "top_p must be in"),
    ("generate", generate_inputs(stop=b"caf\xe9"), "stop must be valid UTF-8"),
    ("generate", generate_inputs(stop="x" * (MAX_REQUEST_CHARS + 1)), f"stop may have at most {MAX_REQUEST_CHARS}"),
    ("serving_default", {"token_ids": tf.constant([[5, -1]])}, "token_ids must be >= 0"),
    ("serving_default", {"token_ids": tf.constant([[5, 10_000]])}, "token_ids must be < the vocabulary size"),
    ("serving_default", {"token_ids": tf.ones([MAX_BATCH_SIZE + 1, 2], tf.int32)}, f"at most {MAX_BATCH_SIZE} rows"),
    ("serving_default", {"token_ids": tf.ones([2, MAX_REQUEST_CHARS // 2 + 1], tf.int32)},
     f"at most {MAX_REQUEST_CHARS} token_ids per request"),
])
def test_exported_signatures_reject_requests_over_their_limits(exports, signature, inputs, match):
    _, paths = exports
    with pytest.raises(tf.errors.InvalidArgumentError, match=match):
        tf.saved_model.load(paths["transformer"]).signatures[signature](**inputs)


def test_exported_signatures_take_requests_at_their_limits(exports, loaded):
    _, paths = exports
    model = tf.saved_model.load(paths["transformer"])
    short = [f"print({i})" for i in range(MAX_BATCH_SIZE - 1)]
    room = MAX_REQUEST_CHARS - sum(len(text) for text in short)
    texts = ["x = 1\n" * (room // 6) + "y" * (room % 6)] + short
    assert sum(len(text) for text in texts) == MAX_REQUEST_CHARS
    scores = model.signatures["score"](texts=tf.constant(texts))
    assert scores["num_tokens"].numpy().tolist() == [len(text) - 1 for text in texts]
    np.testing.assert_allclose(scores["log_prob"].numpy()[1:], [r["log_prob"] for r in score_texts(
        loaded["transformer"], texts[1:])], atol=1e-4)
    vocabulary_size = loaded["transformer"].tokenizer.vocabulary_size
    logits = model.signatures["serving_default"](token_ids=tf.constant([[vocabulary_size - 1, 0]] * MAX_BATCH_SIZE))
    assert logits["logits"].shape == (MAX_BATCH_SIZE, vocabulary_size)


def test_a_diverged_run_is_neither_loaded_nor_exported(runs, tmp_path, tflm_cli):
    """A NaN weight saved the way training saves checkpoints."""
    diverged = tmp_path / "diverged"
    shutil.copytree(runs["transformer"], diverged)
    run = load_run(str(diverged))
    run.model.head.bias.assign(np.full(run.model.head.bias.shape, np.nan, np.float32))
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(model=run.model), str(diverged / "checkpoints"),
                                         max_to_keep=5)
    manager.save(checkpoint_number=10**6)
    with pytest.raises(TflmError, match="checkpoint .*ckpt-1000000 has non-finite weights: the run diverged"):
        load_run(str(diverged))
    failed = tflm_cli("export", "--run-dir", str(diverged), "--base", str(tmp_path / "models"))
    assert failed.returncode == 2
    assert failed.stderr.strip().splitlines()[-1].startswith("tflm: error: checkpoint")
    assert "Traceback" not in failed.stderr
    assert not os.path.exists(tmp_path / "models" / "diverged")


def test_unwritable_base_and_failed_exports_leave_no_version(runs, tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("x")
    with pytest.raises(TflmError, match="cannot write an export"):
        export_run(runs["lstm"], base=str(blocker / "saved_models"))  # a bad name: test_export_arguments.py

    def broken(*args):
        raise OSError("disk full")

    monkeypatch.setattr(export_module, "write_warmup_requests", broken)
    with pytest.raises(OSError, match="disk full"):
        export_run(runs["lstm"], base=str(tmp_path / "saved_models"), name="m")
    assert os.listdir(tmp_path / "saved_models" / "m") == []  # no version, no staging directory


def test_export_command_line(runs, tmp_path, tflm_cli):
    done = tflm_cli("export", "--run-dir", runs["lstm"], "--base", str(tmp_path / "models"), "--name", "chars")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == str(tmp_path / "models" / "chars" / "1")
    # Its mistakes: tests/serving/test_export_arguments.py


def test_export_options_set_the_limits_and_entries_that_are_not_versions_are_ignored(runs, tmp_path, capsys):
    from tflm.export import main

    model_dir = tmp_path / "models" / "small"
    model_dir.mkdir(parents=True)
    (model_dir / "\u00b2").write_text("not a version")  # "²".isdigit() is True, int("²") fails
    (model_dir / "notes").mkdir()
    common = ["--run-dir", runs["lstm"], "--base", str(tmp_path / "models"), "--name", "small"]
    assert main(common + ["--max-batch-size", "2", "--max-request-chars", "6"]) == 0
    version = capsys.readouterr().out.strip()
    assert version == str(model_dir / "1")
    with open(os.path.join(version, "assets.extra", "tflm_export.json"), encoding="utf-8") as f:
        assert json.load(f)["limits"]["score"] == {"max_texts": 2, "max_chars_per_request": 6, "texts": "valid UTF-8"}
    model = tf.saved_model.load(version)
    assert model.signatures["score"](texts=tf.constant(["abc", "def"]))["num_tokens"].numpy().tolist() == [2, 2]
    with pytest.raises(tf.errors.InvalidArgumentError, match="at most 6 characters of texts per request"):
        model.signatures["score"](texts=tf.constant(["abc", "defg"]))
    with pytest.raises(tf.errors.InvalidArgumentError, match="at most 2 texts per request"):
        model.signatures["score"](texts=tf.constant(["a", "b", "c"]))
    for name, inputs in read_warmup_requests(os.path.join(version, "assets.extra", "tf_serving_warmup_requests")):
        model.signatures[name](**{k: tf.constant(v) for k, v in inputs.items()})  # within the limits: it loads
    assert sorted(os.listdir(model_dir)) == ["1", "notes", "\u00b2"]

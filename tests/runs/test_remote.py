"""Any TensorFlow filesystem: a run whose corpus, run directory, token store and exports live on
ram:// (TensorFlow's in-process filesystem, standing in for gs:// or hdfs://) trains, resumes,
exports and scores."""

import numpy as np
import pytest
import tensorflow as tf

from conftest import small_config
from tflm.runs import run_dir as runs
from tflm.config import updated
from tflm.errors import TflmError
from tflm.serving.export import export_run
from tflm.serving.loading import load_run
from tflm.serving.scoring import score_texts
from tflm.training.train import train

TEXTS = ["def main():\n    return 0\n", "for x in range(3):\n    print(x)\n"]


def remote_corpus_config(root, **sections):
    """A small config whose corpus is written to `root` (a ram:// path) first."""
    tf.io.gfile.makedirs(f"{root}/corpus")
    with tf.io.gfile.GFile(f"{root}/corpus/part0.txt", "w") as f:
        f.write("".join(TEXTS) * 400)
    return small_config(data={"source": "files", "paths": [f"{root}/corpus/*.txt"]}, **sections)


@pytest.mark.slow
def test_a_run_on_a_remote_filesystem_trains_resumes_exports_and_scores(capsys):
    root = "ram://tflm-remote-test"
    config = remote_corpus_config(root, train={"steps": 10, "eval_every": 5, "eval_batches": 2})
    run_dir = f"{root}/runs/a"

    train(config, run_dir)
    assert [r["step"] for r in runs.read_history(run_dir)] == [5, 10]
    assert tf.io.gfile.exists(f"{run_dir}/store/index.json")
    assert not tf.io.gfile.exists(runs.lock_path(run_dir))  # released

    train(updated(config, train={"steps": 20}), run_dir)
    assert "resuming from" in capsys.readouterr().out
    assert [r["step"] for r in runs.read_history(run_dir)] == [5, 10, 15, 20]

    version = export_run(run_dir, base=f"{root}/models", name="chars")
    assert version == f"{root}/models/chars/1"
    served = tf.saved_model.load(version).signatures["score"](texts=tf.constant(TEXTS))
    expected = score_texts(load_run(run_dir), TEXTS)
    np.testing.assert_allclose(served["log_prob"].numpy(), [r["log_prob"] for r in expected], atol=1e-4)


@pytest.mark.slow
def test_a_failed_start_on_a_remote_filesystem_leaves_nothing_and_the_next_start_trains(tmp_path):
    root = "ram://tflm-remote-failed-start"
    config = remote_corpus_config(root, train={"steps": 4, "eval_every": 2, "eval_batches": 1})
    run_dir = f"{root}/runs/a"
    with pytest.raises(TflmError, match="global_batch_size"):  # the store is prepared in place, then found too small
        train(updated(config, train={"global_batch_size": 10**6}), run_dir)
    assert not tf.io.gfile.exists(run_dir)  # not a half-made directory that every later start refuses
    train(config, run_dir)
    assert [r["step"] for r in runs.read_history(run_dir)] == [2, 4]

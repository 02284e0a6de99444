"""Preparing a store with Apache Beam (`tflm.prepare --beam-options`): the direct runner's two
workers write the store one process writes, byte for byte, and training on it learns the same;
bad options, a missing extra and a failed pipeline are one line each, and leave no store.
(Needs the beam extra, `pip install "tflm[beam]"`, which .ci/run installs.)"""

import filecmp
import json
import os
import random
import re
import sys

import pytest
from pydoc_data.topics import topics

from conftest import REPO, run_tflm, small_config
from tflm.data.chunks import file_chunks, read_chunk
from tflm.data.prepare import prepare_store
from tflm.errors import TflmError

pytest.importorskip("apache_beam", reason='the beam extra is not installed: pip install "tflm[beam]"')

CHUNK_BYTES = 20_000  # small, so that files span several chunks
TWO_WORKERS = "--runner=DirectRunner --direct_running_mode=multi_processing --direct_num_workers=2"
MANUAL = "".join(topics[name] for name in sorted(topics))


def write_corpus(directory):
    """Text files: two spanning several chunks (one without a final newline), a small one, an empty one."""
    os.makedirs(directory)
    parts = {"a.txt": MANUAL[:90_000], "b.txt": MANUAL[90_000:91_000], "c.txt": "", "d.txt": MANUAL[91_000:150_000].rstrip("\n")}
    for name, text in parts.items():
        with open(os.path.join(directory, name), "w", encoding="utf-8") as f:
            f.write(text)
    return os.path.join(directory, "*.txt")


def data_settings(pattern, tokenizer):
    """The data settings of a store of the files `pattern` matches."""
    return dict(source="files", paths=(pattern,), tokenizer=tokenizer, validation_fraction=0.2,
                vocab_size={"char": 200, "sentencepiece": 400}[tokenizer])


def data_config(pattern, tokenizer):
    """The data section of a small config reading `pattern`."""
    return small_config(data=data_settings(pattern, tokenizer)).data


def same_files(left, right):
    """Relative paths of files that differ between two directory trees (or exist in one only)."""
    comparison = filecmp.dircmp(left, right)
    differ = comparison.diff_files + comparison.left_only + comparison.right_only
    for name, sub in comparison.subdirs.items():
        differ += [os.path.join(name, path) for path in same_files(os.path.join(left, name), os.path.join(right, name))]
    return differ


@pytest.mark.slow
@pytest.mark.parametrize("tokenizer", ["char", "sentencepiece"])
def test_two_beam_workers_write_the_store_one_process_writes(tmp_path, tokenizer):
    pattern = write_corpus(tmp_path / "corpus")
    config = data_config(pattern, tokenizer)
    one = prepare_store(config, str(tmp_path / "one"), chunk_bytes=CHUNK_BYTES, log=lambda _: None)
    beam = prepare_store(config, str(tmp_path / "beam"), chunk_bytes=CHUNK_BYTES, beam_options=TWO_WORKERS,
                         log=lambda _: None)
    assert same_files(tmp_path / "one", tmp_path / "beam") == ["index.json"]  # every shard, the tokenizer
    assert {k: v for k, v in one.index.items() if k not in ("prepared", "created_utc")} == \
        {k: v for k, v in beam.index.items() if k not in ("prepared", "created_utc")}
    assert len(beam.index["splits"]["train"]["shards"]) > 4 and beam.tokens("validation") > 0
    assert one.index["prepared"] == {"by": "one process", "chunk_bytes": CHUNK_BYTES}
    assert beam.index["prepared"]["by"] == "Apache Beam" and beam.index["prepared"]["workers"] == 2
    assert sorted(os.listdir(tmp_path)) == ["beam", "corpus", "one"]  # no staging directory, no lock left


@pytest.mark.slow
def test_training_on_the_beam_store_learns_what_it_learns_on_the_single_process_store(tmp_path):
    from tflm.training.train import train

    pattern = write_corpus(tmp_path / "corpus")
    histories = []
    for name, options in (("one", None), ("beam", TWO_WORKERS)):
        store = str(tmp_path / f"store-{name}")
        config = small_config(train={"steps": 4, "eval_every": 2, "eval_batches": 1},
                              data=dict(data_settings(pattern, "char"), store=store))
        prepare_store(config.data, store, chunk_bytes=CHUNK_BYTES, beam_options=options, log=lambda _: None)
        run_dir = train(config, str(tmp_path / f"run-{name}"))
        with open(os.path.join(run_dir, "history.jsonl"), encoding="utf-8") as f:
            histories.append([(r["step"], r["loss"], r.get("val_loss")) for r in map(json.loads, f)])
    assert histories[0] == histories[1] and len(histories[0]) == 2


@pytest.mark.slow
def test_a_failed_beam_pipeline_is_one_line_and_leaves_no_store(tmp_path):
    pattern = write_corpus(tmp_path / "corpus")
    with open(tmp_path / "corpus" / "a.txt", "ab") as f:
        f.write(b"\nfine\nbad \xff byte\n")  # in the file's last chunk, which a worker reads
    lines = len(MANUAL[:90_000].split("\n")) + 2
    done = run_tflm("prepare", "--set", "data.source=files", "--set", f"data.paths=[{json.dumps(pattern)}]",
                    "--store", str(tmp_path / "store"), "--beam-options", TWO_WORKERS)
    assert done.returncode == 2, done.stderr
    message = done.stderr.strip().splitlines()
    assert message == [f"tflm: error: {tmp_path / 'corpus' / 'a.txt'}: line {lines}: "
                       "invalid UTF-8 byte 0xff; nothing was written"], done.stderr
    assert sorted(os.listdir(tmp_path)) == ["corpus"]


def test_bad_beam_options_are_one_line_each_before_anything_is_written(tmp_path):
    pattern = write_corpus(tmp_path / "corpus")
    config = data_config(pattern, "char")
    cases = {
        "--direct_num_worker=2": "--beam-options: Apache Beam has no option --direct_num_worker",
        "--direct_num_workers=two": "--beam-options: argument --direct_num_workers: invalid int value: 'two'",
        "--runner=NoSuchRunner": "--beam-options: runner NoSuchRunner: ",
        "--runner=FlinkRunner --flink_master=localhost:8081": "--beam-options: FlinkRunner's workers run on other machines",
        "--runner='DirectRunner": "--beam-options: No closing quotation",
    }
    for options, expected in cases.items():
        with pytest.raises(TflmError) as raised:
            prepare_store(config, str(tmp_path / "store"), beam_options=options, log=lambda _: None)
        assert str(raised.value).startswith(expected) and "\n" not in str(raised.value), options
    with pytest.raises(TflmError, match="prepares text files only"):
        prepare_store(small_config().data, str(tmp_path / "store"), beam_options="", log=lambda _: None)
    assert sorted(os.listdir(tmp_path)) == ["corpus"]


def test_without_the_beam_extra_the_line_names_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "apache_beam", None)  # what importing it raises when it is not installed
    monkeypatch.delitem(sys.modules, "tflm.data.beam", raising=False)
    with pytest.raises(TflmError, match=r'^--beam-options needs Apache Beam, which is not installed: '
                                        r'pip install "tflm\[beam\]"$'):
        prepare_store(data_config(write_corpus(tmp_path / "corpus"), "char"), str(tmp_path / "store"),
                      beam_options="", log=lambda _: None)
    assert sorted(os.listdir(tmp_path)) == ["corpus"]


def test_chunks_give_every_line_once_to_the_split_of_its_block_whatever_their_size(tmp_path):
    rng = random.Random(0)
    path = tmp_path / "f.txt"
    for trial in range(40):
        lines = ["".join(rng.choice("ab\u20ac\u4e2d ") for _ in range(rng.choice([0, 1, 3, 40, 300])))
                 for _ in range(rng.choice([0, 1, 150, 1000]))]
        path.write_text("\n".join(lines) + rng.choice(["", "\n"]), encoding="utf-8")
        expected = {"train": [], "validation": []}
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(keepends=True)):
            held_out = (number // 100) % 3 == 2
            expected["validation" if held_out else "train"].append(line if line.endswith("\n") else line + "\n")
        for chunk_bytes in (1 if len(lines) < 200 else 100, 999, 1 << 20):
            got, first_line = {"train": "", "validation": ""}, 0
            for chunk in file_chunks(str(path), os.path.getsize(path), chunk_bytes, period=3):
                text = read_chunk(chunk, first_line)
                first_line += text.lines
                for split, blocks in text.blocks.items():
                    got[split] += "".join(blocks)
            assert got == {split: "".join(lines) for split, lines in expected.items()}, (trial, chunk_bytes)


def test_the_readme_beam_invocations_use_options_beam_knows():
    from tflm.data.beam import check_options

    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    invocations = [" ".join(options.replace("\\\n", " ").split()) for options in re.findall(r'--beam-options="([^"]+)"', readme)]
    runners = {re.search(r"--runner=(\w+)", options).group(1) for options in invocations}
    assert runners >= {"DirectRunner", "DataflowRunner", "FlinkRunner", "SparkRunner"}, runners
    for options in invocations:
        check_options(options.split())  # raises for an option Beam does not know


def test_shards_written_under_a_workers_names_are_renamed_into_order_on_an_object_store():
    from tflm.data.prepare import assemble_splits
    from tflm.lazy import tf

    target = "ram://beam-rename-test"
    pieces = []
    for chunk, tokens in enumerate([3, 5, 2]):
        name = f"train/.chunk-{chunk:06d}-000.bin"
        with tf.io.gfile.GFile(f"{target}/{name}", "wb") as f:
            f.write(bytes([chunk]) * 2 * tokens)
        pieces.append({"train": {"shards": [{"file": name, "tokens": tokens, "crc32": chunk}], "text_bytes": tokens}})
    splits = assemble_splits(target, pieces)
    assert [s["file"] for s in splits["train"]["shards"]] == ["train/00000.bin", "train/00001.bin", "train/00002.bin"]
    assert [tf.io.gfile.GFile(f"{target}/train/{n:05d}.bin", "rb").read()[:1] for n in range(3)] == [b"\0", b"\1", b"\2"]
    assert sorted(tf.io.gfile.listdir(f"{target}/train")) == ["00000.bin", "00001.bin", "00002.bin"]
    assert splits["train"]["tokens"] == 10 and splits["validation"]["shards"] == []

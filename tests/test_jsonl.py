"""One JSON Lines reader for a run's history and labelled .jsonl files: lines end at "\\n" only, blank
lines are skipped, and each reader names the file and line of the first bad one in its own words."""

import json

import pytest

from tflm.config import TaskConfig
from tflm.data.labelled import read_file
from tflm.errors import TflmError
from tflm.jsonl import BadLine, json_objects
from tflm.runs.run_dir import read_history


def test_objects_are_numbered_by_line_and_blank_lines_skipped():
    assert json_objects('{"a": 1}\n\n  \n{"b": 2}\r\n') == [(1, {"a": 1}), (4, {"b": 2})]
    assert json_objects(b'{"a": 1}\n') == [(1, {"a": 1})]
    assert json_objects(['{"a": 1}', '{"b": 2}'], start=7) == [(7, {"a": 1}), (8, {"b": 2})]


@pytest.mark.parametrize("line, reason", [("[1, 2]", "expected a JSON object, found list"),
                                          ('{"a": ', "not valid JSON (Expecting value)"),
                                          (b"\xff{}", "not valid JSON (")])
def test_the_first_line_that_is_no_object_is_named(line, reason):
    with pytest.raises(BadLine) as bad:
        json_objects([b'{"a": 1}', line.encode() if isinstance(line, str) else line, b'{"b": 2}'])
    assert bad.value.number == 2 and bad.value.reason.startswith(reason)


def test_a_labelled_text_holding_a_line_separator_stays_one_example(tmp_path):
    path = tmp_path / "train.jsonl"
    rows = [{"text": "one\u2028two\x0cthree", "label": "a"}, {"text": "four", "label": "b"}]
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    examples = read_file(str(path), TaskConfig(type="classify"))
    assert [(e.text, e.label, e.where) for e in examples] == [("one\u2028two\x0cthree", "a", f"{path}:1"),
                                                              ("four", "b", f"{path}:2")]
    path.write_text('{"text": "x", "label": "a"}\n\n[1]\n', encoding="utf-8")
    with pytest.raises(TflmError, match=rf"^{path}:3: expected a JSON object, found list$"):
        read_file(str(path), TaskConfig(type="classify"))


def test_history_drops_a_partial_last_line_and_names_any_other_bad_one(tmp_path):
    history = tmp_path / "history.jsonl"
    history.write_text('{"step": 10, "loss": 2.0}\n\n{"step": 20, "loss": 1.5}\n{"step": 3', encoding="utf-8")
    assert read_history(str(tmp_path)) == [{"step": 10, "loss": 2.0}, {"step": 20, "loss": 1.5}]
    history.write_text('{"step": 10}\n{"loss": 2.0}\n{"step": 20}\n', encoding="utf-8")
    with pytest.raises(TflmError) as error:
        read_history(str(tmp_path))
    assert str(error.value) == (f"{history}:2: not a history record (a JSON object with a 'step'); "
                                "fix or remove that line")

"""The config is one source of truth: what --print-config and a run's config.yaml write loads back
as the same Config, every default passes its own check and is documented, and configs/*.yaml are
exactly what --print-config prints for them."""

import dataclasses
import glob
import os

import pytest

from conftest import REPO
from tflm.config import (SECTIONS, Config, all_keys, convert, dump, field_comments, field_types, load_config,
                         read_yaml, updated)

CONFIG_FILES = sorted(glob.glob(os.path.join(REPO, "configs", "*.yaml")))
# Values YAML could read back as something else: strings that look like booleans, nulls, numbers or
# comments, non-ASCII text, and floats in scientific notation.
UNUSUAL = updated(Config(), data={"source": "files", "paths": ["a b/*.txt", "null", "on", "1e3", "#x", "ü: 'q'"],
                                  "tfds_name": "yes", "tfds_data_dir": "~/data # not a comment"},
                  train={"learning_rate": 1e-7, "min_learning_rate_ratio": 0.0, "seed": 2**31 - 1},
                  runtime={"jit_compile": False, "strategy": "multi_worker", "precision": "mixed_bfloat16"})


@pytest.mark.parametrize("config", [Config(), UNUSUAL] + [load_config(p) for p in CONFIG_FILES],
                         ids=["defaults", "unusual"] + [os.path.basename(p) for p in CONFIG_FILES])
def test_a_dumped_config_loads_back_the_same(tmp_path, config):
    path = tmp_path / "config.yaml"
    path.write_text(dump(config), encoding="utf-8")
    assert load_config(str(path)) == config
    assert Config.from_dict(read_yaml(str(path)), origin=str(path), saved=True) == config  # as a run directory


def test_every_default_passes_its_own_check():
    defaults = Config()
    for key in all_keys():
        section, name = key.split(".")
        default = getattr(getattr(defaults, section), name)
        assert convert(key, default, *field_types(SECTIONS[section])[name]) == default, key


def test_every_field_is_documented_by_its_comment():
    for section, cls in SECTIONS.items():
        names = [field.name for field in dataclasses.fields(cls)]
        assert list(field_comments(cls)) == names, section
        assert all(comment.strip() for comment in field_comments(cls).values()), section


@pytest.mark.parametrize("path", CONFIG_FILES, ids=os.path.basename)
def test_config_files_list_every_key_as_print_config_does(path):
    listed = [f"{section}.{key}" for section, values in read_yaml(path).items() for key in values]
    assert listed == all_keys()
    with open(path, encoding="utf-8") as f:
        body = "".join(line for line in f if not line.startswith("#"))
    assert body == dump(load_config(path))


def alias_bomb(levels):
    """A YAML flow list of `levels` anchors, each naming the one before nine times: a few hundred
    bytes that stand for 9**levels strings."""
    parts = ["&b0 [" + ",".join(["lol"] * 9) + "]"]
    parts += [f"&b{i} [" + ",".join([f"*b{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return "[" + ", ".join(parts) + "]"


def config_error(tmp_path, capsys, args):
    """The stderr of `python -m tflm.train args` run in this process, checked to be one line and exit 2."""
    from tflm.train import main

    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--run-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith("tflm: error: ") and err.count("\n") == 1, err
    assert not (tmp_path / "run").exists()
    return err


@pytest.mark.parametrize("value,message", [
    (alias_bomb(9), "the YAML value expands to more than 100,000 values (through aliases)"),
    ("&a [lol, *a]", "the YAML value refers to itself (a recursive alias)"),
    ("[" * 5000 + "]" * 5000, "the YAML value is nested deeper than 32 levels"),
    ("{a: " * 3000 + "1" + "}" * 3000, "the YAML value is nested deeper than 32 levels"),
], ids=["alias bomb", "recursive alias", "deep list", "deep mapping"])
def test_yaml_too_large_or_deep_is_one_short_line_by_set_and_by_config_file(tmp_path, capsys, value, message):
    err = config_error(tmp_path, capsys, ["--set", f"data.paths={value}"])
    assert err == f"tflm: error: --set 'data.paths': {message}\n"
    path = tmp_path / "c.yaml"
    path.write_text(f"data:\n  paths: {value}\n", encoding="utf-8")
    assert config_error(tmp_path, capsys, ["--config", str(path)]) == f"tflm: error: {path}: {message}\n"


def test_aliases_within_the_bounds_still_load():
    config = load_config(None, ["data.paths=[&x a.txt, *x, *x]"])
    assert config.data.paths == ("a.txt",) * 3


@pytest.mark.parametrize("override", ["train.steps=" + "x" * 100_000, "data.paths=" + "[[a], " * 5000 + "b]",
                                      "model.type=" + "g" * 100_000, "train.steps=" + "9" * 5000,
                                      "x" * 100_000])
def test_error_lines_repeat_at_most_about_100_characters_of_a_value(tmp_path, capsys, override):
    err = config_error(tmp_path, capsys, ["--set", override])
    assert len(err) < 250, err


def test_the_config_knows_which_keys_were_given(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  type: lstm\ntrain:\n  steps: 5\n", encoding="utf-8")
    config = load_config(str(path), ["data.vocab_size=500"])
    assert config.given == {"model.type", "train.steps", "data.vocab_size"}
    assert Config().given == frozenset() and config == updated(Config(), model={"type": "lstm"},
                                                              train={"steps": 5}, data={"vocab_size": 500})
    assert updated(config, model={"dropout": 0.5}).given == config.given | {"model.dropout"}

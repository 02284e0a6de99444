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

"""Which settings a run started with --init-from must share with its source: asked of the model, not
of its type (the end-to-end --init-from runs are in tests/tasks/test_classify.py)."""

import pytest

from conftest import small_config
from tflm.errors import TflmError
from tflm.runs.init_from import check_same_model


def test_a_transformer_source_with_another_seq_len_is_refused_in_one_line():
    source, wanted = small_config("transformer"), small_config("transformer", data={"seq_len": 16})
    with pytest.raises(TflmError) as error:
        check_same_model("src", source, wanted)
    assert str(error.value) == ("--init-from src: the source run has data.seq_len=32, this run 16; leave "
                                "data.seq_len out (of --set and the --config file) to take the source run's")


def test_an_lstm_source_may_have_trained_on_another_window_length():
    check_same_model("src", small_config("lstm"), small_config("lstm", data={"seq_len": 16}))
    with pytest.raises(TflmError, match="model.lstm_units=32, this run 64"):
        check_same_model("src", small_config("lstm"), small_config("lstm", model={"lstm_units": 64}))

"""Whether a run's tokenizer files are the tokenizer it was trained with.

A tokenizer's fingerprint (a SHA-256 of everything that defines its ids, tflm.data.tokenizers)
is recorded where a run's ids were made: the token store's index.json and, for a run started
from another one, init_from.json. A run whose tokenizer files were swapped or edited afterwards
would read and write other ids than its weights learned, silently; `check_recorded_tokenizer`
makes that a one-line error naming the files, before training resumes or a run is loaded for
inference.
"""

import json
import os

from tflm import atomic
from tflm.data.store import INDEX_FILE
from tflm.errors import TflmError
from tflm.runs.init_from import RECORD_FILE


def check_recorded_tokenizer(run_dir, config, tokenizer):
    """Raise a TflmError unless the run's tokenizer has the fingerprint its records hold: the
    token store's index.json (a language model's) and init_from.json (a fine-tuned run's). A run
    without either (tflm 0.1's, a classifier trained from scratch) records none: nothing to compare."""
    store = config.data.store or os.path.join(run_dir, "store")
    records = {os.path.join(store, INDEX_FILE): ("tokenizer", "fingerprint"),
               os.path.join(run_dir, RECORD_FILE): ("tokenizer_fingerprint",)}
    actual = tokenizer.fingerprint()
    for record, keys in records.items():
        fingerprint = recorded_fingerprint(record, keys)
        if fingerprint is not None and fingerprint != actual:
            files = " and ".join(os.path.join(run_dir, name) for name in tokenizer.file_names())
            fix = ("restore the run's own tokenizer files, or, if that shared store was prepared again with another "
                   "tokenizer, point data.store at the store the run was trained on") if config.data.store else \
                "restore the run's own tokenizer files"
            raise TflmError(f"{files} (tokenizer fingerprint {actual[:12]}) is not the tokenizer the run was "
                            f"trained with: {record} records {fingerprint[:12]}; {fix}")


def recorded_fingerprint(path, keys):
    """The fingerprint at `keys` in the JSON file `path`; None if there is no such file or key
    (a damaged record is reported by the code that owns it, not here)."""
    try:
        value = json.loads(atomic.read_bytes(path))
        for key in keys:
            value = value[key]
    except Exception:  # missing (OSError, tf.errors.NotFoundError), not JSON, another layout
        return None
    return value if isinstance(value, str) else None

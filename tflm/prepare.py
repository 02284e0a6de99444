"""`python -m tflm.prepare`: tokenize a corpus once into a token store, or verify one.

    python -m tflm.prepare --config configs/char_transformer.yaml --store stores/manual-char
    python -m tflm.prepare --set data.tokenizer=sentencepiece --set data.vocab_size=2000 --store stores/sp2k
    python -m tflm.prepare --verify stores/sp2k
    python -m tflm.prepare --set data.source=files --set 'data.paths=["corpus/*.txt"]' --store stores/c \
        --beam-options="--runner=DirectRunner --direct_num_workers=2"

The config's data section says what to read and how to tokenize it; the store is written at
--store (default: data.store), which must not exist yet: a store is never overwritten. Training
prepares a run's store itself when it has none, so this command is for a store several runs share
(data.store). How a store is prepared and read: tflm.data.prepare and tflm.data.store; with
--beam-options the same store is written by Apache Beam's workers (tflm.data.beam): on this
machine's cores with the direct runner, or on Dataflow, Flink or Spark.
"""

import time

from tflm.atomic import check_persistent
from tflm.cli import command
from tflm.config import load_config
from tflm.data.prepare import prepare_store
from tflm.data.store import SPLITS, TokenStore
from tflm.errors import TflmError


def add_arguments(parser):
    """The command line."""
    parser.add_argument("--config", help="YAML config (its data section is used)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one config value (repeatable)")
    parser.add_argument("--store", help="where to write the store (default: data.store)")
    parser.add_argument("--verify", metavar="STORE", help="check an existing store's shards against its index")
    parser.add_argument("--beam-options", metavar="OPTIONS",
                        help='prepare on Apache Beam (pip install "tflm[beam]"), with these pipeline options, e.g. '
                             '"--runner=DirectRunner --direct_num_workers=8" (the default: every core), or '
                             '"--runner=DataflowRunner --project=P --region=R --temp_location=gs://..."')


def run(args):
    """Prepare (or verify) a store and say what it holds."""
    if args.verify:
        store = TokenStore.open(args.verify)
        store.verify()
        print(f"{args.verify}: every shard matches its checksum")
        return 0
    config = load_config(args.config, args.set)
    path = args.store or config.data.store
    if not path:
        raise TflmError("give --store PATH (or data.store)")
    check_persistent(path, "--store")
    if TokenStore.exists(path):
        raise TflmError(f"{path} already exists; a store is never overwritten: remove it or choose another path")
    started = time.perf_counter()
    store = prepare_store(config.data, path, beam_options=args.beam_options)
    text_mb = sum(store.index["splits"][s]["text_bytes"] for s in SPLITS) / 1e6
    print(f"{path}: {store.tokens('train')} training and {store.tokens('validation')} validation tokens "
          f"({store.index['dtype']}) from {text_mb:.1f} MB of text in {time.perf_counter() - started:.1f}s", flush=True)
    return 0


main = command(__name__, add_arguments, run)

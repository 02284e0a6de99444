"""TODO docstring."""

import argparse
import sys
import time
from tflm.config import load_config
from tflm.errors import TflmError, exit_on_user_error
from tflm.quiet import VERBOSE_HELP, run_command
from tflm.atomic import check_persistent
from tflm.data.store import SPLITS, TokenStore
from tflm.data.prepare import prepare_store


def parse_args(argv):
    """The command line."""
    parser = argparse.ArgumentParser(prog="python -m tflm.prepare", description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="YAML config (its data section is used)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one config value (repeatable)")
    parser.add_argument("--store", help="where to write the store (default: data.store)")
    parser.add_argument("--verify", metavar="STORE", help="check an existing store's shards against its index")
    parser.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    return parser.parse_args(argv)


@exit_on_user_error
def main(argv=None):
    """Entry point of `python -m tflm.prepare`: prepares (or verifies) a store and says what it holds."""
    args = parse_args(argv)
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
    store = prepare_store(config.data, path)
    text_mb = sum(store.index["splits"][s]["text_bytes"] for s in SPLITS) / 1e6
    print(f"{path}: {store.tokens('train')} training and {store.tokens('validation')} validation tokens "
          f"({store.index['dtype']}) from {text_mb:.1f} MB of text in {time.perf_counter() - started:.1f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main))

"""`python -m tflm.train`: train a language model (or a text classifier) into a run directory.

    python -m tflm.train --config configs/char_lstm.yaml --run-dir runs/lstm
    python -m tflm.train --config runs/lstm/config.yaml --run-dir runs/lstm    (resumes with its saved config)
    python -m tflm.train --set model.num_layers=2 --set train.steps=500 --print-config
    python -m tflm.train --config configs/char_classify.yaml --set data.paths=reviews.csv --init-from runs/lstm

Runs alone, or on every worker of a `TF_CONFIG` cluster (`python -m tflm.launch` starts one on
localhost). An existing --run-dir is resumed, never restarted, truncated or overwritten unless
--restart says so (and then the old one is renamed aside, not deleted); a --config that is the
run's own config.yaml is read as saved. What training does is `tflm.training.train.train`, which
Python code imports from here too: `from tflm.train import train`.
"""

import os

from tflm.atomic import check_persistent
from tflm.cli import command
from tflm.config import dump, load_config
from tflm.training.strategy import leave_cluster_at_once
from tflm.training.train import train


def add_arguments(parser):
    """The command line."""
    parser.add_argument("--config", help="YAML config (default: the built-in char_transformer)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one config value (repeatable)")
    parser.add_argument("--run-dir", help="where to write (default: runs/<model>-<time>-<id>); resumes if it exists")
    parser.add_argument("--strategy", choices=("auto", "default", "mirrored", "multi_worker"),
                        help="shorthand for --set runtime.strategy=...")
    parser.add_argument("--restart", action="store_true",
                        help="start over in an existing --run-dir: it is first renamed to RUN_DIR.replaced-<time>")
    parser.add_argument("--init-from", metavar="RUN_DIR",
                        help="a new run starts from this run's latest weights and tokenizer "
                             "(shorthand for --set train.init_from=RUN_DIR)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


def run(args):
    """Print the resolved config, or train (or resume) the run."""
    overrides = args.set + ([f"runtime.strategy={args.strategy}"] if args.strategy else [])
    overrides += [f"train.init_from={args.init_from}"] if args.init_from else []
    config = load_config(args.config, overrides, saved=is_own_config(args.config, args.run_dir))
    if args.print_config:
        print(dump(config), end="")
        return 0
    for option, path in (("--run-dir", args.run_dir), ("data.store", config.data.store)):
        if path:
            check_persistent(path, option)
    train(config, args.run_dir, restart=args.restart, command=["python", "-m", "tflm.train", *args.argv])
    return 0


def is_own_config(config_path, run_dir):
    """Whether `config_path` is the config.yaml that `run_dir` saved (resuming with it as --config)."""
    if not config_path or not run_dir:
        return False
    return os.path.normpath(config_path) == os.path.normpath(os.path.join(run_dir, "config.yaml"))


main = command(__name__, add_arguments, run, around=leave_cluster_at_once)

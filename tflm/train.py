"""TODO docstring."""

import argparse
import os
import sys
from tflm.atomic import check_persistent
from tflm.config import dump, load_config
from tflm.errors import exit_on_user_error
from tflm.quiet import VERBOSE_HELP, run_command
from tflm.training.strategy import leave_cluster_at_once
from tflm.training.train import train


def parse_args(argv):
    """The command line."""
    parser = argparse.ArgumentParser(prog="python -m tflm.train", description=__doc__.splitlines()[0])
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
    parser.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    return parser.parse_args(argv)


@leave_cluster_at_once
@exit_on_user_error
def main(argv=None):
    """Entry point of `python -m tflm.train` and `tflm train`."""
    args = parse_args(argv)
    overrides = args.set + ([f"runtime.strategy={args.strategy}"] if args.strategy else [])
    overrides += [f"train.init_from={args.init_from}"] if args.init_from else []
    config = load_config(args.config, overrides, saved=is_own_config(args.config, args.run_dir))
    if args.print_config:
        print(dump(config), end="")
        return 0
    for option, path in (("--run-dir", args.run_dir), ("data.store", config.data.store)):
        if path:
            check_persistent(path, option)
    command = ["python", "-m", "tflm.train", *(sys.argv[1:] if argv is None else argv)]
    train(config, args.run_dir, restart=args.restart, command=command)
    return 0


def is_own_config(config_path, run_dir):
    """Whether `config_path` is the config.yaml that `run_dir` saved (resuming with it as --config)."""
    if not config_path or not run_dir:
        return False
    return os.path.normpath(config_path) == os.path.normpath(os.path.join(run_dir, "config.yaml"))


if __name__ == "__main__":
    sys.exit(run_command(main))

"""The one exception type for problems a user can fix, and the CLI wrapper that prints it."""

import functools
import sys


class TflmError(Exception):
    """A problem with the user's input: printed as one line, exit code 2."""


def exit_on_user_error(main):
    """Wrap a command-line `main` so a TflmError prints one line and exits 2."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except TflmError as error:
            print(f"tflm: error: {error}", file=sys.stderr, flush=True)
            sys.exit(2)

    return wrapper

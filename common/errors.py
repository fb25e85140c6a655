"""One-line user errors for every command-line tool of the project."""

import functools
import sys


class UserError(Exception):
    """A mistake in the user's input: printed as one line, never as a traceback.

    Args:
      message: what is wrong, where, and how to fix it.
      exit_code: process exit status (2 = bad input, 64 = bad usage/config key, as `os.EX_USAGE`).
    """

    def __init__(self, message, exit_code=2):
        super().__init__(message)
        self.exit_code = exit_code


def cli_main(func):
    """Decorate a `main(argv=None)` so that a UserError prints `error: ...` and exits non-zero."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(err.exit_code)

    return wrapper

"""One way for every command-line entry point to report a user's mistake: one line ``error: ...``, exit code 2.

Only the error types that mean "the input was wrong" are caught (an unknown model name, a missing or
unreadable file, a spec or value that fails validation, weights that do not fit); anything else is a bug and
keeps its traceback. Set ``ZOO_DEBUG=1`` to see the traceback of a caught error too.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any

from backbones import SpecError

from .api import UnknownModelError

#: Exceptions that report bad user input; their message is shown as ``error: <message>``.
USER_ERRORS: tuple[type[BaseException], ...] = (
    SpecError,
    UnknownModelError,
    FileNotFoundError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
    ValueError,
)


def error_message(err: BaseException) -> str:
    """The one-line text of a user error (KeyError's quotes dropped, newlines folded)."""
    text = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
    if isinstance(err, OSError) and err.filename is not None and str(err.filename) not in text:
        text = f'{text}: {err.filename}'
    return ' '.join(text.split()) or type(err).__name__


def run_cli(main: Callable[..., Any], *args: Any, prog: str | None = None, **kwargs: Any) -> int:
    """Call ``main(*args, **kwargs)``; a known user error prints ``<prog>: error: <message>`` and returns 2.

    A ``SystemExit`` (argparse's own errors, ``--help``) passes through unchanged; an ``int`` result is returned,
    anything else counts as success.
    """
    try:
        result = main(*args, **kwargs)
    except USER_ERRORS as err:
        if os.environ.get('ZOO_DEBUG'):
            raise
        name = prog or os.path.basename(sys.argv[0]) or 'zoo'
        print(f'{name}: error: {error_message(err)}', file=sys.stderr)
        return 2
    return result if isinstance(result, int) else 0


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (a batch size, a count of steps or iterations)."""
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f'must be a positive integer, got {value}')
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0 (warm-up iterations, a seed)."""
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f'must be an integer >= 0, got {value}')
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'not an integer: {text!r}') from None

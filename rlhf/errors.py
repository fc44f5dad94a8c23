"""User-facing errors: bad config, bad data, missing paths.

The CLI turns an `RLHFError` into one line on stderr and a non-zero exit; a traceback means a bug of ours.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TypeVar

from rlhf import _compat

EXIT_USER_ERROR = 2


class RLHFError(Exception):
    """An error the user can fix (config, data, paths). Its message is one line."""


class ConfigError(RLHFError):
    """A bad config key, value or type."""


class DataError(RLHFError):
    """A bad input file or record. The message names the file, the record and the field."""

    def __init__(
        self, reason: str, *, file: str | None = None, record: int | str | None = None, field: str | None = None
    ):
        self.reason, self.file, self.record, self.field = reason, file, record, field
        where = [str(file)] if file is not None else []
        if record is not None:
            where.append(f"record {record}")
        if field is not None:
            where.append(f"field '{field}'")
        super().__init__(": ".join(where + [reason]))


F = TypeVar("F", bound=Callable)

EXIT_INTERRUPTED = 130  # what a shell reports for a command that Ctrl-C stopped (128 + SIGINT)
RUN_AGAIN = "stopped before it finished; run the same command again"


def exits_cleanly(main: F | None = None, *, on_interrupt: str = RUN_AGAIN):
    """Wrap a CLI entry point: an RLHFError becomes `error: <message>` and exit code 2; Ctrl-C becomes
    `interrupted: <on_interrupt>` (what was stopped, how to go on) and exit code 130. Neither prints a traceback.

    Used bare (`@exits_cleanly`) or with the entry point's own words for Ctrl-C
    (`@exits_cleanly(on_interrupt=...)`)."""

    def wrap(main: F) -> F:
        @functools.wraps(main)
        def wrapper(*args, **kwargs):
            try:
                return main(*args, **kwargs)
            except RLHFError as error:
                _compat.close_progress_bars()  # or one redraws itself below the line at exit
                message = " ".join(str(error).split())  # one line, whatever the message held
                print(f"error: {message}", file=sys.stderr)
                sys.exit(EXIT_USER_ERROR)
            except KeyboardInterrupt:
                _compat.close_progress_bars()
                print(f"interrupted: {on_interrupt}", file=sys.stderr, flush=True)
                sys.exit(EXIT_INTERRUPTED)

        return wrapper  # type: ignore[return-value]

    return wrap(main) if main is not None else wrap

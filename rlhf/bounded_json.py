"""JSON parsing with a bound on nesting, and reading of small JSON files with a bound on size.

`json.loads` recurses once per level of nesting, and so do `json.dumps` and our own walks over a parsed value: a
record nested 10^5 levels deep ends in RecursionError wherever it goes first. The depth is checked on the text,
before anything parses it, against a bound far above real exports and far below Python's recursion limit (1000).
Files that are small by nature (a model directory's config and tokenizer files) are read up to a cap, so that
one that is a link to /dev/zero is refused after the cap, not after the memory runs out.
"""

from __future__ import annotations

import json
import os
import re
from itertools import accumulate
from typing import Any

from rlhf.errors import DataError

# Real exports nest a few levels; an OASST tree, the deepest format we read, adds two a conversation turn.
MAX_NESTING = 100
# The largest JSON files of a model directory are tokenizer.json files of large vocabularies: tens of MB.
MAX_SMALL_FILE_BYTES = 64 * 2**20

# A JSON string (whose brackets are text), or a run of anything else but brackets.
_NOT_NESTING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[^\[\]{}"]+')
_DEPTH_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


class NestedTooDeep(ValueError):
    """JSON text nested deeper than MAX_NESTING levels (a ValueError, as json's own decode errors are)."""


def nested_deeper_than(text: str, levels: int) -> bool:
    """Whether the JSON `text` nests arrays and objects more than `levels` deep, decided without recursion.

    Everything but the brackets outside strings is dropped in one regex pass, then the depth is the running sum
    of +1 per opening and -1 per closing bracket, summed in C (accumulate over map), so that a long record pays
    about what a parse costs. Text cut short (no closing brackets) counts as deep as it goes, since json.loads
    would recurse that far before it found the end missing.
    """
    if text.count("[") + text.count("{") <= levels:  # too few brackets to nest that deep: the common case
        return False
    brackets = _NOT_NESTING.sub("", text)
    return max(accumulate(map(_DEPTH_STEP.__getitem__, brackets)), default=0) > levels


def loads(text: str) -> Any:
    """`json.loads`, with NestedTooDeep instead of RecursionError (or a parse) for text over MAX_NESTING deep."""
    if nested_deeper_than(text, MAX_NESTING):
        raise NestedTooDeep(f"nested deeper than {MAX_NESTING} levels")
    return json.loads(text)


def size_text(count: int) -> str:
    """A size bound as messages give it: "64 MiB", or bytes below one MiB."""
    return f"{count / 2**20:g} MiB" if count >= 2**20 else f"{count} bytes"


def read_small_json(path: str | os.PathLike, max_bytes: int | None = None) -> Any:
    """The JSON value of a file that is small by nature; a DataError naming it when it is bigger than
    `max_bytes` (MAX_SMALL_FILE_BYTES), unreadable, not UTF-8, not JSON, or nested too deep."""
    max_bytes = MAX_SMALL_FILE_BYTES if max_bytes is None else max_bytes
    try:
        with open(path, "rb") as file:
            data = file.read(max_bytes + 1)  # never more: the file may be a link to a device that never ends
    except OSError as error:
        raise DataError(f"cannot be read ({error.strerror or type(error).__name__})", file=str(path)) from None
    if len(data) > max_bytes:
        raise DataError(
            f"is over {size_text(max_bytes)}, far more than a JSON file of its kind holds: refused "
            "unread (a link to a device, or a damaged file?)",
            file=str(path),
        )
    try:
        return loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise DataError("is not UTF-8 text", file=str(path)) from None
    except json.JSONDecodeError as error:
        raise DataError(f"is not valid JSON ({error.msg} at line {error.lineno})", file=str(path)) from None
    except NestedTooDeep as error:
        raise DataError(str(error), file=str(path)) from None

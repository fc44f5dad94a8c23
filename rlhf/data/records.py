"""Read the records of a data file, whatever container holds them.

Containers: a JSON list (or an object with an "items" list, as REST APIs answer), JSON Lines (also gzipped, and
also when named `.json`: Stanford SHP ships JSON Lines as `train.json`), CSV with a header, parquet, and a
`datasets` `save_to_disk` directory, a hub snapshot folder of parquet files (as `huggingface_hub.snapshot_download`
leaves it: `DIR` when it holds one split, `DIR:SPLIT` to pick one), and a dataset on the Hugging Face hub by name
(`owner/name:split` or `owner/name:config:split`), read through `datasets.load_dataset` (offline: from the local
cache). Records are numbered from 1: the line number in JSON Lines, the element in a
JSON list, the data row in CSV, parquet and `datasets`. A record that cannot be parsed (not JSON, not UTF-8,
nested deeper than `bounded_json.MAX_NESTING`) is yielded with `error` set, so that importers can quarantine it
instead of stopping the whole file.

Reading is bounded, so that a hostile or broken file is a one-line DataError rather than a MemoryError: JSON Lines
and CSV are read a line at a time, a line at most MAX_RECORD_BYTES; a whole JSON document at most
MAX_DOCUMENT_BYTES; a gzip file that inflates like a decompression bomb is refused as it inflates.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import gzip
import io
import json
import os
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import count
from pathlib import Path
from typing import Any, BinaryIO

from rlhf import bounded_json
from rlhf.bounded_json import size_text
from rlhf.errors import DataError

# One record (a line of JSON Lines, a CSV field) is at most this big. A longer line is refused once this much of
# it is read, never read whole: a file of one endless line, or a decompression bomb, fails fast in bounded memory.
MAX_RECORD_BYTES = 64 * 2**20
# A .json file that is one document (a list of records) is parsed whole, so it is bounded too; JSON Lines stream.
MAX_DOCUMENT_BYTES = 256 * 2**20
# JSON and CSV text compress 3 to 20 times; a decompression bomb (a byte repeated) 1000 times. A gzip file
# inflating past GZIP_RATIO_CHECKED_AFTER_BYTES at over MAX_GZIP_RATIO times the compressed bytes read is refused,
# even when its lines are short: read a line at a time, a bomb of empty lines would take minutes to get through.
MAX_GZIP_RATIO = 100
GZIP_RATIO_CHECKED_AFTER_BYTES = 8 * 2**20
_LINES_SUFFIXES = (".jsonl", ".jsonl.gz", ".ndjson")


@dataclass(frozen=True)
class RawRecord:
    number: int
    value: Any = None
    error: str | None = None  # why the record could not be read, short enough to count ("not valid JSON")
    detail: str | None = None  # the specifics of that error ("Expecting value")

    @property
    def problem(self) -> str:
        """The error with its detail, as one line: "not valid JSON (Expecting value)"."""
        return f"{self.error} ({self.detail})" if self.detail else str(self.error)


def read_records(path: str | os.PathLike) -> Iterator[RawRecord]:
    """Yield the records of `path`; raise DataError if it is missing, empty or not any container we know."""
    if not Path(path).exists():
        folder, _, split = str(path).rpartition(":")
        if folder and split and Path(folder).is_dir():
            yield from _hub_snapshot(Path(folder), split)
            return
        if hub_reference(str(path)) is not None:
            yield from _hub_dataset(str(path))
            return
    path = Path(path)
    if not path.exists():
        raise DataError("no such file or directory", file=str(path))
    if path.is_dir():
        if not _is_saved_dataset(path) and any(path.rglob("*.parquet")):
            yield from _hub_snapshot(path, None)
        else:
            yield from _dataset_directory(path)
        return
    name = path.name.lower()
    if name.endswith(".parquet"):
        yield from _parquet(path)
    elif name.endswith((".csv", ".tsv")):
        yield from _csv(path, delimiter="\t" if name.endswith(".tsv") else ",")
    else:
        yield from _json_or_lines(path)


_HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")
_FILE_SUFFIXES = (".json", ".jsonl", ".csv", ".tsv", ".parquet", ".gz", ".txt")


def hub_reference(reference: str) -> tuple[str, str | None, str] | None:
    """(name, config, split) of `owner/name[:config]:split` (split defaults to train); None for anything that
    reads as a file path instead (a file suffix, more than one slash)."""
    name, *rest = reference.split(":")
    if not _HUB_NAME.fullmatch(name) or name.lower().endswith(_FILE_SUFFIXES) or len(rest) > 2 or not all(rest):
        return None
    config = rest[0] if len(rest) == 2 else None
    return name, config, rest[-1] if rest else "train"


def _hub_dataset(reference: str) -> Iterator[RawRecord]:
    name, config, split = hub_reference(reference)
    from datasets import load_dataset

    try:
        rows = load_dataset(name, config, split=split)
    except Exception as error:  # datasets raises many types: missing split, offline, unknown name
        raise DataError(
            f"no such file, and not loadable as hub dataset {name!r} (config {config}, split "
            f"{split!r}): {_first_line(error)}",
            file=reference,
        ) from None
    for number, row in enumerate(rows, start=1):
        yield RawRecord(number, row)


class _LineTooLong(Exception):
    """A line over MAX_RECORD_BYTES: what reads it turns this into a DataError naming its record."""


class _GzipBombGuard(io.RawIOBase):
    """The inflated bytes of a gzip file, refused once they pass GZIP_RATIO_CHECKED_AFTER_BYTES at over
    MAX_GZIP_RATIO times the compressed bytes read so far."""

    def __init__(self, compressed: BinaryIO, path: Path):
        self._compressed, self._path, self._inflated_bytes = compressed, path, 0
        self._inflated = gzip.GzipFile(fileobj=compressed)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        read = self._inflated.readinto(buffer)
        self._inflated_bytes += read
        if (
            self._inflated_bytes > GZIP_RATIO_CHECKED_AFTER_BYTES
            and self._inflated_bytes > MAX_GZIP_RATIO * self._compressed.tell()
        ):
            raise DataError(
                f"inflates to over {MAX_GZIP_RATIO} times its compressed size, as a decompression bomb "
                "does: refused before it inflates further",
                file=str(self._path),
            )
        return read


@contextlib.contextmanager
def _bytes_of(path: Path) -> Iterator[BinaryIO]:
    """The file's bytes, inflated when it is gzipped; a file that cannot be read is a one-line DataError."""
    try:
        with open(path, "rb") as file:
            yield io.BufferedReader(_GzipBombGuard(file, path)) if path.name.lower().endswith(".gz") else file
    except EOFError:  # gzip's answer to a file cut short (download or copy interrupted)
        raise DataError("gzip file is truncated (it ends before its end-of-stream marker)", file=str(path)) from None
    except (OSError, zlib.error) as error:  # zlib.error: a gzip file whose compressed data is damaged
        raise DataError(
            f"cannot be read ({' '.join(str(error).split()) or type(error).__name__})", file=str(path)
        ) from None


def _lines_of(stream: BinaryIO) -> Iterator[tuple[int, bytes]]:
    """(line number, line with its end) for each line, the first without a UTF-8 byte-order mark (Excel and
    Windows tools write one); _LineTooLong for a line over MAX_RECORD_BYTES, read no further than that."""
    for number in count(1):
        line = stream.readline(MAX_RECORD_BYTES + 1)
        if not line:
            return
        if len(line) > MAX_RECORD_BYTES and not line.endswith(b"\n"):
            raise _LineTooLong(number)
        yield number, line.removeprefix(codecs.BOM_UTF8) if number == 1 else line


def _too_big(path: Path, record: int) -> DataError:
    return DataError(
        f"is over {size_text(MAX_RECORD_BYTES)}, the most one record may be: refused unread (one "
        "endless line, or a decompression bomb?)",
        file=str(path),
        record=record,
    )


def _record(number: int, data: bytes | str) -> RawRecord:
    """One record's JSON text parsed, or a RawRecord saying why it cannot be."""
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        return RawRecord(number, bounded_json.loads(text))
    except UnicodeDecodeError:
        return RawRecord(number, None, "not UTF-8 text")
    except bounded_json.NestedTooDeep as error:
        return RawRecord(number, None, str(error))
    except json.JSONDecodeError as error:
        return RawRecord(number, None, "not valid JSON", error.msg)


def _json_or_lines(path: Path) -> Iterator[RawRecord]:
    if path.name.lower().endswith(_LINES_SUFFIXES) or _is_json_lines(path):
        yield from _json_lines(path)
    else:
        yield from _json_document(path)


def _is_json_lines(path: Path) -> bool:
    """Whether a file not named as JSON Lines holds them (Stanford SHP ships JSON Lines as `train.json`): its first
    line is a whole JSON value (a pretty-printed document's is "[" or "{") and another line follows."""
    with _bytes_of(path) as stream:
        non_blank = (line for _, line in _lines_of(stream) if line.strip())
        try:
            first, second = next(non_blank, None), next(non_blank, None)
        except _LineTooLong:  # a one-line document, or a line no reader takes: either way not read as lines
            return False
    return second is not None and _record(1, first).error not in ("not valid JSON", "not UTF-8 text")


def _json_lines(path: Path) -> Iterator[RawRecord]:
    """The records of a JSON Lines file, read a line at a time; blank lines are skipped but keep their number."""
    empty = True
    with _bytes_of(path) as stream:
        try:
            for number, line in _lines_of(stream):
                if line.strip():
                    empty = False
                    yield _record(number, line)
        except _LineTooLong as error:
            raise _too_big(path, error.args[0]) from None
    if empty:
        raise DataError("file is empty", file=str(path))


def _json_document(path: Path) -> Iterator[RawRecord]:
    """The records of a file that is one JSON document: a list of them, {"items": [...]} (as REST APIs answer),
    or one record. A record nested too deep is yielded with its error and the others read, when the list is the
    document."""
    with _bytes_of(path) as stream:
        data = stream.read(MAX_DOCUMENT_BYTES + 1)
    if len(data) > MAX_DOCUMENT_BYTES:
        raise DataError(
            f"is one JSON document over {size_text(MAX_DOCUMENT_BYTES)}, too big to parse whole: write "
            "its records as JSON Lines, one a line (for a list: jq -c '.[]' FILE > FILE.jsonl)",
            file=str(path),
        )
    try:
        text = data.decode("utf-8-sig")  # utf-8-sig: without the byte-order mark that Windows tools write
    except UnicodeDecodeError:
        raise DataError("cannot be read as UTF-8 text", file=str(path)) from None
    if not text.strip():
        raise DataError("file is empty", file=str(path))
    try:
        document = bounded_json.loads(text)
    except bounded_json.NestedTooDeep as error:
        document = _record_texts(text)
        if document is None:
            raise DataError(str(error), file=str(path)) from None
        yield from (_record(number, element) for number, element in enumerate(document, start=1))
        return
    except json.JSONDecodeError as error:
        raise DataError(f"not valid JSON ({error.msg} at line {error.lineno})", file=str(path)) from None
    if isinstance(document, dict) and isinstance(document.get("items"), list):
        document = document["items"]
    if not isinstance(document, list):
        document = [document]
    for number, value in enumerate(document, start=1):
        yield RawRecord(number, value)


# A JSON string (skipped whole: its brackets and commas are text), a bracket or a comma.
_STRUCTURE = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{},]')


def _record_texts(text: str) -> list[str] | None:
    """The texts of the records of a JSON document, the elements of the list it is or of its "items" list, cut at
    the list's commas without parsing (None when it has no such list): how the other records of a document are
    read when one of them nests too deep to parse."""
    depth, key, start, records = 0, None, None, []
    for mark in _STRUCTURE.finditer(text):
        character = text[mark.start()]
        if character == '"':
            key = mark.group() if depth == 1 else key  # at the top of an object, a list's key is the string before it
            continue
        if character in "[{":
            depth += 1
            if start is None and character == "[" and (depth == 1 or (depth == 2 and key == '"items"')):
                start, list_depth = mark.end(), depth
            continue
        if start is not None and depth == list_depth:  # a comma between records, or the end of the list
            if text[start : mark.start()].strip():
                records.append(text[start : mark.start()])
            if character != ",":
                return records
            start = mark.end()
        if character != ",":
            depth -= 1
    return None


def _csv(path: Path, delimiter: str) -> Iterator[RawRecord]:
    """The data rows of a CSV file, read a row at a time, each cell at most MAX_RECORD_BYTES."""
    csv.field_size_limit(MAX_RECORD_BYTES)  # Label Studio and Argilla cells hold whole responses: over csv's 128 KiB
    number = 0
    with _bytes_of(path) as stream:
        try:
            reader = csv.DictReader((line.decode("utf-8") for _, line in _lines_of(stream)), delimiter=delimiter)
            if not reader.fieldnames:
                raise DataError("CSV file has no header row", file=str(path))
            for number, row in enumerate(reader, start=1):
                yield RawRecord(number, dict(row))
        except _LineTooLong:
            raise _too_big(path, number + 1) from None
        except UnicodeDecodeError:
            raise DataError("not UTF-8 text", file=str(path), record=number + 1) from None
        except csv.Error as error:
            raise DataError(f"not valid CSV ({error})", file=str(path), record=number + 1) from None


def _parquet(path: Path) -> Iterator[RawRecord]:
    try:
        import pyarrow.parquet as parquet  # comes with `datasets`; imported here to keep this module light
    except ImportError:
        raise DataError("reading parquet needs pyarrow (pip install pyarrow)", file=str(path)) from None
    try:
        rows = parquet.read_table(path).to_pylist()
    except Exception as error:  # pyarrow raises several unrelated types for a bad file
        raise DataError(f"not a parquet file ({error.__class__.__name__})", file=str(path)) from None
    for number, row in enumerate(rows, start=1):
        yield RawRecord(number, row)


def _is_saved_dataset(path: Path) -> bool:
    return any((path / marker).exists() for marker in ("dataset_info.json", "state.json", "dataset_dict.json"))


def _hub_snapshot(folder: Path, split: str | None) -> Iterator[RawRecord]:
    """The rows of one split of a hub snapshot folder (parquet files; splits from its README's `configs` or the
    file names, as `datasets` reads a hub repository), streamed from the files: nothing is cached or fetched."""
    from datasets import get_dataset_split_names, load_dataset

    where = str(folder) if split is None else f"{folder}:{split}"
    try:
        splits = get_dataset_split_names(str(folder))
    except Exception as error:  # datasets raises many types: no data files, several configs, bad YAML
        raise DataError(f"not a readable hub snapshot folder: {_first_line(error)}", file=where) from None
    if split is None and len(splits) != 1:
        raise DataError(f"hub snapshot folder holds splits {', '.join(splits)}: name one as {folder}:SPLIT", file=where)
    split = split or splits[0]
    if split not in splits:
        raise DataError(f"hub snapshot folder has no split {split!r} (splits: {', '.join(splits)})", file=where)
    for number, row in enumerate(load_dataset(str(folder), split=split, streaming=True), start=1):
        yield RawRecord(number, row)


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def _dataset_directory(path: Path) -> Iterator[RawRecord]:
    if not _is_saved_dataset(path):
        raise DataError(
            "directory is not a `datasets` save_to_disk directory (nor a hub snapshot folder of parquet files)",
            file=str(path),
        )
    from datasets import DatasetDict, load_from_disk

    loaded = load_from_disk(str(path))
    splits = loaded.values() if isinstance(loaded, DatasetDict) else [loaded]
    number = 0
    for split in splits:
        for row in split:
            number += 1
            yield RawRecord(number, row)

"""Read the records of a data file, whatever container holds them.

Containers: a JSON list (or an object with an "items" list, as REST APIs answer), JSON Lines (also gzipped, and
also when named `.json`: Stanford SHP ships JSON Lines as `train.json`), CSV with a header, parquet, and a
`datasets` `save_to_disk` directory, a hub snapshot folder of parquet files (as `huggingface_hub.snapshot_download`
leaves it: `DIR` when it holds one split, `DIR:SPLIT` to pick one), and a dataset on the Hugging Face hub by name
(`owner/name:split` or `owner/name:config:split`), read through `datasets.load_dataset` (offline: from the local
cache). Records are numbered from 1: the line number in JSON Lines, the element in a
JSON list, the data row in CSV, parquet and `datasets`. A record that cannot be parsed is yielded with `error` set,
so that importers can quarantine it instead of stopping the whole file.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from rlhf.errors import DataError

# Label Studio and Argilla CSV cells hold whole responses; the csv module's default limit is 128 KiB.
_CSV_FIELD_LIMIT = 2**31 - 1


@dataclass(frozen=True)
class RawRecord:
    number: int
    value: Any = None
    error: str | None = None


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
        yield from _json_or_lines(path, _read_text(path))


_HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")
_FILE_SUFFIXES = (".json", ".jsonl", ".csv", ".tsv", ".parquet", ".gz", ".txt")


def hub_reference(reference: str) -> tuple[str, str | None, str] | None:
    """(name, config, split) of `owner/name[:config]:split` (split defaults to train); None for anything that
    reads as a file path instead (a file suffix, more than one slash)."""
    name, *rest = reference.split(":")
    if not _HUB_NAME.fullmatch(name) or name.lower().endswith(_FILE_SUFFIXES) or len(rest) > 2 \
            or not all(rest):
        return None
    config = rest[0] if len(rest) == 2 else None
    return name, config, rest[-1] if rest else "train"


def _hub_dataset(reference: str) -> Iterator[RawRecord]:
    name, config, split = hub_reference(reference)
    from datasets import load_dataset

    try:
        rows = load_dataset(name, config, split=split)
    except Exception as error:  # datasets raises many types: missing split, offline, unknown name
        raise DataError(f"no such file, and not loadable as hub dataset {name!r} (config {config}, split "
                        f"{split!r}): {_first_line(error)}", file=reference) from None
    for number, row in enumerate(rows, start=1):
        yield RawRecord(number, row)


def _read_text(path: Path) -> str:
    """The file's text; "utf-8-sig" drops the byte-order mark that Excel and Windows tools put before CSV and JSON."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8-sig") as file:
            text = file.read()
    except EOFError:  # gzip's answer to a file cut short (download or copy interrupted)
        raise DataError("gzip file is truncated (it ends before its end-of-stream marker)", file=str(path)) from None
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"cannot be read as UTF-8 text ({error.__class__.__name__})", file=str(path)) from None
    if not text.strip():
        raise DataError("file is empty", file=str(path))
    return text


def _json_or_lines(path: Path, text: str) -> Iterator[RawRecord]:
    lines_by_name = path.name.lower().endswith((".jsonl", ".jsonl.gz", ".ndjson"))
    if not lines_by_name:
        try:
            document = json.loads(text)
        except json.JSONDecodeError as error:
            # "Extra data" means several JSON values one after another: JSON Lines under a .json name.
            if not error.msg.startswith("Extra data"):
                raise DataError(f"not valid JSON ({error.msg} at line {error.lineno})", file=str(path)) from None
        else:
            if isinstance(document, dict) and isinstance(document.get("items"), list):
                document = document["items"]
            if not isinstance(document, list):
                document = [document]
            for number, value in enumerate(document, start=1):
                yield RawRecord(number, value)
            return
    yield from _lines(text)


def _lines(text: str) -> Iterator[RawRecord]:
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield RawRecord(number, json.loads(line))
        except json.JSONDecodeError as error:
            yield RawRecord(number, None, f"not valid JSON ({error.msg})")


def _csv(path: Path, delimiter: str) -> Iterator[RawRecord]:
    csv.field_size_limit(_CSV_FIELD_LIMIT)
    reader = csv.DictReader(io.StringIO(_read_text(path), newline=""), delimiter=delimiter)
    if not reader.fieldnames:
        raise DataError("CSV file has no header row", file=str(path))
    for number, row in enumerate(reader, start=1):
        yield RawRecord(number, dict(row))


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
        raise DataError(f"hub snapshot folder holds splits {', '.join(splits)}: name one as {folder}:SPLIT",
                        file=where)
    split = split or splits[0]
    if split not in splits:
        raise DataError(f"hub snapshot folder has no split {split!r} (splits: {', '.join(splits)})", file=where)
    for number, row in enumerate(load_dataset(str(folder), split=split, streaming=True), start=1):
        yield RawRecord(number, row)


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def _dataset_directory(path: Path) -> Iterator[RawRecord]:
    if not _is_saved_dataset(path):
        raise DataError("directory is not a `datasets` save_to_disk directory (nor a hub snapshot folder of parquet "
                        "files)", file=str(path))
    from datasets import DatasetDict, load_from_disk

    loaded = load_from_disk(str(path))
    splits = loaded.values() if isinstance(loaded, DatasetDict) else [loaded]
    number = 0
    for split in splits:
        for row in split:
            number += 1
            yield RawRecord(number, row)

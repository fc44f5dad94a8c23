"""Reading record files (JSONL, JSON, CSV, or a `datasets` directory) with errors that name the place.

`datasets` reads large files well but reports a bad line as a pyarrow traceback; users need
`file: record N: reason` instead, so JSON Lines are parsed here line by line.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from rlhf.errors import DataError


def read_records(path: str) -> list[dict[str, Any]]:
    """Every record of a data file as a dict. Records are numbered from 1, as an editor shows lines."""
    file = Path(path)
    if not file.exists():
        raise DataError("file not found", file=path)
    if file.is_dir():
        return _read_datasets_directory(path)
    suffix = file.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return _read_json_lines(path)
    if suffix == ".json":
        return _read_json(path)
    if suffix in (".csv", ".tsv"):
        with open(file, newline="", encoding="utf-8") as handle:
            return [dict(row) for row in csv.DictReader(handle, delimiter="\t" if suffix == ".tsv" else ",")]
    raise DataError("unknown file type (expected .jsonl, .json, .csv, .tsv or a `datasets` directory)", file=path)


def _read_json_lines(path: str) -> list[dict[str, Any]]:
    records = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(f"not valid JSON ({error.msg} at column {error.colno})", file=path, record=number) from None
            if not isinstance(record, dict):
                raise DataError("each line must be a JSON object", file=path, record=number)
            records.append(record)
    return records


def _read_json(path: str) -> list[dict[str, Any]]:
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise DataError(f"not valid JSON ({error.msg} at line {error.lineno})", file=path) from None
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise DataError("a .json data file must hold a list of objects (use .jsonl for one object per line)", file=path)
    return value


def _read_datasets_directory(path: str) -> list[dict[str, Any]]:
    import datasets

    try:
        loaded = datasets.load_from_disk(path)
    except FileNotFoundError:
        raise DataError("directory is not a saved `datasets` Dataset (save_to_disk)", file=path) from None
    if isinstance(loaded, datasets.DatasetDict):
        if "train" not in loaded:
            raise DataError(f"DatasetDict has no 'train' split (has {sorted(loaded)})", file=path)
        loaded = loaded["train"]
    return loaded.to_list()

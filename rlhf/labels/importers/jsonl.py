"""Our ranking JSONL and TRL preference JSONL (prompt/chosen/rejected) -> rankings, bad lines quarantined.

`rlhf.data.rankings.read_rankings` reads the same files strictly (first bad line is an error) for training; this
importer is the lenient road for files from elsewhere: every bad line goes to quarantine with its reason.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from rlhf.data.rankings import ranking_from_record
from rlhf.errors import DataError
from rlhf.labels.importers.base import Imported, Skipped, each_record, invalid


def read_jsonl(paths: Sequence[str]) -> Iterator:
    """Yield RecordsRead, Imported and Skipped events for ranking or TRL pair files (or `datasets` dirs)."""
    return each_record(paths, "a ranking or TRL preference file", _problem_with, _ranking, check_each=False)


def _problem_with(record: Any) -> str | None:
    if isinstance(record, dict) and ({"completions", "ranks"} <= set(record) or {"chosen", "rejected"} <= set(record)):
        return None
    return "records have neither 'completions' and 'ranks' nor 'chosen' and 'rejected'"


def _ranking(path: str, number: int, record: Any) -> Imported | Skipped:
    try:
        return Imported(ranking_from_record(record, default_id=f"{Path(path).name}:{number}"), path, number)
    except DataError as error:
        return invalid(path, number, error, record)

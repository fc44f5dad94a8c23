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
from rlhf.labels.importers.base import Imported, RecordsRead, invalid, left_out, records_by_file


def read_jsonl(paths: Sequence[str]) -> Iterator:
    """Yield RecordsRead, Imported and Skipped events for ranking or TRL pair files (or `datasets` dirs)."""
    for path, records in records_by_file(paths, "a ranking or TRL preference file", _problem_with):
        yield RecordsRead(path, len(records))
        for raw in records:
            if raw.error:
                yield left_out(path, raw)
                continue
            try:
                ranking = ranking_from_record(raw.value, default_id=f"{Path(path).name}:{raw.number}")
            except DataError as error:
                yield invalid(path, raw.number, error, raw.value)
            else:
                yield Imported(ranking, path, raw.number)


def _problem_with(record: Any) -> str | None:
    if isinstance(record, dict) and ({"completions", "ranks"} <= set(record) or {"chosen", "rejected"} <= set(record)):
        return None
    return "records have neither 'completions' and 'ranks' nor 'chosen' and 'rejected'"

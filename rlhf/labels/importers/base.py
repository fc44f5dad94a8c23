"""What every importer yields, and how a stream of it becomes rankings, a quarantine and counts.

An importer is a generator over its tool's export files that yields three kinds of events:
- `RecordsRead(source, count)`: how many top-level records a file held (tasks, rows, lines);
- `Imported(ranking, ...)`: one ranking kept, with `flags` for things a person should look at (an untouched
  ranker, a status the export did not keep); `also` lists the other records it was built from (SHP rows of one
  post, an OASST prompt and its ranked replies), so that every record read is accounted for;
- `Skipped(...)`: one record, or one annotation inside a record, left out with a short countable `reason`. `kind`
  says whether it was left out on purpose ("skipped": cancelled, draft, nothing selected) or is malformed
  ("invalid"). Nothing is dropped silently: every Skipped goes to the quarantine file with where it came from.
A file that is not the claimed format at all is a DataError before any event (see `source_records`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Sequence

from rlhf.data.rankings import Ranking, merge_annotators, merge_duplicate_completions
from rlhf.data.records import RawRecord, read_records
from rlhf.errors import DataError


@dataclass(frozen=True)
class RecordsRead:
    source: str
    count: int


@dataclass(frozen=True)
class Imported:
    ranking: Ranking
    source: str
    record: int
    flags: tuple[str, ...] = ()
    also: tuple[int, ...] = ()


@dataclass(frozen=True)
class Skipped:
    source: str
    record: int
    reason: str
    kind: str = "skipped"
    detail: str | None = None
    raw: Any = None
    also: tuple[int, ...] = ()


@dataclass
class ImportReport:
    """The rankings to write, the quarantine entries, and the numbers the CLI summary prints."""

    rankings: list[Ranking] = field(default_factory=list)
    quarantine: list[dict] = field(default_factory=list)
    records_read: int = 0
    skipped: Counter = field(default_factory=Counter)
    flagged: dict[str, list[str]] = field(default_factory=dict)
    duplicates_merged: int = 0
    # (rankings before, rankings after, groups cancelled) when --merge-annotators ran, else None
    annotator_merge: tuple[int, int, int] | None = None

    def k_histogram(self) -> dict[int, int]:
        return dict(sorted(Counter(ranking.k for ranking in self.rankings).items()))

    def annotators(self) -> Counter:
        return Counter(ranking.annotator or "(none)" for ranking in self.rankings)


def source_records(path: str, what: str, problem_with: Callable[[Any], str | None]) -> Iterator[RawRecord]:
    """Records of `path`, after checking that the first readable one is `what`; if not, the file is not that format.

    `problem_with(record)` returns None when the record looks like the format, else a short reason. A record that
    cannot be read (not JSON, nested too deep) says nothing about the format: it comes with its error, to be
    quarantined, and the next one is checked.
    """
    checked = False
    for raw in read_records(path):
        if not checked and raw.error is None:
            problem = problem_with(raw.value)
            if problem:
                raise DataError(f"not {what}: {problem}", file=path)
            checked = True
        yield raw


def build(source: str, record: int, raw: Any, flags: Sequence[str] = (), also: Sequence[int] = (),
          **fields) -> Imported | Skipped:
    """An Imported if the fields make a valid Ranking, else a Skipped naming what is wrong."""
    also = tuple(sorted(set(also) - {record}))  # the other records
    try:
        return Imported(Ranking(**fields), source, record, tuple(flags), also)
    except DataError as error:
        return invalid(source, record, error, raw, also=also)


def each_record(paths: Sequence[str], what: str, problem_with: Callable[[Any], str | None],
                convert: Callable[[str, int, Any], Any]) -> Iterator:
    """The events of a one-record-one-ranking format: RecordsRead per file, then per record a Skipped for one
    that is not JSON or not the format's shape, else whatever `convert(path, number, record)` returns."""
    for path in map(str, paths):
        records = list(source_records(path, what, problem_with))
        yield RecordsRead(path, len(records))
        for raw in records:
            if raw.error:
                yield unparsable(path, raw)
            elif problem_with(raw.value):
                yield invalid(path, raw.number, problem_with(raw.value), raw.value)
            else:
                yield convert(path, raw.number, raw.value)


def invalid(source: str, record: int, error: DataError | str, raw: Any = None, detail: str | None = None,
            also: Sequence[int] = ()) -> Skipped:
    """A Skipped of kind "invalid"; keep `error` countable (no ids in it) and put specifics in `detail`."""
    if isinstance(error, DataError):
        reason = f"field '{error.field}': {error.reason}" if error.field else error.reason
    else:
        reason = error
    return Skipped(source, record, reason, kind="invalid", detail=detail, raw=raw,
                   also=tuple(sorted(set(also) - {record})))


def records_of(event: RecordsRead | Imported | Skipped) -> set[int]:
    """The record numbers an Imported or Skipped accounts for."""
    return {event.record, *event.also} if isinstance(event, (Imported, Skipped)) else set()


def unparsable(source: str, raw: RawRecord) -> Skipped:
    """The Skipped of a record that could not be read: not JSON, not UTF-8, nested too deep."""
    return Skipped(source, raw.number, raw.error, kind="invalid", detail=raw.detail)


def option_list(value: str | Sequence[str] | None) -> list[str] | None:
    """Importer options arrive from the CLI as "a,b,c"; from Python as a list."""
    if value is None:
        return None
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return list(value)


def collect(events: Iterable[RecordsRead | Imported | Skipped], *, merge_annotator_rankings: bool = False
            ) -> ImportReport:
    """Run an importer's events into a report: duplicates merged, optional annotator merge, quarantine built."""
    report = ImportReport()
    for event in events:
        if isinstance(event, RecordsRead):
            report.records_read += event.count
        elif isinstance(event, Skipped):
            _quarantine(report, event)
        else:
            try:
                ranking = merge_duplicate_completions(event.ranking)
            except DataError as error:
                _quarantine(report, invalid(event.source, event.record, error, event.ranking.to_dict(),
                                            also=event.also))
                continue
            report.duplicates_merged += ranking is not event.ranking
            report.rankings.append(ranking)
            for flag in event.flags:
                report.flagged.setdefault(flag, []).append(ranking.id)
    if merge_annotator_rankings:
        before = len(report.rankings)
        report.rankings, cancelled = merge_annotators(report.rankings)
        for group in cancelled:
            _quarantine(report, Skipped("(merge)", 0, "annotators cancel out: equal mean ranks", kind="skipped",
                                        detail=", ".join(r.id for r in group), raw=[r.to_dict() for r in group]))
        report.annotator_merge = (before, len(report.rankings), len(cancelled))
    return report


def _quarantine(report: ImportReport, skipped: Skipped) -> None:
    report.skipped[skipped.reason] += 1
    entry = {"source": skipped.source, "record": skipped.record, "kind": skipped.kind, "reason": skipped.reason,
             "detail": _writable(skipped.detail), "raw": _writable(skipped.raw)}
    if skipped.also:
        entry["also_records"] = list(skipped.also)
    report.quarantine.append(entry)


def _writable(value: Any) -> Any:
    """`value` with lone surrogates written as "\\udXXX" text, so that the quarantine file can be UTF-8."""
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {_writable(key): _writable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_writable(item) for item in value]
    return value

"""What every importer yields, and how a stream of it becomes rankings, a quarantine and counts.

An importer is a generator over its tool's export files that yields three kinds of events:
- `RecordsRead(source, count)`: how many top-level records a file held (tasks, rows, lines);
- `Imported(ranking, ...)`: one ranking kept, with `flags` for things a person should look at (an untouched
  ranker, a status the export did not keep); `also` lists the other records it was built from (SHP rows of one
  post, an OASST prompt and its ranked replies), so that every record read is accounted for;
- `Skipped(...)`: one record, or one annotation inside a record, left out with a short countable `reason`. `kind`
  says whether it was left out on purpose ("skipped": cancelled, draft, nothing selected) or is malformed
  ("invalid"). Nothing is dropped silently: every Skipped goes to the quarantine file with where it came from.
A file that is not the claimed format at all is a DataError before any event (see `records_by_file`). Duplicates:
a record equal to an earlier one, in any file of the import, is kept once and the copy quarantined; different
records that give rankings one id are all kept, the later ids renamed `<id>#2`, ... and flagged (see `unique_ids`).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

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


DUPLICATE_RECORD = "exact duplicate of an earlier record: kept once"


def records_by_file(
    paths: Sequence[str], what: str, problem_with: Callable[[Any], str | None]
) -> Iterator[tuple[str, list[RawRecord]]]:
    """(path, its records) for each path, after checking that the first readable record of each is `what`; if not,
    the file is not that format (a DataError).

    `problem_with(record)` returns None when the record looks like the format, else a short reason. A record that
    cannot be read (not JSON, nested too deep) says nothing about the format: it comes with its error, to be
    quarantined, and the next one is checked. A record equal to one read before, in this file or an earlier one
    (an export imported twice, overlapping exports), comes with error DUPLICATE_RECORD, where the first one is in
    its detail: the same judgement counted twice would weigh double in training.
    """
    first_seen: dict[bytes, str] = {}
    for path in map(str, paths):
        records, checked = [], False
        for raw in read_records(path):
            if raw.error is None:
                if not checked:
                    problem = problem_with(raw.value)
                    if problem:
                        raise DataError(f"not {what}: {problem}", file=path)
                    checked = True
                key = _fingerprint(raw.value)
                if key in first_seen:
                    raw = RawRecord(raw.number, error=DUPLICATE_RECORD, detail=f"the same as {first_seen[key]}")
                else:
                    first_seen[key] = f"record {raw.number} of {path}"
            records.append(raw)
        yield path, records


def _fingerprint(value: Any) -> bytes:
    """A digest of a record's content, the same whatever the order of its keys."""
    try:
        text = json.dumps(value, sort_keys=True, default=str)  # ASCII: lone surrogates are escaped, not an error
    except TypeError:  # keys of several types, from a parquet map column: their order is the file's
        text = repr(value)
    return hashlib.blake2b(text.encode(), digest_size=16).digest()


def build(
    source: str, record: int, raw: Any, flags: Sequence[str] = (), also: Sequence[int] = (), **fields
) -> Imported | Skipped:
    """An Imported if the fields make a valid Ranking, else a Skipped naming what is wrong."""
    also = tuple(sorted(set(also) - {record}))  # the other records
    try:
        prompt, merged = conversation_prompt(fields.get("prompt"))
        ranking = Ranking(**{**fields, "prompt": prompt})
    except DataError as error:
        return invalid(source, record, error, raw, also=also)
    return Imported(ranking, source, record, tuple(flags) + ((REPEATED_ROLES_MERGED,) if merged else ()), also)


REPEATED_ROLES_MERGED = "turns of one role in a row, merged into one turn"


def conversation_prompt(prompt: Any) -> tuple[Any, bool]:
    """(the prompt, whether turns were merged): a chat prompt whose consecutive turns share a role gets them joined
    into one turn (HH-RLHF has a Human speaking twice; chat templates that insist on alternating roles would refuse
    it), and one that ends with the assistant's turn is refused (there is nothing for a completion to answer)."""
    if not isinstance(prompt, list) or not prompt or not all(isinstance(m, dict) for m in prompt):
        return prompt, False
    if prompt[-1].get("role") == "assistant":
        raise DataError(
            "the conversation ends with an assistant turn: no user turn for the completions to answer", field="prompt"
        )
    turns: list[dict] = []
    for message in prompt:
        if (
            turns
            and message.get("role") == turns[-1].get("role")
            and isinstance(message.get("content"), str)
            and isinstance(turns[-1].get("content"), str)
        ):
            turns[-1] = {**turns[-1], "content": turns[-1]["content"] + "\n\n" + message["content"]}
        else:
            turns.append(message)
    return turns, len(turns) < len(prompt)


def each_record(
    paths: Sequence[str],
    what: str,
    problem_with: Callable[[Any], str | None],
    convert: Callable[[str, int, Any], Any],
    *,
    check_each: bool = True,
    end: Callable[[str], Iterable] | None = None,
) -> Iterator:
    """The events of an import: per file its RecordsRead, then per record a Skipped for one that is left out
    (unreadable, a duplicate) or not the format's shape, else what `convert(path, number, record)` returns (an event,
    or an iterable of them), then what `end(path)` yields.

    check_each=False leaves the shape of every record after the first to `convert`, whose reasons are more specific.
    `end` is for formats whose rankings join several records of a file (the rows of an SHP post, the messages of an
    OASST tree): `convert` gathers them, `end` ranks them.
    """
    for path, records in records_by_file(paths, what, problem_with):
        yield RecordsRead(path, len(records))
        for raw in records:
            if raw.error:
                yield left_out(path, raw)
            elif check_each and problem_with(raw.value):
                yield invalid(path, raw.number, problem_with(raw.value), raw.value)
            else:
                events = convert(path, raw.number, raw.value)
                yield from [events] if isinstance(events, (Imported, Skipped)) else events
        if end:
            yield from end(path)


def invalid(
    source: str,
    record: int,
    error: DataError | str,
    raw: Any = None,
    detail: str | None = None,
    also: Sequence[int] = (),
) -> Skipped:
    """A Skipped of kind "invalid"; keep `error` countable (no ids in it) and put specifics in `detail`."""
    if isinstance(error, DataError):
        reason = f"field '{error.field}': {error.reason}" if error.field else error.reason
    else:
        reason = error
    return Skipped(
        source, record, reason, kind="invalid", detail=detail, raw=raw, also=tuple(sorted(set(also) - {record}))
    )


def left_out(source: str, raw: RawRecord) -> Skipped:
    """The Skipped of a record that `records_by_file` left out: a duplicate, or one that could not be read (not
    JSON, not UTF-8, nested too deep)."""
    kind = "skipped" if raw.error == DUPLICATE_RECORD else "invalid"
    return Skipped(source, raw.number, raw.error, kind=kind, detail=raw.detail)


def option_list(value: str | Sequence[str] | None) -> list[str] | None:
    """Importer options arrive from the CLI as "a,b,c"; from Python as a list."""
    if value is None:
        return None
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return list(value)


def collect(
    events: Iterable[RecordsRead | Imported | Skipped], *, merge_annotator_rankings: bool = False
) -> ImportReport:
    """Run an importer's events into a report: duplicate completions merged, optional annotator merge, ids made
    unique, quarantine built."""
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
                _quarantine(
                    report, invalid(event.source, event.record, error, event.ranking.to_dict(), also=event.also)
                )
                continue
            report.duplicates_merged += ranking is not event.ranking
            report.rankings.append(ranking)
            for flag in event.flags:
                report.flagged.setdefault(flag, []).append(ranking.id)
    if merge_annotator_rankings:
        before = len(report.rankings)
        report.rankings, cancelled = merge_annotators(report.rankings)
        for group in cancelled:
            _quarantine(
                report,
                Skipped(
                    "(merge)",
                    0,
                    "annotators cancel out: equal mean ranks",
                    kind="skipped",
                    detail=", ".join(r.id for r in group),
                    raw=[r.to_dict() for r in group],
                ),
            )
        report.annotator_merge = (before, len(report.rankings), len(cancelled))
    report.rankings, renamed = unique_ids(report.rankings)
    if renamed:
        report.flagged[RENAMED_ID] = renamed
    return report


RENAMED_ID = "id shared with an earlier ranking: renamed with a #N suffix"


def unique_ids(rankings: list[Ranking]) -> tuple[list[Ranking], list[str]]:
    """The rankings, each id that an earlier one has renamed `<id>#2`, `<id>#3`, ...; and the new ids.

    Different records can share an id (a prompt id repeated for each annotator, two files whose ids are their
    line numbers): both are kept, as neither is a copy of the other, but the reward model's errors name a ranking
    by its id, so the ids written are unique. The first keeps its id, so that it still finds its source record.
    """
    taken = {ranking.id for ranking in rankings}
    seen, unique, renamed = set(), [], []
    for ranking in rankings:
        if ranking.id in seen:
            suffix = 2
            while f"{ranking.id}#{suffix}" in taken:
                suffix += 1
            ranking = replace(ranking, id=f"{ranking.id}#{suffix}")
            taken.add(ranking.id)
            renamed.append(ranking.id)
        seen.add(ranking.id)
        unique.append(ranking)
    return unique, renamed


def _quarantine(report: ImportReport, skipped: Skipped) -> None:
    report.skipped[skipped.reason] += 1
    entry = {
        "source": skipped.source,
        "record": skipped.record,
        "kind": skipped.kind,
        "reason": skipped.reason,
        "detail": _writable(skipped.detail),
        "raw": _writable(skipped.raw),
    }
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

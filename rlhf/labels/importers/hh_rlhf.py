"""Anthropic HH-RLHF rows -> pairwise rankings, the shared transcript prefix becoming the prompt.

Each line of `train.jsonl.gz` is {"chosen": transcript, "rejected": transcript}, a transcript being
"\\n\\nHuman: ...\\n\\nAssistant: ...", repeated, ending with the assistant turn that was judged. The two
transcripts share every turn but the last, so the prompt is the shared turns (as chat messages) and the two
final assistant turns are the completions. Rows whose transcripts differ earlier, whose final turns are
identical, or whose final turn is empty exist in the real data; they go to quarantine, not to training.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from typing import Any

from rlhf.labels.importers.base import Skipped, build, each_record, invalid

_TURN = re.compile(r"\n\n(Human|Assistant):")
_ROLES = {"Human": "user", "Assistant": "assistant"}


def read_hh_rlhf(paths: Sequence[str]) -> Iterator:
    """Yield RecordsRead, Imported and Skipped events for HH-RLHF JSONL files (gzipped or not)."""
    return each_record(paths, "an HH-RLHF file", _problem_with, _pair, check_each=False)


def _problem_with(record: Any) -> str | None:
    if not isinstance(record, dict) or not all(isinstance(record.get(key), str) for key in ("chosen", "rejected")):
        return "records lack 'chosen' and 'rejected' transcripts"
    if "Assistant:" not in record["chosen"]:
        return "'chosen' is not a Human/Assistant transcript"
    return None


def split_transcript(text: str) -> list[dict[str, str]]:
    """ "\\n\\nHuman: a\\n\\nAssistant: b" -> [{"role": "user", "content": "a"}, {"role": "assistant", ...}]."""
    if text.startswith(("Human:", "Assistant:")):
        text = "\n\n" + text
    parts = _TURN.split(text)
    if parts[0].strip():
        raise ValueError("text before the first turn")
    return [{"role": _ROLES[speaker], "content": content.strip()} for speaker, content in zip(parts[1::2], parts[2::2])]


def _pair(path: str, number: int, row: dict):
    if not isinstance(row, dict) or not all(isinstance(row.get(key), str) for key in ("chosen", "rejected")):
        return invalid(path, number, "row lacks 'chosen' and 'rejected' transcripts", row)
    if row["chosen"] == row["rejected"]:
        return Skipped(path, number, "chosen and rejected are identical", kind="invalid", raw=row)
    try:
        chosen, rejected = split_transcript(row["chosen"]), split_transcript(row["rejected"])
    except ValueError:
        return invalid(path, number, "transcript does not start with a Human or Assistant turn", row)
    if not chosen or not rejected or chosen[-1]["role"] != "assistant" or rejected[-1]["role"] != "assistant":
        return invalid(path, number, "transcript does not end with an assistant turn", row)
    if chosen[:-1] != rejected[:-1]:
        return invalid(path, number, "chosen and rejected differ before their final assistant turn", row)
    for side, transcript in (("chosen (preferred)", chosen), ("rejected", rejected)):
        if not transcript[-1]["content"].strip():
            return invalid(path, number, f"the {side} reply is empty", row)
    return build(
        path,
        number,
        row,
        id=f"{path.rsplit('/', 1)[-1]}:{number}",
        prompt=chosen[:-1],
        completions=(chosen[-1]["content"], rejected[-1]["content"]),
        ranks=(1, 2),
    )

"""Examples longer than a stage may read, handled by one policy in every stage and in the labels export.

`overlong` is one of:
- `drop` (the default): the example is left out; the count goes into the stage's metrics and registry entry, and
  the records into `overlong.jsonl` beside the outputs;
- `truncate`: the prompt is shortened from the left, at a turn boundary where it can (the earliest turns of a
  conversation go first, a leading system message stays), else at a line or word boundary of its text. A
  completion is never cut: an example whose completion leaves no room for a prompt is dropped, and counted;
- `error`: the stage stops, naming how many records are over and the first of them.
If no example fits, the stage stops whatever the policy.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from rlhf.data.chat_template import ChatTemplateError
from rlhf.data.formatting import Prompt, prompt_token_ids, response_ids
from rlhf.errors import DataError
from rlhf.io import write_jsonl_atomically

POLICIES = ("drop", "truncate", "error")
OVERLONG_FILE = "overlong.jsonl"
OVERLONG_HELP = (
    "What to do with an example over the stage's length limit: drop (left out, counted, its records "
    "in overlong.jsonl beside the outputs), truncate (the prompt shortened from the left at a turn "
    "boundary where it can; an example whose completion leaves no room is dropped) or error."
)

Item = TypeVar("Item")


@dataclass
class Fitted(Generic[Item]):
    """What fitting a data set to a length limit kept, shortened and dropped."""

    kept: list[Item]
    what: str  # "demonstrations", "rankings", "prompts"
    limit: str  # the setting behind the limit, e.g. "max_length 256"
    policy: str
    total: int = 0
    dropped: list[dict[str, Any]] = field(default_factory=list)  # {"record", "tokens", "reason"}
    truncated: list[dict[str, Any]] = field(default_factory=list)  # {"record", "tokens", "tokens_after"}

    @property
    def over(self) -> int:
        return len(self.dropped) + len(self.truncated)

    def summary(self, listed_in: str = "") -> str:
        """One line for the log, the metrics and the registry entry ("" when everything fits)."""
        if not self.over:
            return ""
        parts = []
        if self.truncated:
            parts.append(f"{len(self.truncated)} truncated (prompt shortened from the left)")
        if self.dropped:
            parts.append(f"{len(self.dropped)} dropped")
        where = f" ({'records' if self.policy == 'truncate' else 'ids'} in {listed_in})" if listed_in else ""
        return f"{self.over} of {self.total} {self.what} are over {self.limit}: {', '.join(parts)}{where}"

    def metrics(self, prefix: str) -> dict[str, Any]:
        """Counts for a stage's metrics: `<prefix>_over`, `_dropped`, `_truncated` and the summary line."""
        return {
            f"{prefix}_total": self.total,
            f"{prefix}_over": self.over,
            f"{prefix}_dropped": len(self.dropped),
            f"{prefix}_truncated": len(self.truncated),
        }

    def rows(self) -> list[dict[str, Any]]:
        """The records that were over, for `overlong.jsonl`."""
        return [{**row, "what": self.what, "action": "dropped"} for row in self.dropped] + [
            {**row, "what": self.what, "action": "truncated"} for row in self.truncated
        ]


def fit(
    items: Iterable[tuple[Any, Item]],
    *,
    length: Callable[[Item], int],
    max_tokens: int,
    shorten: Callable[[Item], tuple[Item | None, str]],
    policy: str,
    what: str,
    limit: str,
    file: str,
) -> Fitted[Item]:
    """Apply `policy` to (record, item) pairs whose `length(item)` is over `max_tokens`.

    `shorten(item)` returns (the shortened item, "") or (None, the reason it cannot be). Raises DataError when
    `policy` is "error" and some item is over, and when nothing fits.
    """
    if policy not in POLICIES:
        raise DataError(f"overlong must be one of {', '.join(POLICIES)}, not {policy!r}", file=file)
    fitted: Fitted[Item] = Fitted([], what, limit, policy)
    for record, item in items:
        fitted.total += 1
        try:
            tokens = length(item)
        except ChatTemplateError as error:  # a template with rules of its own (alternating roles, no system turn)
            raise DataError(f"{error.file}: {error.reason}", file=file, record=record, field="prompt") from None
        if tokens <= max_tokens:
            fitted.kept.append(item)
            continue
        if policy == "truncate":
            shorter, reason = shorten(item)
            if shorter is not None:
                fitted.kept.append(shorter)
                fitted.truncated.append({"record": record, "tokens": tokens, "tokens_after": length(shorter)})
                continue
        else:
            reason = "over the limit"
        fitted.dropped.append({"record": record, "tokens": tokens, "reason": reason})
    if policy == "error" and fitted.dropped:
        first = fitted.dropped[0]
        raise DataError(
            f"{len(fitted.dropped)} of {fitted.total} {what} are over {limit} (the first: record "
            f"{first['record']}, {first['tokens']} tokens); set overlong: drop or truncate to go on "
            f"without them",
            file=file,
        )
    if fitted.total and not fitted.kept:
        longest = max(row["tokens"] for row in fitted.dropped)
        raise DataError(
            f"none of the {fitted.total} {what} fits {limit} (the longest is {longest} tokens); raise the limit",
            file=file,
        )
    return fitted


# -- shortening a prompt ------------------------------------------------------------------------------------------


def shortened_prompt(tokenizer, prompt: Prompt, max_tokens: int) -> Prompt | None:
    """The prompt cut from the left to at most `max_tokens` tokens, or None when it cannot be.

    A conversation loses its earliest turns first (a leading system message stays, and what remains starts with
    a user turn); if its last turn alone is too long, that turn's text is cut. Text is cut at the latest line
    start that fits, else at a word boundary.
    """
    if max_tokens < 1:
        return None
    fits = lambda candidate: len(prompt_token_ids(tokenizer, candidate)) <= max_tokens  # noqa: E731
    if fits(prompt):
        return prompt
    if isinstance(prompt, str):
        return _cut_text(prompt, fits)
    system = [m for m in prompt[:1] if m.get("role") == "system"]
    turns = prompt[len(system) :]
    for start in range(1, len(turns)):
        if turns[start].get("role") == "user" and fits(system + turns[start:]):
            return system + turns[start:]
    last = turns[-1]
    cut = _cut_text(last["content"], lambda text: fits(system + [{**last, "content": text}]))
    return system + [{**last, "content": cut}] if cut is not None else None


_LINE_START = re.compile(r"(?<=\n)")
_WORD_START = re.compile(r"(?<=\s)(?=\S)")


def _cut_text(text: str, fits: Callable[[str], bool]) -> str | None:
    """`text` without its start, from the earliest line start (else word start) whose remainder `fits`."""
    for boundary in (_LINE_START, _WORD_START):
        starts = sorted({match.start() for match in boundary.finditer(text)} - {0, len(text)})
        start = _first_fitting(starts, lambda at: fits(text[at:]) and bool(text[at:].strip()))
        if start is not None:
            return text[start:]
    return None


def _first_fitting(starts: Sequence[int], fits: Callable[[int], bool]) -> int | None:
    """The smallest start whose remainder fits, by bisection: a later start leaves a shorter remainder."""
    if not starts or not fits(starts[-1]):
        return None
    position = bisect.bisect_left(range(len(starts)), True, key=lambda index: fits(starts[index]))
    return starts[position]


# -- the data sets of the stages ------------------------------------------------------------------------------------


def fit_prompts(
    prompts: Sequence[Prompt], tokenizer, *, max_tokens: int, setting: str, policy: str, file: str
) -> Fitted[Prompt]:
    """Prompts (PPO's, the labels export's) of at most `max_tokens` tokens; records numbered from 1."""
    return fit(
        enumerate(prompts, start=1),
        length=lambda prompt: len(prompt_token_ids(tokenizer, prompt)),
        max_tokens=max_tokens,
        shorten=lambda prompt: _shortened_or_why(tokenizer, prompt, max_tokens),
        policy=policy,
        what="prompts",
        limit=f"{setting} {max_tokens}",
        file=file,
    )


def fit_demonstrations(
    records: Sequence[dict[str, Any]],
    tokenizer,
    *,
    max_length: int,
    policy: str,
    file: str,
    stop_token_ids: Sequence[int] = (),
    setting: str = "max_length",
) -> Fitted[dict[str, Any]]:
    """Demonstrations ({prompt, completion}) whose ids as the SFT stage trains on them fit `max_length`."""

    def length(record):
        return len(prompt_token_ids(tokenizer, record["prompt"])) + len(response_of(record))

    def response_of(record):
        return response_ids(tokenizer, record["prompt"], record["completion"], stop_token_ids)

    def shorten(record):
        prompt, why = _shortened_or_why(tokenizer, record["prompt"], max_length - len(response_of(record)))
        return ({**record, "prompt": prompt} if prompt is not None else None), why

    return fit(
        enumerate(records, start=1),
        length=length,
        max_tokens=max_length,
        shorten=shorten,
        policy=policy,
        what="demonstrations",
        limit=f"{setting} {max_length}",
        file=file,
    )


def fit_rankings(
    rankings: Sequence[Any], tokenizer, *, max_length: int, policy: str, file: str, stop_token_ids: Sequence[int] = ()
) -> Fitted[Any]:
    """Rankings whose prompt and longest completion, as the reward model reads them, fit `max_length`."""
    from dataclasses import replace

    def longest_response(ranking):
        return max(len(response_ids(tokenizer, ranking.prompt, text, stop_token_ids)) for text in ranking.completions)

    def length(ranking):
        return len(prompt_token_ids(tokenizer, ranking.prompt)) + longest_response(ranking)

    def shorten(ranking):
        prompt, why = _shortened_or_why(tokenizer, ranking.prompt, max_length - longest_response(ranking))
        return (replace(ranking, prompt=prompt) if prompt is not None else None), why

    return fit(
        ((ranking.id, ranking) for ranking in rankings),
        length=length,
        max_tokens=max_length,
        shorten=shorten,
        policy=policy,
        what="rankings",
        limit=f"max_length {max_length}",
        file=file,
    )


def _shortened_or_why(tokenizer, prompt: Prompt, max_tokens: int) -> tuple[Prompt | None, str]:
    if max_tokens < 1:
        return None, "the completion alone fills the limit"
    shorter = shortened_prompt(tokenizer, prompt, max_tokens)
    return shorter, "" if shorter is not None else f"no cut of the prompt fits {max_tokens} tokens"


def write_overlong(path, fitted: Iterable[tuple[str, Fitted]]) -> int:
    """Write what was over the limit, per (file, Fitted), to `path` (JSON Lines); nothing when nothing was.
    Returns the number of rows."""

    rows = [{"file": file, **row} for file, result in fitted for row in result.rows()]
    if rows:
        write_jsonl_atomically(path, rows)
    return len(rows)

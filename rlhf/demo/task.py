"""The bundled demo task: word-list instructions a tiny model can learn on a CPU in minutes.

A prompt asks for an operation on a short list of words ("sort", "reverse", "repeat", "first",
"last"). The gold scorer grades a response against the right answer, standing in for what
humans truly prefer. Demonstrations are written by simulated people who, like real ones, are
not perfect: some pad the answer with chatter ("sure , here you go :"), some slip (a swapped,
dropped, doubled or wrong word). SFT copies those habits; a reward model learned from rankings
can see they are worse; PPO can then do better than the demonstrations. That gap is what the
pipeline is meant to close, and the gold scorer measures whether it did.
"""

from __future__ import annotations

import difflib
import random
from dataclasses import dataclass

from rlhf.evaluation import GoldScorer

WORDS = (
    "apple",
    "banana",
    "cherry",
    "grape",
    "lemon",
    "mango",
    "peach",
    "plum",
    "cat",
    "dog",
    "fox",
    "owl",
    "bear",
    "wolf",
    "frog",
    "duck",
)
OPERATIONS = {
    "sort": "sort these words :",
    "reverse": "reverse these words :",
    "repeat": "repeat these words :",
    "first": "say the first word of :",
    "last": "say the last word of :",
}
CHATTER = ("sure , here you go :", "ok :", "the answer is :", "here it is :")
PROMPT_SUFFIX = "answer :"


@dataclass(frozen=True)
class DemoSettings:
    """How the simulated demonstrators behave. Defaults give demonstrations of mean gold ~0.75, ~47% perfect."""

    min_words: int = 2
    max_words: int = 5
    chatter_rate: float = 0.35  # share of demonstrations that start with chatter
    slip_rate: float = 0.25  # share with one mistake in the answer itself


@dataclass(frozen=True)
class Prompt:
    operation: str
    words: tuple[str, ...]

    @property
    def text(self) -> str:
        return f"{OPERATIONS[self.operation]} {' '.join(self.words)} {PROMPT_SUFFIX}"


def parse_prompt(text: str) -> Prompt:
    """Recover the operation and words from a prompt's text (the gold scorer sees only text)."""
    for operation, instruction in OPERATIONS.items():
        if text.startswith(instruction) and text.endswith(PROMPT_SUFFIX):
            words = text[len(instruction) : -len(PROMPT_SUFFIX)].split()
            return Prompt(operation, tuple(words))
    raise ValueError(f"not a demo prompt: {text!r}")


def correct_answer(prompt: Prompt) -> list[str]:
    words = list(prompt.words)
    if prompt.operation == "sort":
        return sorted(words)
    if prompt.operation == "reverse":
        return words[::-1]
    if prompt.operation == "repeat":
        return words
    if prompt.operation == "first":
        return words[:1]
    return words[-1:]


def gold_score(prompt_text: str, response: str) -> float:
    """How good `response` is, in [0, 1]: 2·matches / (len(response) + len(answer)) over words.

    Graded, not right/wrong: an extra word, a missing word or a word out of place each cost a
    little, so chatter costs in proportion to its length and an empty response scores 0.
    """
    answer = correct_answer(parse_prompt(prompt_text))
    said = response.split()
    if not said:
        return 0.0
    return difflib.SequenceMatcher(a=said, b=answer, autojunk=False).ratio()


def sample_prompt(rng: random.Random, settings: DemoSettings) -> Prompt:
    count = rng.randint(settings.min_words, settings.max_words)
    return Prompt(rng.choice(sorted(OPERATIONS)), tuple(rng.sample(WORDS, count)))


def _slip(answer: list[str], rng: random.Random) -> list[str]:
    answer = list(answer)
    kind = rng.choice(("swap", "drop", "double", "replace") if len(answer) > 1 else ("double", "replace"))
    at = rng.randrange(len(answer))
    if kind == "swap":
        at = min(at, len(answer) - 2)
        answer[at], answer[at + 1] = answer[at + 1], answer[at]
    elif kind == "drop":
        del answer[at]
    elif kind == "double":
        answer.insert(at, answer[at])
    else:
        answer[at] = rng.choice([w for w in WORDS if w != answer[at]])
    return answer


def write_demonstration(prompt: Prompt, rng: random.Random, settings: DemoSettings) -> str:
    """A human-like demonstration: usually right, sometimes chatty, sometimes slipping."""
    answer = correct_answer(prompt)
    if rng.random() < settings.slip_rate:
        answer = _slip(answer, rng)
    words = " ".join(answer)
    if rng.random() < settings.chatter_rate:
        words = f"{rng.choice(CHATTER)} {words}"
    return words


def make_split(
    count: int, seed: int, settings: DemoSettings = DemoSettings(), exclude: set[str] | frozenset[str] = frozenset()
) -> list[dict]:
    """`count` prompt/completion records with distinct prompts, none of them in `exclude`."""
    rng = random.Random(seed)
    records, seen = [], set(exclude)
    while len(records) < count:
        prompt = sample_prompt(rng, settings)
        if prompt.text in seen:
            continue
        seen.add(prompt.text)
        # A leading space: the completion is appended to the prompt as text, as in TRL's format.
        records.append({"prompt": prompt.text, "completion": " " + write_demonstration(prompt, rng, settings)})
    return records


def corpus_words() -> list[str]:
    """Every word the task can use, for training the demo tokenizer."""
    words = set(WORDS) | set(PROMPT_SUFFIX.split())
    for phrase in (*OPERATIONS.values(), *CHATTER):
        words.update(phrase.split())
    return sorted(words)


def prompt_operation(prompt_text: str) -> str:
    return parse_prompt(prompt_text).operation


# The demo's gold scorer, found by name through the `rlhf.gold_scorers` entry point (pyproject.toml).
GOLD_SCORER = GoldScorer(score=gold_score, task_of=prompt_operation)

"""A stand-in for a user's own chat data and model: the worked example of bringing your own preference data.

    python -m rlhf.demo.chat --out runs/chat
    python -m rlhf.pipeline --config configs/chat/pipeline.yaml

    runs/chat/base_model/               a small Llama with its own byte-level BPE tokenizer and chat template
    runs/chat/data/preferences.jsonl    HH-RLHF-style preference pairs ({"chosen", "rejected"} transcripts)
    runs/chat/data/sft.jsonl            conversational demonstrations ({"messages": [...]})
    runs/chat/data/prompts_train.jsonl  chat prompts for PPO; prompts_eval.jsonl: held-out ones

Generated, never copied from a real data set, with what real preference data has and the bundled demo does not:
multi-turn dialogues of which about a tenth are longer than the stages' max_length (256 tokens), a user speaking
twice in a row, role names quoted inside replies, a few empty, identical and duplicated replies, and no gold
scorer. The preferred reply answers the question in two to four steps; the other gives one step, dismisses it,
wanders off or only repeats it.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from rlhf.demo.tiny_model import tiny_llama_config
from rlhf.io import atomic_directory, atomic_write_text

TOPICS = {
    "bread": ("bake bread at home", ["flour", "yeast", "water", "salt", "dough", "oven", "loaf", "crust"]),
    "garden": ("grow tomatoes on a balcony", ["pot", "soil", "seedling", "sun", "water", "stake", "leaves"]),
    "python": ("read a CSV file in Python", ["import", "csv", "reader", "rows", "file", "header", "loop"]),
    "travel": ("plan a train trip through the Alps", ["ticket", "route", "pass", "station", "valley", "seat"]),
    "running": ("train for a first half marathon", ["pace", "miles", "shoes", "rest", "long run", "stretch"]),
    "budget": ("make a monthly budget", ["income", "rent", "savings", "groceries", "spreadsheet", "bills"]),
    "guitar": ("learn the first chords on a guitar", ["chord", "fret", "string", "strum", "tune", "finger"]),
    "sleep": ("sleep better on work nights", ["bedtime", "screen", "coffee", "dark", "routine", "alarm"]),
}
OPENERS = ["Sure.", "Good question.", "Happy to help.", "Here is how I would do it.", "Of course."]
STEPS = [
    "first get the {a} and the {b} ready",
    "then check the {a} before you add the {b}",
    "keep the {a} close to the {b} for a while",
    "after that, look at the {a} again and adjust the {b}",
    "finally, give the {a} some time and note how the {b} changed",
]
DISMISSALS = [
    "I don't know.",
    "Figure it out yourself.",
    "Why would you want to {goal}?",
    "No.",
    "That is not something I can talk about.",
    "Search online.",
]
WANDERING = [
    "Speaking of which, my favourite colour is blue and {a} reminds me of the sea.",
    "Anyway, did you know that the {a} was invented long ago? History is full of {b}.",
]
FOLLOW_UPS = ["What about the {a}?", "And if I have no {a}?", "How long does the {b} take?", "Can I skip the {a}?"]
DETAILS = "For context, here is everything about my situation with the {a} and the {b}: "
SPEAKERS = {"user": "Human", "assistant": "Assistant"}

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}<|end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
SPECIAL_TOKENS = ["<|pad|>", "<|startoftext|>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>"]


# -- dialogues ----------------------------------------------------------------------------------------------------


def _words(rng: random.Random, topic: str) -> tuple[str, str]:
    a, b = rng.sample(TOPICS[topic][1], 2)
    return a, b


def helpful_reply(rng: random.Random, topic: str, steps: int | None = None) -> str:
    chosen_steps = rng.sample(STEPS, steps or rng.randint(2, 4))
    said = [step.format(a=a, b=b) for step, (a, b) in zip(chosen_steps, (_words(rng, topic) for _ in chosen_steps))]
    reply = f"{rng.choice(OPENERS)} To {TOPICS[topic][0]}, {'; '.join(said)}."
    if rng.random() < 0.1:  # a role name quoted inside a reply, as real transcripts have
        reply += f' Some people write "Human: {rng.choice(TOPICS[topic][1])}?" in their notes; Assistant: answers it.'
    return reply


def unhelpful_reply(rng: random.Random, topic: str) -> str:
    """A worse reply: one step where the preferred one has more, a dismissal, a digression, or the question back."""
    a, b = _words(rng, topic)
    kind = rng.random()
    if kind < 0.3:
        return helpful_reply(rng, topic, steps=1)
    if kind < 0.6:
        return rng.choice(DISMISSALS).format(goal=TOPICS[topic][0])
    if kind < 0.8:
        return rng.choice(WANDERING).format(a=a, b=b)
    return f"You asked how to {TOPICS[topic][0]}. You asked how to {TOPICS[topic][0]}."


def user_turn(rng: random.Random, topic: str, first: bool, long: bool) -> str:
    a, b = _words(rng, topic)
    text = f"How do I {TOPICS[topic][0]}?" if first else rng.choice(FOLLOW_UPS).format(a=a, b=b)
    if long:
        filler = " ".join(
            f"The {rng.choice(TOPICS[topic][1])} was {rng.choice(['fine', 'odd', 'late', 'new'])}."
            for _ in range(rng.randint(60, 110))
        )
        text = DETAILS.format(a=a, b=b) + filler + " " + text
    return text


def dialogue(rng: random.Random, long: bool) -> tuple[str, list[dict[str, str]]]:
    """(topic, the turns before the judged reply): 1 to 4 user turns with helpful replies between them."""
    topic = rng.choice(sorted(TOPICS))
    turns: list[dict[str, str]] = []
    for number in range(rng.randint(1, 4)):
        if number:
            turns.append({"role": "assistant", "content": helpful_reply(rng, topic)})
        turns.append({"role": "user", "content": user_turn(rng, topic, number == 0, long and number == 0)})
    if rng.random() < 0.06:  # the user speaks twice in a row
        turns.append({"role": "user", "content": f"Also, I only have {rng.choice(TOPICS[topic][1])}."})
    return topic, turns


def transcript(turns: list[dict[str, str]]) -> str:
    """HH-RLHF's text form: "\\n\\nHuman: ...\\n\\nAssistant: ..."."""
    return "".join(f"\n\n{SPEAKERS[turn['role']]}: {turn['content']}".rstrip(" ") for turn in turns)


def preference_rows(count: int, rng: random.Random, long_share: float = 0.065) -> list[dict[str, str]]:
    """HH-RLHF rows; a few are broken the ways real ones are (empty, identical or repeated replies)."""
    rows = []
    for number in range(count):
        topic, turns = dialogue(rng, long=rng.random() < long_share)
        chosen, rejected = helpful_reply(rng, topic, steps=rng.randint(2, 4)), unhelpful_reply(rng, topic)
        if number % 97 == 5:
            chosen = ""
        elif number % 97 == 11:
            rejected = ""
        elif number % 89 == 7:
            rejected = chosen
        row = {
            "chosen": transcript(turns + [{"role": "assistant", "content": chosen}]),
            "rejected": transcript(turns + [{"role": "assistant", "content": rejected}]),
        }
        rows.append(row)
        if number % 83 == 3:
            rows.append(dict(row))  # exported twice
    return rows


def demonstrations(count: int, rng: random.Random, long_share: float = 0.065) -> list[dict]:
    return [
        {"messages": turns + [{"role": "assistant", "content": helpful_reply(rng, topic)}]}
        for topic, turns in (dialogue(rng, long=rng.random() < long_share) for _ in range(count))
    ]


def prompts(count: int, rng: random.Random, long_share: float = 0.065) -> list[dict]:
    return [{"prompt": dialogue(rng, long=rng.random() < long_share)[1]} for _ in range(count)]


# -- the user's model ---------------------------------------------------------------------------------------------


def build_chat_tokenizer(corpus: list[str], vocab_size: int = 700):
    """A byte-level BPE tokenizer with a chat template whose assistant turn opens with no separator, as many do."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(
        corpus,
        trainer=trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=SPECIAL_TOKENS,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        ),
    )
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<|startoftext|>",
        eos_token="<|end|>",
        pad_token="<|pad|>",
        model_max_length=512,
    )
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped


def build_chat_model(
    out: Path, corpus: list[str], *, hidden_size: int = 128, num_layers: int = 2, seed: int = 0
) -> Path:
    import torch
    from transformers import LlamaForCausalLM

    tokenizer = build_chat_tokenizer(corpus)
    config = tiny_llama_config(
        len(tokenizer),
        hidden_size=hidden_size,
        num_layers=num_layers,
        num_heads=4,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    with atomic_directory(out) as staging:
        LlamaForCausalLM(config).save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
    return out


def prepare(out: str | Path, *, seed: int = 0, scale: float = 1.0) -> Path:
    """Write the example's model and data under `out`."""
    out = Path(out)
    rng = random.Random(seed)
    sizes = {
        name: max(8, int(count * scale))
        for name, count in {"preferences": 800, "sft": 600, "prompts_train": 400, "prompts_eval": 32}.items()
    }
    data = {
        "preferences": preference_rows(sizes["preferences"], rng),
        "sft": demonstrations(sizes["sft"], rng),
        "prompts_train": prompts(sizes["prompts_train"], rng),
        "prompts_eval": prompts(sizes["prompts_eval"], rng),
    }
    for name, records in data.items():
        atomic_write_text(out / "data" / f"{name}.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    corpus = [turn["content"] for record in data["sft"] for turn in record["messages"]]
    corpus += [row["chosen"] + row["rejected"] for row in data["preferences"]]
    build_chat_model(out / "base_model", corpus, seed=seed)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m rlhf.demo.chat", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/chat")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every file's size (tests: 0.5)")
    args = parser.parse_args(argv)
    print(f"chat example model and data written to {prepare(args.out, seed=args.seed, scale=args.scale)}")


if __name__ == "__main__":
    main()

"""TRL's own RLOOTrainer or GRPOTrainer on the benchmark's models; writes per-iteration phase times as JSON.

Runs in our environment (TRL 1.16 is one of our dependencies), as its own process:

    python -m benchmarks.peers.trl_group --trainer rloo --policy DIR --reward DIR --prompts FILE --out FILE ...

One iteration is what our PPO step is: one generation batch of `rollout_batch_size` completions
(`samples_per_prompt` per prompt), then `ppo_epochs` passes over it in minibatches of `minibatch_size`. In TRL's
terms: generation_batch_size = rollout, per_device_train_batch_size = minibatch (no accumulation),
steps_per_generation = rollout / minibatch, num_iterations = epochs. The trainers' phases are marked from outside
without changing what they do: *generation* is the time inside `_generate`, *scoring* the rest of
`_generate_and_score_completions` (rewards, reference and old log-probabilities, advantages), *training* from there
to the last optimiser step before the next generation.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from importlib import metadata


def main(argv=None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trainer", choices=("rloo", "grpo"), required=True)
    parser.add_argument("--policy", required=True)
    parser.add_argument("--reward", required=True)
    parser.add_argument("--prompts", required=True, help="JSON Lines of {prompt: text}")
    parser.add_argument("--steps", type=int, default=3, help="iterations (generation batches)")
    parser.add_argument("--rollout-batch-size", type=int, default=8, help="completions per generation batch")
    parser.add_argument("--samples-per-prompt", type=int, default=4)
    parser.add_argument("--minibatch-size", type=int, default=8)
    parser.add_argument("--ppo-epochs", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=1e-5)
    parser.add_argument("--kl-coef", type=float, default=0.05)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    torch.set_num_threads(args.threads)
    marks: dict[str, list] = {"generation": [], "generated": [], "scored": [], "step_end": [], "tokens": []}

    class StepEnd(TrainerCallback):
        def on_step_end(self, _args, state, control, **kwargs):
            marks["step_end"].append(time.perf_counter())

    with open(args.prompts) as file:
        prompts = [json.loads(line)["prompt"] for line in file if line.strip()]
    tokenizer = AutoTokenizer.from_pretrained(args.policy, padding_side="left")
    policy = AutoModelForCausalLM.from_pretrained(args.policy)
    with tempfile.TemporaryDirectory() as output_dir:
        trainer = build_trainer(
            args, policy, tokenizer, Dataset.from_dict({"prompt": prompts}), output_dir, [StepEnd()]
        )
        time_phases(trainer, marks)
        trainer.train()
    result = {
        "peer": f"trl.{type(trainer).__name__}",
        "versions": versions(),
        "steps": iteration_rows(marks),
        "python": sys.version.split()[0],
    }
    with open(args.out, "w") as file:
        json.dump(result, file, indent=2)
    print(json.dumps(result))


def build_trainer(args, policy, tokenizer, dataset, output_dir: str, callbacks: list):
    """The trainer asked for, set up to do one of our PPO steps per generation batch."""
    from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

    steps_per_generation = args.rollout_batch_size // args.minibatch_size
    common = dict(
        output_dir=output_dir,
        per_device_train_batch_size=args.minibatch_size,
        gradient_accumulation_steps=1,
        steps_per_generation=steps_per_generation,
        num_generations=args.samples_per_prompt,
        max_completion_length=args.max_new_tokens,
        num_iterations=args.ppo_epochs,
        max_steps=args.steps * steps_per_generation * args.ppo_epochs,
        learning_rate=args.learning_rate,
        beta=args.kl_coef,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        report_to=[],
        save_strategy="no",
        logging_steps=10**6,
        bf16=False,
        fp16=False,
        seed=args.seed,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    if args.trainer == "rloo":
        # The leave-one-out baseline on score - β Σ KL, as ours; no advantage normalisation (the paper's, ours).
        config = RLOOConfig(**common, normalize_advantages=False)
        trainer_class = RLOOTrainer
    else:
        # β·k3 as a loss term and the group's std, as ours with kl_in_loss; bnpo is the mean over the minibatch's
        # tokens, our token_mean.
        config = GRPOConfig(**common, loss_type="bnpo", scale_rewards="group")
        trainer_class = GRPOTrainer
    return trainer_class(
        model=policy,
        reward_funcs=args.reward,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=callbacks,
    )


def time_phases(trainer, marks: dict[str, list]) -> None:
    """Wrap the trainer's own `_generate` and `_generate_and_score_completions` to mark the phases."""
    generate, generate_and_score = trainer._generate, trainer._generate_and_score_completions

    def timed_generate(*positional, **keywords):
        output = generate(*positional, **keywords)
        marks["generated"].append(time.perf_counter())
        return output

    def timed_generate_and_score(*positional, **keywords):
        marks["generation"].append(time.perf_counter())
        output = generate_and_score(*positional, **keywords)
        marks["scored"].append(time.perf_counter())
        marks["tokens"].append((int(output["completion_mask"].sum()), output["completion_mask"].shape[0]))
        return output

    trainer._generate = timed_generate
    trainer._generate_and_score_completions = timed_generate_and_score


def iteration_rows(marks: dict[str, list]) -> list[dict]:
    """One row per generation batch, with our metrics' names: generation, scoring and training seconds."""
    rows = []
    starts = marks["generation"]
    for number, start in enumerate(starts):
        following = starts[number + 1] if number + 1 < len(starts) else float("inf")
        trained = max(t for t in marks["step_end"] if t < following)
        generation = marks["generated"][number] - start
        tokens, completions = marks["tokens"][number]
        rows.append(
            {
                "step": number + 1,
                "time_generation": generation,
                "time_scoring": marks["scored"][number] - marks["generated"][number],
                "time_training": trained - marks["scored"][number],
                "response_length": tokens / max(completions, 1),
                "tokens_per_second": tokens / max(generation, 1e-9),
            }
        )
    return rows


def versions() -> dict[str, str]:
    return {name: metadata.version(name) for name in ("trl", "transformers", "torch", "accelerate")}


if __name__ == "__main__":
    main()

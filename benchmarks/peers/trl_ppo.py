"""TRL 1.0.0's PPOTrainer (trl.experimental.ppo) on the benchmark's tiny models; prints per-step phase times as JSON.

Runs inside benchmarks/.venv-trl100 (see benchmarks/peers/trl_venv.py), not in the project's environment:

    benchmarks/.venv-trl100/bin/python benchmarks/peers/trl_ppo.py --policy DIR --reward DIR --prompt-ids FILE ...

The trainer's loop is one function, so its phases are marked from outside without changing what it does:
generation is the time inside `batch_generation`; scoring runs from there to the first forward pass with
gradients (reference, value and reward forwards, then rewards and GAE); training runs from that forward to
the trainer's `on_step_end` callback (PPO epochs, then its metrics).
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from importlib import metadata


def main(argv=None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--policy", required=True)
    parser.add_argument("--reward", required=True)
    parser.add_argument("--prompt-ids", required=True, help="JSON list of token-id lists (unpadded prompts)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rollout-batch-size", type=int, default=16)
    parser.add_argument("--minibatch-size", type=int, default=16)
    parser.add_argument("--ppo-epochs", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=1e-5)
    parser.add_argument("--kl-coef", type=float, default=0.05)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    import torch
    import trl.experimental.ppo.ppo_trainer as ppo_trainer
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    torch.set_num_threads(args.threads)
    steps: list[dict] = []

    original_generation = ppo_trainer.batch_generation

    def timed_generation(*positional, **keywords):
        step = {"start": time.perf_counter()}
        steps.append(step)
        output = original_generation(*positional, **keywords)
        step["generated"] = time.perf_counter()
        return output

    original_forward = ppo_trainer.forward

    def timed_forward(*positional, **keywords):
        if torch.is_grad_enabled() and steps and "scored" not in steps[-1]:
            steps[-1]["scored"] = time.perf_counter()
        return original_forward(*positional, **keywords)

    original_truncate = ppo_trainer.truncate_response

    def counted_truncate(stop_token_id, pad_token_id, responses):
        truncated = original_truncate(stop_token_id, pad_token_id, responses)
        steps[-1]["response_tokens"] = steps[-1].get("response_tokens", 0) + int((truncated != pad_token_id).sum())
        steps[-1]["responses"] = steps[-1].get("responses", 0) + truncated.shape[0]
        return truncated

    class TimedGC:
        """The trainer's `gc` module with `collect` timed: it runs a full collection twice per iteration."""

        def __getattr__(self, name):
            return getattr(gc, name)

        @staticmethod
        def collect(*positional):
            began = time.perf_counter()
            collected = gc.collect(*positional)
            if steps:
                steps[-1]["gc"] = steps[-1].get("gc", 0.0) + time.perf_counter() - began
            return collected

    ppo_trainer.gc = TimedGC()
    ppo_trainer.batch_generation = timed_generation
    ppo_trainer.forward = timed_forward
    ppo_trainer.truncate_response = counted_truncate

    class StepEnd(TrainerCallback):
        def on_step_end(self, _args, state, control, **kwargs):
            steps[-1]["trained"] = time.perf_counter()

    tokenizer = AutoTokenizer.from_pretrained(args.policy, padding_side="left")
    policy = AutoModelForCausalLM.from_pretrained(args.policy)
    reference = AutoModelForCausalLM.from_pretrained(args.policy)
    reward = AutoModelForSequenceClassification.from_pretrained(args.reward, num_labels=1)
    value = AutoModelForSequenceClassification.from_pretrained(args.reward, num_labels=1)
    with open(args.prompt_ids) as file:
        prompt_ids = json.load(file)
    train = Dataset.from_dict({"input_ids": prompt_ids})
    evaluation = Dataset.from_dict({"input_ids": prompt_ids[: args.rollout_batch_size]})

    with tempfile.TemporaryDirectory() as output_dir:
        # One micro-batch per minibatch and as many minibatches as the rollout holds (TRL's rollout batch is
        # per_device_train_batch_size x gradient_accumulation_steps).
        accumulation = args.rollout_batch_size // args.minibatch_size
        config = PPOConfig(
            output_dir=output_dir,
            per_device_train_batch_size=args.minibatch_size,
            gradient_accumulation_steps=accumulation,
            num_mini_batches=accumulation,
            local_rollout_forward_batch_size=args.rollout_batch_size,
            num_ppo_epochs=args.ppo_epochs,
            response_length=args.max_new_tokens,
            total_episodes=args.steps * args.rollout_batch_size,
            learning_rate=args.learning_rate,
            kl_coef=args.kl_coef,
            temperature=1.0,
            stop_token="eos",
            missing_eos_penalty=None,
            num_sample_generations=0,
            report_to=[],
            save_strategy="no",
            logging_steps=10**6,
            bf16=False,
            fp16=False,
            seed=args.seed,
            disable_tqdm=True,
            dataloader_num_workers=0,
        )
        trainer = PPOTrainer(
            args=config,
            processing_class=tokenizer,
            model=policy,
            ref_model=reference,
            reward_model=reward,
            value_model=value,
            train_dataset=train,
            eval_dataset=evaluation,
            callbacks=[StepEnd()],
        )
        trainer.train()

    rows = []
    for number, step in enumerate(steps, start=1):
        generation = step["generated"] - step["start"]
        rows.append(
            {
                "step": number,
                "time_generation": generation,
                "time_scoring": step["scored"] - step["generated"],
                "time_training": step["trained"] - step["scored"],
                "response_length": step["response_tokens"] / max(step["responses"], 1),
                "tokens_per_second": step["response_tokens"] / max(generation, 1e-9),
                "time_gc_collect": step.get("gc", 0.0),
            }
        )
    versions = {name: metadata.version(name) for name in ("trl", "transformers", "torch", "accelerate")}
    result = {
        "peer": "trl.experimental.ppo.PPOTrainer",
        "versions": versions,
        "steps": rows,
        "python": sys.version.split()[0],
    }
    with open(args.out, "w") as file:
        json.dump(result, file, indent=2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()

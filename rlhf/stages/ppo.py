"""Stage 3: PPO against the reward model with a per-token KL penalty to the SFT policy (InstructGPT §3.5).

    python -m rlhf.stages.ppo --config configs/ppo.yaml [--actor_learning_rate 1e-5 ...]
    deepspeed --num_gpus 2 --module rlhf.stages.ppo --config configs/ppo.yaml \
        --actor_deepspeed deepspeed_configs/zero3.json --critic_deepspeed deepspeed_configs/zero3.json

Each step: 1. the actor samples responses to a batch of prompts; 2. the reference, critic and reward model
score them; 3. scores become per-token rewards (score at the last token, -β·KL on every token), GAE advantages
and returns; 4. several epochs of clipped PPO over minibatches update actor and critic; 5. metrics, β update,
checkpoint. At the end the policy is compared with the SFT policy on held-out prompts, saved and registered.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

from rlhf.adaptation.config import AdaptationConfig
from rlhf.config import CommonArguments
from rlhf.errors import ConfigError, RLHFError, exits_cleanly

ACTOR_CRITIC_METHODS = ("full", "lora")
ZERO3_GENERATION = ("auto", "gather_once", "per_step")


@dataclass
class PPOStageConfig(CommonArguments, AdaptationConfig):
    """Stage 3's config. `adaptation_method` and the lora_* fields adapt the actor; the critic has its own
    method and shares the LoRA settings. Batch sizes count sequences per process."""

    model_name_or_path: str = field(default="sft", metadata={"help": "The actor's start: registry reference, "
                                                                      "directory or hub id (the SFT policy)."})
    critic_model: str = field(default="rm", metadata={"help": "The critic's start (InstructGPT: the reward model)."})
    reference_model: str = field(default="", metadata={"help": "Frozen reference policy for the KL penalty. Empty: "
                                                                "the actor's start (with a LoRA actor: the actor, adapter disabled)."})
    reward_model: str = field(default="rm", metadata={"help": "Frozen reward model; its saved normalisation applies."})
    critic_adaptation_method: str = field(default="full", metadata={"help": "Critic parameters that train: full or lora."})
    prompts_file: str = field(default="", metadata={"help": "Training prompts: records with a 'prompt' (text or chat messages)."})
    eval_prompts_file: str = field(default="", metadata={"help": "Held-out prompts for the final win rates. Empty: none."})
    eval_prompts: int = field(default=100, metadata={"help": "How many held-out prompts the final comparison uses."})
    eval_samples_per_prompt: int = field(default=1, metadata={"help": "Responses per held-out prompt and policy."})
    eval_do_sample: bool = field(default=True, metadata={"help": "Compare policies on sampled responses (the "
                                                                  "generation settings below, seeded) rather than greedy ones."})
    output_dir: str = field(default="runs/ppo", metadata={"help": "Metrics, checkpoints, samples and the final model."})
    seed: int = field(default=0, metadata={"help": "Seed of prompt order, sampling and minibatch shuffling."})

    # Generation: the distribution responses are sampled from, and under which every log-probability is taken.
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature (> 0)."})
    top_k: int = field(default=0, metadata={"help": "Sample among the k likeliest tokens; 0: all."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling mass in (0, 1]; 1: off."})
    max_new_tokens: int = field(default=32, metadata={"help": "Response length cap, in tokens."})
    max_prompt_length: int = field(default=256, metadata={"help": "Longer prompts are a data error (tokens)."})
    zero3_generation: str = field(default="auto", metadata={"help": "Actor under ZeRO-3: 'gather_once' gathers its "
                                                                     "parameters once per rollout, 'per_step' at every token (synced_gpus), 'auto' "
                                                                     "gathers once when twice the model fits in free memory."})

    # Schedule.
    max_steps: int = field(default=100, metadata={"help": "PPO steps (rollout + update); overridden by total_episodes."})
    total_episodes: int = field(default=0, metadata={"help": "Responses to train on in all; > 0 sets max_steps."})
    rollout_batch_size: int = field(default=16, metadata={"help": "Prompts sampled per step, per process."})
    ppo_epochs: int = field(default=4, metadata={"help": "Passes over each rollout batch."})
    minibatch_size: int = field(default=8, metadata={"help": "Sequences per optimiser step, per process."})
    actor_learning_rate: float = field(default=1e-5, metadata={"help": "AdamW learning rate of the actor."})
    critic_learning_rate: float = field(default=1e-5, metadata={"help": "AdamW learning rate of the critic."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay of actor and critic."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping norm (DeepSpeed gradient_clipping)."})
    disable_dropout: bool = field(default=True, metadata={"help": "Keep models in eval mode, so that log π_old and "
                                                                  "log π agree for the same weights."})

    # PPO.
    gamma: float = field(default=1.0, metadata={"help": "Discount γ of GAE."})
    lam: float = field(default=0.95, metadata={"help": "GAE λ."})
    cliprange: float = field(default=0.2, metadata={"help": "Policy ratio clip ε."})
    cliprange_value: float = field(default=0.2, metadata={"help": "Value clip ε_v around the rollout's values."})
    vf_coef: float = field(default=0.1, metadata={"help": "Weight of the value loss (scales the critic's loss)."})

    # Rewards.
    kl_coef: float = field(default=0.05, metadata={"help": "β of the per-token KL penalty (the start, if adaptive)."})
    adaptive_kl: bool = field(default=False, metadata={"help": "Steer β towards target_kl (Ziegler et al. 2019)."})
    target_kl: float = field(default=6.0, metadata={"help": "Adaptive β: target KL per response, in nats."})
    kl_horizon: int = field(default=10000, metadata={"help": "Adaptive β: horizon, in responses."})
    kl_estimator: str = field(default="k1", metadata={"help": "Per-token KL estimate in the reward: k1, k2, k3 or abs."})
    score_clip: float = field(default=0.0, metadata={"help": "Clip reward-model scores to ±this; 0: off."})
    normalize_scores: bool = field(default=False, metadata={"help": "Normalise scores by the running mean and std "
                                                                    "of all scores so far."})
    missing_eos_penalty: float = field(default=0.0, metadata={"help": "Subtracted from the score of a response that "
                                                                      "ends without EOS (hit max_new_tokens)."})
    reward_max_length: int = field(default=512, metadata={"help": "Tokens the reward model sees; the prompt's start "
                                                                  "is cut first."})

    # PPO-ptx (InstructGPT eq. 2).
    ptx_coef: float = field(default=0.0, metadata={"help": "γ of PPO-ptx: weight of the language-modelling loss."})
    ptx_file: str = field(default="", metadata={"help": "PPO-ptx data: demonstrations (prompt/completion) or {text}."})
    ptx_batch_size: int = field(default=8, metadata={"help": "PPO-ptx sequences per optimiser step, per process."})
    ptx_max_length: int = field(default=256, metadata={"help": "PPO-ptx sequence length cap, in tokens."})

    # DeepSpeed: one config file per model.
    actor_deepspeed: str = field(default="deepspeed_configs/zero2.json", metadata={"help": "Actor's DeepSpeed config."})
    critic_deepspeed: str = field(default="deepspeed_configs/zero2.json", metadata={"help": "Critic's DeepSpeed config."})
    reference_deepspeed: str = field(default="deepspeed_configs/zero3_inference.json",
                                     metadata={"help": "Reference policy's DeepSpeed config."})
    reward_deepspeed: str = field(default="deepspeed_configs/zero3_inference.json",
                                  metadata={"help": "Reward model's DeepSpeed config."})

    # Checkpoints, failures, reporting.
    save_steps: int = field(default=50, metadata={"help": "Checkpoint every this many steps; 0: only at SIGTERM."})
    save_total_limit: int = field(default=2, metadata={"help": "Checkpoints kept (newest); 0: all."})
    max_consecutive_nonfinite: int = field(default=3, metadata={"help": "Stop after this many non-finite losses "
                                                                        "in a row (each one skips its update)."})
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"],
                                 metadata={"help": "Where metrics go besides ppo_metrics.jsonl: tensorboard, or none."})
    disable_tqdm: bool = field(default=False, metadata={"help": "No progress bar."})
    gold_scorer: str = field(default="", metadata={"help": "Name of a gold scorer ('demo') for per-step gold scores "
                                                             "and the gold win rate."})
    local_rank: int = field(default=-1, metadata={"help": "Passed by the deepspeed launcher; ranks are read from "
                                                          "the environment."})

    def __post_init__(self):
        _check(self.adaptation_method in ACTOR_CRITIC_METHODS,
               f"adaptation_method (actor) must be one of {ACTOR_CRITIC_METHODS}, got '{self.adaptation_method}'")
        _check(self.critic_adaptation_method in ACTOR_CRITIC_METHODS,
               f"critic_adaptation_method must be one of {ACTOR_CRITIC_METHODS}, got '{self.critic_adaptation_method}'")
        _check(self.zero3_generation in ZERO3_GENERATION, f"zero3_generation must be one of {ZERO3_GENERATION}")
        _check(self.temperature > 0, f"temperature must be > 0, got {self.temperature}")
        _check(0 < self.top_p <= 1, f"top_p must be in (0, 1], got {self.top_p}")
        _check(self.top_k >= 0, f"top_k must be >= 0, got {self.top_k}")
        _check(self.rollout_batch_size >= 1 and self.minibatch_size >= 1, "batch sizes must be >= 1")
        _check(self.rollout_batch_size % self.minibatch_size == 0,
               f"rollout_batch_size {self.rollout_batch_size} must be a multiple of minibatch_size {self.minibatch_size}")
        _check(self.ppo_epochs >= 1 and self.max_new_tokens >= 1, "ppo_epochs and max_new_tokens must be >= 1")
        _check(self.kl_estimator in ("k1", "k2", "k3", "abs"), f"kl_estimator '{self.kl_estimator}' is unknown")
        _check(self.kl_coef >= 0, "kl_coef must be >= 0")
        _check(not self.ptx_coef or self.ptx_file, "ptx_coef > 0 needs a ptx_file")
        _check(self.max_consecutive_nonfinite >= 1, "max_consecutive_nonfinite must be >= 1")
        _check(all(target in ("tensorboard", "none") for target in self.report_to),
               f"report_to accepts tensorboard or none, got {self.report_to}")
        _check(bool(self.prompts_file), "prompts_file is required")
        super().__post_init__()

    @property
    def steps(self) -> int:
        from rlhf import distributed

        if self.total_episodes > 0:
            per_step = self.rollout_batch_size * distributed.world_size()
            return -(-self.total_episodes // per_step)
        return self.max_steps


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def run(config: PPOStageConfig):
    """Train, compare with the SFT policy, save and register. Returns the registry entry (None off rank 0)."""
    import torch

    from rlhf import distributed, losses
    from rlhf.kl_control import make_kl_controller
    from rlhf.ppo import checkpoint, experience, inputs as ppo_inputs, report
    from rlhf.ppo.engines import build_engines, init_distributed
    from rlhf.ppo.experience import choose_zero3_generation
    from rlhf.ppo.logprobs import sampling_settings_for
    from rlhf.ppo.metrics import MetricsLogger
    from rlhf.ppo.update import NonFiniteLossError, UpdateSettings, ppo_update

    # 0. Inputs: the four models by reference, the prompts checked before anything trains.
    init_distributed()
    torch.manual_seed(config.seed + distributed.global_rank())
    inputs = ppo_inputs.resolve(config)
    tokenizer = inputs.tokenizer
    engines = build_engines(config, inputs.paths, tokenizer)
    sampling = sampling_settings_for(tokenizer, config.temperature, config.top_k, config.top_p, config.max_new_tokens)
    generation_config = sampling.generation_config(tokenizer)
    zero3_generation = choose_zero3_generation(config.zero3_generation, engines.actor)
    kl_controller = make_kl_controller(config.kl_coef, config.adaptive_kl, config.target_kl, config.kl_horizon)
    moments = losses.RunningMoments() if config.normalize_scores else None
    gold = ppo_inputs.gold_scorer_or_none(config)
    update_settings = UpdateSettings(config.ppo_epochs, config.minibatch_size, config.cliprange,
                                     config.cliprange_value, config.vf_coef, config.ptx_coef, sampling)

    # Resume: weights, optimisers, RNG, β, score moments and the data position (the step).
    state = {"step": 0, "skipped_updates": 0, "consecutive_skips": 0}
    resume_from = checkpoint.latest_checkpoint(config.output_dir) if config.resume else None
    if resume_from is not None:
        state = checkpoint.load_checkpoint(resume_from, engines.actor, engines.critic)
        kl_controller.load_state_dict(state["kl_controller"])
        if moments is not None:
            moments.load_state_dict(state["score_moments"])
        if distributed.is_main_process():
            print(f"resuming from {resume_from} (step {state['step']})", flush=True)
    ptx = ppo_inputs.ptx_iterator(config, tokenizer, start_batch=state["step"] * _updates_per_step(config))
    logger = MetricsLogger(config.output_dir, config.report_to, config.steps, state["step"],
                           show_progress=not config.disable_tqdm)
    stop = checkpoint.StopRequest()

    def trainer_state(step: int) -> dict:
        return {"step": step, "kl_controller": kl_controller.state_dict(), "skipped_updates": state["skipped_updates"],
                "consecutive_skips": state["consecutive_skips"],
                "score_moments": moments.state_dict() if moments is not None else None}

    last_saved = resume_from
    try:
        for step in range(state["step"], config.steps):
            # 1. Generate: this rank's slice of the step's prompts, sampled with the KV cache.
            started = time.perf_counter()
            prompts = inputs.prompts_for_step(step)
            batch = experience.tokenize_prompts(tokenizer, prompts)
            response_ids = experience.generate(engines.actor, batch, generation_config, zero3_generation)
            generated = time.perf_counter()

            # 2. Score: log π_old and log π_ref under the sampling distribution, V(s_t), reward-model scores.
            rollout = experience.score(engines, batch, response_ids, tokenizer, sampling, config.reward_max_length)
            scored = time.perf_counter()

            # 3. Advantages: per-token rewards with the KL penalty, GAE, whitening.
            shaping = experience.RewardShaping(kl_controller.value, config.kl_estimator, config.score_clip,
                                               config.missing_eos_penalty, config.gamma, config.lam)
            rollout, kl = experience.with_advantages(rollout, shaping, tokenizer.eos_token_id, moments)

            # 4. Update: PPO epochs over minibatches; a non-finite loss skips its update.
            generator = torch.Generator().manual_seed(config.seed * 1_000_003 + step)
            try:
                result = ppo_update(engines.actor, engines.critic, rollout, update_settings, generator, ptx,
                                    state["consecutive_skips"], config.max_consecutive_nonfinite)
            except NonFiniteLossError as error:
                raise RLHFError(f"stopped at step {step + 1}: {error}; the last good checkpoint is "
                                f"{last_saved or 'none (no checkpoint was saved yet)'}") from None
            state["skipped_updates"] += result.skipped
            state["consecutive_skips"] = result.consecutive_skips
            trained = time.perf_counter()

            # 5. Metrics, β, checkpoint.
            texts = experience.decode_responses(tokenizer, rollout.response_ids, rollout.response_mask)
            row = report.step_metrics(step + 1, rollout, kl, result, kl_controller.value, prompts, texts, gold,
                                      times=(generated - started, scored - generated, trained - scored),
                                      skipped_updates=state["skipped_updates"], ptx=ptx is not None,
                                      eos_token_id=tokenizer.eos_token_id)
            kl_controller.update(row["kl"], config.rollout_batch_size * distributed.world_size())
            logger.log(row)
            stopping = stop.any_rank()
            if stopping or (config.save_steps and (step + 1) % config.save_steps == 0):
                last_saved = checkpoint.save_checkpoint(config.output_dir, step + 1, engines.actor, engines.critic,
                                                        trainer_state(step + 1), config.save_total_limit)
            if stopping:
                if distributed.is_main_process():
                    print(f"SIGTERM: saved {last_saved}; resume with --resume", flush=True)
                return None
    finally:
        logger.close()
        stop.restore()

    # 6. Compare with the SFT policy on held-out prompts, save in Hugging Face format, register.
    return report.finish(config, inputs, engines, tokenizer, sampling, state)


def _updates_per_step(config: PPOStageConfig) -> int:
    return config.ppo_epochs * (config.rollout_batch_size // config.minibatch_size)


@exits_cleanly
def main(argv: list[str] | None = None) -> None:
    from rlhf.stages.common import run_from_command_line

    run_from_command_line(PPOStageConfig, run, argv)


if __name__ == "__main__":
    main(sys.argv[1:])

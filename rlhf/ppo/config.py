"""PPOStageConfig: every setting of stage 3 (rlhf.stages.ppo), each with its default and unit.

Batch sizes count sequences (responses) per process; with `samples_per_prompt` n, a rollout batch of B responses
answers B / n prompts, and both batch sizes are multiples of n so that a prompt's group stays whole. The shared
fields (model, registry, resume) come from CommonArguments, the actor's adaptation fields from AdaptationConfig.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rlhf import distributed
from rlhf.adaptation.config import AdaptationConfig
from rlhf.config import CommonArguments, SharedPromptArguments, bf16_supported
from rlhf.errors import ConfigError
from rlhf.ppo.options import ADVANTAGE_ESTIMATORS, GROUP_ESTIMATORS, KL_ESTIMATORS, LOSS_AGGREGATIONS
from rlhf.ppo.reward_aggregation import AGGREGATIONS as REWARD_AGGREGATIONS
from rlhf.rollout.settings import RolloutEngineArguments

ACTOR_CRITIC_METHODS = ("full", "lora")
ZERO3_GENERATION = ("auto", "gather_once", "per_step")
LR_SCHEDULES = ("linear", "cosine", "constant")


@dataclass
class PPOStageConfig(CommonArguments, AdaptationConfig, SharedPromptArguments, RolloutEngineArguments):
    """Stage 3's config. `adaptation_method` and the lora_* fields adapt the actor; the critic has its own
    method and shares the LoRA settings. Batch sizes count sequences per process."""

    model_name_or_path: str = field(
        default="sft", metadata={"help": "The actor's start: registry reference, directory or hub id (the SFT policy)."}
    )
    critic_model: str = field(
        default="rm",
        metadata={
            "help": "The critic's start (InstructGPT: the reward model). "
            "Only gae has a critic; the other estimators ignore it."
        },
    )
    reference_model: str = field(
        default="",
        metadata={
            "help": "Frozen reference policy for the KL penalty. Empty: "
            "the actor's start (with a LoRA actor: the actor, adapter disabled)."
        },
    )
    reward_model: str = field(default="rm", metadata={"help": "Frozen reward model; its saved normalisation applies."})
    critic_adaptation_method: str = field(
        default="full", metadata={"help": "Critic parameters that train: full or lora."}
    )
    prompts_file: str = field(
        default="", metadata={"help": "Training prompts: records with a 'prompt' (text or chat messages)."}
    )
    eval_prompts_file: str = field(
        default="", metadata={"help": "Held-out prompts for the final win rates. Empty: none."}
    )
    eval_prompts: int = field(default=100, metadata={"help": "How many held-out prompts the final comparison uses."})
    eval_samples_per_prompt: int = field(default=1, metadata={"help": "Responses per held-out prompt and policy."})
    eval_do_sample: bool = field(
        default=True,
        metadata={
            "help": "Compare policies on sampled responses (the "
            "generation settings below, seeded) rather than greedy ones."
        },
    )
    eval_steps: int = field(
        default=0,
        metadata={
            "help": "Every this many steps, before the first and after the "
            "last, the policy answers held-out prompts "
            "(eval_prompts_file): its reward-model score, gold score and "
            "KL from the reference go to eval_metrics.jsonl, the PPO points "
            "of the report's best-of-N comparison. 0: off."
        },
    )
    eval_steps_prompts: int = field(
        default=64,
        metadata={
            "help": "Held-out prompts of each eval_steps evaluation "
            "(the first of eval_prompts_file), one sampled "
            "response each, split over the processes."
        },
    )
    output_dir: str = field(default="runs/ppo", metadata={"help": "Metrics, checkpoints, samples and the final model."})
    seed: int = field(default=0, metadata={"help": "Seed of prompt order, sampling and minibatch shuffling."})

    # Generation: the distribution responses are sampled from, and under which every log-probability is taken.
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature (> 0)."})
    top_k: int = field(default=0, metadata={"help": "Sample among the k likeliest tokens; 0: all."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling mass in (0, 1]; 1: off."})
    max_new_tokens: int = field(default=32, metadata={"help": "Response length cap, in tokens."})
    max_prompt_length: int = field(
        default=256, metadata={"help": "Prompt length cap, in tokens; longer prompts follow the `overlong` policy."}
    )
    rollout_is_cap: float = field(
        default=0.0,
        metadata={
            "help": "rollout_engine vllm: truncated importance "
            "sampling, each token's policy loss weighed by "
            "min(π_old / π_engine, this), for the mismatch "
            "between the engine that sampled and the actor "
            "(Yao et al. 2025; e.g. 2). 0: off."
        },
    )
    zero3_generation: str = field(
        default="auto",
        metadata={
            "help": "Actor under ZeRO-3: 'gather_once' gathers its "
            "parameters once per rollout, 'per_step' at every token (synced_gpus), 'auto' "
            "gathers once when twice the model fits in free memory."
        },
    )

    # Schedule.
    max_steps: int = field(
        default=100, metadata={"help": "PPO steps (rollout + update); overridden by total_episodes."}
    )
    total_episodes: int = field(default=0, metadata={"help": "Responses to train on in all; > 0 sets max_steps."})
    rollout_batch_size: int = field(
        default=16,
        metadata={
            "help": "Responses sampled per step, per process: "
            "rollout_batch_size / samples_per_prompt prompts, each "
            "answered samples_per_prompt times."
        },
    )
    samples_per_prompt: int = field(
        default=1,
        metadata={
            "help": "Responses sampled per prompt (a group, n): they "
            "are consecutive rows of the rollout batch and stay together "
            "on one rank and in one minibatch. rloo, grpo and "
            "reinforce_pp_baseline need n >= 2."
        },
    )
    ppo_epochs: int = field(default=4, metadata={"help": "Passes over each rollout batch."})
    minibatch_size: int = field(
        default=8, metadata={"help": "Sequences per optimiser step, per process (a multiple of samples_per_prompt)."}
    )
    forward_batch_size: int = field(
        default=0,
        metadata={
            "help": "Rollouts per forward when the actor, reference, "
            "critic and reward model score a rollout batch, so that no (batch x length x "
            "vocab) logits exist whole. 0: minibatch_size (what an update holds anyway)."
        },
    )
    padding_free: bool = field(
        default=True,
        metadata={
            "help": "Actor, reference and critic forwards pack the "
            "real tokens of several rollouts into one row instead of computing on padding. A "
            "model whose attention would cross into another packed rollout (OPT) is found "
            "at start and runs padded."
        },
    )
    padding_free_row_tokens: int = field(
        default=512,
        metadata={
            "help": "Most tokens in a packed row, or the "
            "padded length when that is longer. Under sdpa and eager attention a row costs "
            "its length squared; flash attention keeps each rollout to its own length."
        },
    )
    actor_learning_rate: float = field(default=1e-5, metadata={"help": "AdamW learning rate of the actor."})
    critic_learning_rate: float = field(default=1e-5, metadata={"help": "AdamW learning rate of the critic."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay of actor and critic."})
    lr_scheduler_type: str = field(
        default="linear",
        metadata={
            "help": "Learning-rate schedule of actor and critic "
            "over all optimiser steps: linear, cosine or constant (after warmup)."
        },
    )
    warmup_steps: int = field(
        default=0,
        metadata={
            "help": "Optimiser steps of linear warmup from 0 to the learning "
            "rate. Each PPO step makes ppo_epochs x rollout_batch_size / minibatch_size."
        },
    )
    max_grad_norm: float = field(
        default=1.0, metadata={"help": "Gradient clipping norm (DeepSpeed gradient_clipping)."}
    )
    gradient_checkpointing: bool = field(
        default=False,
        metadata={
            "help": "Recompute each layer's activations of actor "
            "and critic in the backward instead of keeping them (less memory, about a "
            "third more compute per update)."
        },
    )
    bf16: bool | None = field(
        default=None,
        metadata={
            "help": "bf16 mixed precision in every engine whose DeepSpeed "
            'config says "auto" (bf16 weights and gradients, float32 master weights '
            "and Adam states). Unset: on where the GPU supports it, off on a CPU; true "
            "on a CPU runs the GPU layout's arithmetic."
        },
    )
    disable_dropout: bool = field(
        default=True,
        metadata={
            "help": "Keep actor and critic in eval mode, so that log "
            "π_old and log π agree for the same weights; false: they train with "
            "their models' dropout. The reference and reward models never drop out."
        },
    )

    # Advantages.
    advantage_estimator: str = field(
        default="gae",
        metadata={
            "help": "gae: GAE with a critic (InstructGPT). "
            "Without a critic (three models instead of four): rloo "
            "(leave-one-out baseline), grpo (group mean and std), "
            "reinforce_pp (returns normalised over the global "
            "batch), reinforce_pp_baseline (the same after the "
            "group's mean score is taken off)."
        },
    )
    scale_rewards: bool = field(
        default=True,
        metadata={
            "help": "grpo: divide each group's centred rewards by their std; false: Dr.GRPO's R - mean(R), no std."
        },
    )
    loss_aggregation: str = field(
        default="token_mean",
        metadata={
            "help": "How the per-token policy (and KL) loss "
            "becomes one number: token_mean (each real token "
            "of the minibatch alike), sequence_mean (each "
            "response alike: GRPO), dr_grpo (each response's "
            "sum / max_new_tokens: Dr.GRPO)."
        },
    )

    # PPO.
    gamma: float = field(default=1.0, metadata={"help": "Discount γ of GAE and of reinforce_pp's returns."})
    lam: float = field(default=0.95, metadata={"help": "GAE λ."})
    cliprange: float = field(default=0.2, metadata={"help": "Policy ratio clip ε."})
    cliprange_value: float = field(default=0.2, metadata={"help": "Value clip ε_v around the rollout's values."})
    vf_coef: float = field(
        default=0.1,
        metadata={
            "help": "Scale of the critic's loss. The critic has its own AdamW, "
            "which divides a constant scale out, so this does not weigh value against "
            "policy loss: it only moves gradient clipping, to max_grad_norm / vf_coef in "
            "value-loss units. critic_learning_rate sets how fast the critic learns."
        },
    )

    # Rewards.
    kl_coef: float = field(
        default=0.05,
        metadata={
            "help": "β of the per-token KL penalty (the start, if adaptive), or of the KL loss term with kl_in_loss."
        },
    )
    kl_in_loss: bool = field(
        default=False,
        metadata={
            "help": "The KL to the reference as a loss term, β x the k3 "
            "estimate per token, aggregated as the policy loss "
            "(GRPO), instead of a per-token penalty in the reward."
        },
    )
    adaptive_kl: bool = field(default=False, metadata={"help": "Steer β towards target_kl (Ziegler et al. 2019)."})
    target_kl: float = field(default=6.0, metadata={"help": "Adaptive β: target KL per response, in nats."})
    kl_horizon: int = field(default=10000, metadata={"help": "Adaptive β: horizon, in responses."})
    kl_estimator: str = field(
        default="k1",
        metadata={
            "help": "Per-token KL estimate in the reward and in the `kl` "
            "metric: k1, k2, k3 or abs (the kl_in_loss term is k3)."
        },
    )
    score_clip: float = field(default=0.0, metadata={"help": "Clip reward-model scores to ±this; 0: off."})
    normalize_scores: bool = field(
        default=False, metadata={"help": "Normalise scores by the running mean and std of all scores so far."}
    )
    missing_eos_penalty: float = field(
        default=1.0,
        metadata={
            "help": "Subtracted from the score of a response that "
            "ends without EOS (hit max_new_tokens), after normalisation and clipping, "
            "so in units of normalised scores when normalize_scores; 0: off."
        },
    )
    reward_aggregation: str = field(
        default="mean",
        metadata={
            "help": "How the scores of a reward-model ensemble "
            "(the RM stage's ensemble_size > 1) make one: mean, "
            "min (worst case), or mean_minus_std (mean - "
            "uncertainty_coef x the members' population std); "
            "Coste et al. 2023. min and mean_minus_std need an "
            "ensemble."
        },
    )
    uncertainty_coef: float = field(
        default=1.0,
        metadata={"help": "λ of mean_minus_std: standard deviations of the members' scores taken off their mean."},
    )
    reward_max_length: int = field(
        default=0,
        metadata={
            "help": "Tokens the reward model reads of prompt and "
            "response; 0: max_prompt_length + max_new_tokens + "
            "1, all of them. An input over it loses the start "
            "of its prompt."
        },
    )

    # PPO-ptx (InstructGPT eq. 2).
    ptx_coef: float = field(default=0.0, metadata={"help": "γ of PPO-ptx: weight of the language-modelling loss."})
    ptx_file: str = field(default="", metadata={"help": "PPO-ptx data: demonstrations (prompt/completion) or {text}."})
    ptx_batch_size: int = field(default=8, metadata={"help": "PPO-ptx sequences per optimiser step, per process."})
    ptx_max_length: int = field(default=256, metadata={"help": "PPO-ptx sequence length cap, in tokens."})

    # DeepSpeed: one config file per model.
    actor_deepspeed: str = field(default="deepspeed_configs/zero2.json", metadata={"help": "Actor's DeepSpeed config."})
    critic_deepspeed: str = field(
        default="deepspeed_configs/zero2.json", metadata={"help": "Critic's DeepSpeed config."}
    )
    reference_deepspeed: str = field(
        default="deepspeed_configs/zero3_inference.json", metadata={"help": "Reference policy's DeepSpeed config."}
    )
    reward_deepspeed: str = field(
        default="deepspeed_configs/zero3_inference.json", metadata={"help": "Reward model's DeepSpeed config."}
    )

    # Checkpoints, failures, reporting.
    save_steps: int = field(default=50, metadata={"help": "Checkpoint every this many steps; 0: only at SIGTERM."})
    save_total_limit: int = field(default=2, metadata={"help": "Checkpoints kept (newest); 0: all."})
    max_consecutive_nonfinite: int = field(
        default=3, metadata={"help": "Stop after this many non-finite losses in a row (each one skips its update)."}
    )
    report_to: list[str] = field(
        default_factory=lambda: ["tensorboard"],
        metadata={"help": "Where metrics go besides ppo_metrics.jsonl: tensorboard, or none."},
    )
    disable_tqdm: bool = field(default=False, metadata={"help": "No progress bar."})
    gold_scorer: str = field(
        default="", metadata={"help": "Name of a gold scorer ('demo') for per-step gold scores and the gold win rate."}
    )
    local_rank: int = field(
        default=-1, metadata={"help": "Passed by the deepspeed launcher; ranks are read from the environment."}
    )

    def __post_init__(self):
        if self.bf16 is None:  # unset means "where supported", as for the Trainer stages
            self.bf16 = bf16_supported()
        _check(
            self.adaptation_method in ACTOR_CRITIC_METHODS,
            f"adaptation_method (actor) must be one of {ACTOR_CRITIC_METHODS}, got '{self.adaptation_method}'",
        )
        _check(
            self.critic_adaptation_method in ACTOR_CRITIC_METHODS,
            f"critic_adaptation_method must be one of {ACTOR_CRITIC_METHODS}, got '{self.critic_adaptation_method}'",
        )
        _check(self.zero3_generation in ZERO3_GENERATION, f"zero3_generation must be one of {ZERO3_GENERATION}")
        _check(self.temperature > 0, f"temperature must be > 0, got {self.temperature}")
        _check(0 < self.top_p <= 1, f"top_p must be in (0, 1], got {self.top_p}")
        _check(self.top_k >= 0, f"top_k must be >= 0, got {self.top_k}")
        _check(self.rollout_batch_size >= 1 and self.minibatch_size >= 1, "batch sizes must be >= 1")
        _check(
            self.rollout_batch_size % self.minibatch_size == 0,
            f"rollout_batch_size {self.rollout_batch_size} must be a multiple of minibatch_size {self.minibatch_size}",
        )
        _check(
            self.max_steps >= 1 or self.total_episodes > 0,
            f"max_steps must be >= 1, got {self.max_steps} (0 steps would register the untrained policy)",
        )
        _check(self.reward_max_length >= 0, f"reward_max_length must be >= 0 (0: all), got {self.reward_max_length}")
        _check(self.max_prompt_length >= 1, f"max_prompt_length must be >= 1, got {self.max_prompt_length}")
        _check(self.forward_batch_size >= 0, f"forward_batch_size must be >= 0, got {self.forward_batch_size}")
        _check(
            self.padding_free_row_tokens >= 1,
            f"padding_free_row_tokens must be >= 1, got {self.padding_free_row_tokens}",
        )
        _check(self.ppo_epochs >= 1 and self.max_new_tokens >= 1, "ppo_epochs and max_new_tokens must be >= 1")
        self._check_estimator()
        _check(
            self.kl_estimator in KL_ESTIMATORS,
            f"kl_estimator must be one of {KL_ESTIMATORS}, got '{self.kl_estimator}'",
        )
        _check(self.kl_coef >= 0, "kl_coef must be >= 0")
        _check(
            self.lr_scheduler_type in LR_SCHEDULES,
            f"lr_scheduler_type must be one of {LR_SCHEDULES}, got '{self.lr_scheduler_type}'",
        )
        _check(self.warmup_steps >= 0, "warmup_steps must be >= 0")
        _check(self.missing_eos_penalty >= 0, "missing_eos_penalty must be >= 0")
        _check(
            self.reward_aggregation in REWARD_AGGREGATIONS,
            f"reward_aggregation must be one of {REWARD_AGGREGATIONS}, got '{self.reward_aggregation}'",
        )
        _check(not self.ptx_coef or self.ptx_file, "ptx_coef > 0 needs a ptx_file")
        _check(self.max_consecutive_nonfinite >= 1, "max_consecutive_nonfinite must be >= 1")
        _check(
            all(target in ("tensorboard", "none") for target in self.report_to),
            f"report_to accepts tensorboard or none, got {self.report_to}",
        )
        _check(self.eval_steps >= 0, f"eval_steps must be >= 0 (0: off), got {self.eval_steps}")
        _check(
            not self.eval_steps or bool(self.eval_prompts_file),
            "eval_steps > 0 needs eval_prompts_file (held-out prompts, never the training prompts)",
        )
        _check(self.eval_steps_prompts >= 1, f"eval_steps_prompts must be >= 1, got {self.eval_steps_prompts}")
        _check(bool(self.prompts_file), "prompts_file is required")
        _check(self.rollout_is_cap >= 0, f"rollout_is_cap must be >= 0 (0: off), got {self.rollout_is_cap}")
        _check(
            not self.rollout_is_cap or self.rollout_engine == "vllm",
            "rollout_is_cap corrects for another engine's samples; it needs rollout_engine: vllm",
        )
        super().__post_init__()

    def _check_estimator(self) -> None:
        estimator, n = self.advantage_estimator, self.samples_per_prompt
        _check(
            estimator in ADVANTAGE_ESTIMATORS,
            f"advantage_estimator must be one of {ADVANTAGE_ESTIMATORS}, got '{estimator}'",
        )
        _check(n >= 1, f"samples_per_prompt must be >= 1, got {n}")
        _check(
            estimator not in GROUP_ESTIMATORS or n >= 2,
            f"advantage_estimator {estimator} compares the responses to one prompt: samples_per_prompt must be "
            f">= 2, got {n}",
        )
        for key in ("rollout_batch_size", "minibatch_size"):
            _check(
                getattr(self, key) % n == 0,
                f"{key} {getattr(self, key)} must be a multiple of samples_per_prompt "
                f"{n}: a prompt's responses stay together",
            )
        _check(
            self.loss_aggregation in LOSS_AGGREGATIONS,
            f"loss_aggregation must be one of {LOSS_AGGREGATIONS}, got '{self.loss_aggregation}'",
        )
        _check(
            self.scale_rewards or estimator == "grpo",
            f"scale_rewards: false (Dr.GRPO) applies to advantage_estimator grpo, not {estimator}",
        )
        _check(
            not (self.kl_in_loss and self.adaptive_kl),
            "adaptive_kl steers the KL penalty in the reward; with kl_in_loss the loss term's kl_coef is fixed",
        )

    @property
    def needs_critic(self) -> bool:
        """Only GAE reads a critic's values; the other estimators run with actor, reference and reward model."""
        return self.advantage_estimator == "gae"

    @property
    def prompts_per_rank(self) -> int:
        """Prompts each process samples per step (its rollout batch is each of them samples_per_prompt times)."""
        return self.rollout_batch_size // self.samples_per_prompt

    @property
    def steps(self) -> int:

        if self.total_episodes > 0:
            per_step = self.rollout_batch_size * distributed.world_size()
            return -(-self.total_episodes // per_step)
        return self.max_steps

    @property
    def reward_input_limit(self) -> int:
        """Tokens the reward model reads: `reward_max_length`, or the longest prompt, response and EOS."""
        return self.reward_max_length or self.max_prompt_length + self.max_new_tokens + 1

    @property
    def scoring_batch_size(self) -> int:
        """Rollouts per forward of the scoring passes (`forward_batch_size`, 0 meaning minibatch_size)."""
        return self.forward_batch_size or self.minibatch_size

    @property
    def updates_per_step(self) -> int:
        """Optimiser steps (minibatch updates) of actor and critic per PPO step."""
        return self.ppo_epochs * (self.rollout_batch_size // self.minibatch_size)


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)

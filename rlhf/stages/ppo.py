"""Stage 3: PPO against the reward model with a per-token KL penalty to the SFT policy (InstructGPT §3.5).

    python -m rlhf.stages.ppo --config configs/ppo.yaml [--actor_learning_rate 1e-5 ...]
    python -m rlhf.stages.ppo --config configs/ppo.yaml --advantage_estimator rloo --samples_per_prompt 4
    deepspeed --num_gpus 2 --module rlhf.stages.ppo --config configs/ppo.yaml \
        --actor_deepspeed deepspeed_configs/zero3.json --critic_deepspeed deepspeed_configs/zero3.json

Each step: 1. the actor samples responses to a batch of prompts (samples_per_prompt each); 2. the reference,
critic (GAE only) and reward model score them; 3. scores become per-token rewards (score at the last token, -β·KL
on every token, unless the KL is a loss term), then advantages: GAE with returns for the critic, or a
critic-free estimator (RLOO, GRPO, REINFORCE++); 4. several epochs of clipped PPO over minibatches update the
actor, and the critic; 5. metrics, β update, checkpoint. At the end the policy is saved, compared with the SFT
policy on held-out prompts, and registered.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import torch

from rlhf import distributed, host_memory, run_files
from rlhf.errors import RLHFError, exits_cleanly
from rlhf.generation import stop_token_ids

# Modules, not their functions: the phases are looked up when they run, so a profiler can wrap them.
from rlhf.ppo import checkpoint, engines, evaluation, experience, mismatch, rollouts, tracking, update
from rlhf.ppo import inputs as ppo_inputs
from rlhf.ppo.config import PPOStageConfig
from rlhf.ppo.kl_control import make_kl_controller
from rlhf.ppo.logprobs import sampling_settings_for
from rlhf.ppo.rewards import RunningMoments
from rlhf.stages import epilogue, prologue
from rlhf.stages.prologue import STAGE_INTERRUPTED, run_from_command_line
from rlhf.stop_request import StopRequest


class PPORecipe:
    """setup() builds the four engines (three without a critic), and the vLLM engine beside them with
    rollout_engine vllm, and restores the latest checkpoint; train() runs the PPO steps; finish() saves, compares
    and registers the policy; cleanup() closes the logger and the SIGTERM handler; close_rollouts() ends the vLLM
    engine (after finish, whose comparison samples with it)."""

    def __init__(self, config: PPOStageConfig):
        self.config = config
        self.state: dict[str, Any] = {"step": 0, "skipped_updates": 0, "consecutive_skips": 0}
        self.last_saved: Path | None = None
        self.rollouts = None
        self.vllm = None

    def setup(self) -> None:
        config = self.config
        # The models by reference, the prompts checked before anything trains.
        engines.init_distributed()
        # ZeRO-3 gathers and frees parameters module by module: what it frees must leave the resident set.
        if host_memory.zero3_in(getattr(config, f"{role}_deepspeed") for role in engines.roles_of(config)):
            host_memory.return_freed_blocks_to_os()
        torch.manual_seed(config.seed + distributed.global_rank())
        self.inputs = ppo_inputs.read_inputs(config)
        self.tokenizer = self.inputs.tokenizer
        # vLLM (rollout_engine vllm) loads in its own process while the DeepSpeed engines are built.
        self.vllm = rollouts.start_vllm_engine(config, self.inputs) if config.rollout_engine == "vllm" else None
        self.engines = engines.build_engines(config, self.inputs.paths, self.tokenizer)
        self.sampling = sampling_settings_for(
            self.tokenizer,
            config.temperature,
            config.top_k,
            config.top_p,
            config.max_new_tokens,
            stop_token_ids(self.tokenizer, self.engines.actor.module),
        )
        self.generation_config = self.sampling.generation_config(self.tokenizer)
        self.zero3_generation = experience.choose_zero3_generation(config.zero3_generation, self.engines.actor)
        self.rollouts = rollouts.make_rollouts(
            config, self.vllm, self.sampling, self.tokenizer, self.generation_config, self.zero3_generation
        )
        self.kl_controller = make_kl_controller(config.kl_coef, config.adaptive_kl, config.target_kl, config.kl_horizon)
        self.moments = RunningMoments() if config.normalize_scores else None
        self.gold = ppo_inputs.gold_scorer_or_none(config)
        self.aggregation = evaluation.reward_aggregation(config)  # one score from an ensemble's members
        self.update_settings = update.UpdateSettings(
            ppo_epochs=config.ppo_epochs,
            minibatch_size=config.minibatch_size,
            cliprange=config.cliprange,
            cliprange_value=config.cliprange_value,
            vf_coef=config.vf_coef,
            ptx_coef=config.ptx_coef,
            sampling=self.sampling,
            actor_row_tokens=self.engines.row_tokens["actor"],
            critic_row_tokens=self.engines.row_tokens["critic"],
            samples_per_prompt=config.samples_per_prompt,
            loss_aggregation=config.loss_aggregation,
            kl_loss_coef=config.kl_coef if config.kl_in_loss else None,
            actor_shared_prompt=self.engines.shared_prompt["actor"],
            critic_shared_prompt=self.engines.shared_prompt["critic"],
            rollout_is_cap=config.rollout_is_cap,
        )
        checkpoint.remove_partial_saves(config.output_dir)
        self.resume()
        # The engine starts from random weights of the actor's shape: the actor's (resumed) weights go in now.
        self.rollouts.sync(self.engines.actor)
        ptx = ppo_inputs.ptx_examples(config, self.tokenizer, self.sampling.stop_token_ids) if config.ptx_coef else None
        self.overlong = prologue.report_overlong(config.output_dir, self.inputs.fitted + ([ptx] if ptx else []))
        self.ptx = ppo_inputs.ptx_iterator(
            config,
            ptx[2].kept if ptx else [],
            self.tokenizer.pad_token_id,
            start_batch=self.state["step"] * config.updates_per_step,
        )
        self.logger = tracking.MetricsLogger(
            config.output_dir, config.report_to, config.steps, self.state["step"], show_progress=not config.disable_tqdm
        )
        # Held-out RM score, gold score and KL every eval_steps: PPO's points against best-of-N (Gao et al. 2022).
        self.held_out = evaluation.HeldOutEvaluation(
            config, self.inputs, self.tokenizer, self.sampling, self.rollouts, self.gold, self.state["step"]
        )
        self.held_out.evaluate_if_due(self.state["step"], self.engines)
        self.stop = StopRequest()

    def resume(self) -> None:
        """Weights, optimisers, RNG, β, score moments and the data position (the step) of the latest checkpoint."""
        if not self.config.resume:
            return
        self.last_saved = checkpoint.resumable_checkpoint(self.config.output_dir, self.engines.critic is not None)
        if self.last_saved is None:
            return
        self.state = checkpoint.load_checkpoint(self.last_saved, self.engines.actor, self.engines.critic)
        self.kl_controller.load_state_dict(self.state["kl_controller"])
        if self.moments is not None:
            self.moments.load_state_dict(self.state["score_moments"])
        if distributed.is_main_process():
            print(f"resuming from {self.last_saved} (step {self.state['step']})", flush=True)

    def train(self) -> bool:
        """Run the remaining steps; False when SIGTERM stopped the run (after saving a checkpoint)."""
        config = self.config
        for step in range(self.state["step"], config.steps):
            row = self.ppo_step(step)
            self.kl_controller.update(row["kl"], config.rollout_batch_size * distributed.world_size())
            self.logger.log(row)
            self.held_out.evaluate_if_due(step + 1, self.engines)
            stopping = self.stop.any_rank()
            if stopping or (config.save_steps and (step + 1) % config.save_steps == 0):
                self.save_checkpoint(step + 1)
            if stopping:
                if distributed.is_main_process():
                    print(f"SIGTERM: saved {self.last_saved}; resume with --resume", flush=True)
                return False
        return True

    def ppo_step(self, step: int) -> dict[str, Any]:
        """One PPO step (0-based); returns its row of metrics."""
        config, models, tokenizer = self.config, self.engines, self.tokenizer
        # 1. Generate: this rank's slice of the step's prompts, sampled by the actor (KV cache) or its vLLM engine.
        started = time.perf_counter()
        prompts = self.inputs.prompts_for_step(step)
        batch = experience.tokenize_prompts(tokenizer, prompts)
        response_ids, engine_logprobs = self.rollouts.generate(models.actor, batch, (config.seed, "train", step))
        self.rollouts.release_memory()  # vllm_sleep_mode: the engine's GPU memory, until the sync
        generated = time.perf_counter()

        # 2. Score: log π_old and log π_ref under the sampling distribution, V(s_t) (GAE), reward-model scores
        #    (an ensemble's members' scores, aggregated by reward_aggregation). log π_old is the actor's own,
        #    whichever engine sampled.
        rollout = experience.score(
            models,
            batch,
            response_ids,
            tokenizer,
            self.sampling,
            config.reward_input_limit,
            config.scoring_batch_size,
            self.aggregation,
        )
        rollout.engine_logprobs = engine_logprobs
        scored = time.perf_counter()

        # 3. Advantages: per-token rewards with the KL penalty (unless it is a loss term), then GAE and whitening,
        #    or the critic-free estimator's.
        shaping = experience.RewardShaping(
            kl_coef=0.0 if config.kl_in_loss else self.kl_controller.value,
            kl_estimator=config.kl_estimator,
            score_clip=config.score_clip,
            missing_eos_penalty=config.missing_eos_penalty,
            gamma=config.gamma,
            lam=config.lam,
            advantage_estimator=config.advantage_estimator,
            samples_per_prompt=config.samples_per_prompt,
            scale_rewards=config.scale_rewards,
        )
        rollout, kl = experience.with_advantages(rollout, shaping, self.sampling.stop_token_ids, self.moments)

        # 4. Update: PPO epochs over minibatches of whole groups; a non-finite loss skips its update.
        generator = torch.Generator().manual_seed(config.seed * 1_000_003 + step)
        try:
            result = update.ppo_update(
                models.actor,
                models.critic,
                rollout,
                self.update_settings,
                generator,
                self.ptx,
                self.state["consecutive_skips"],
                config.max_consecutive_nonfinite,
            )
        except update.NonFiniteLossError as error:
            raise RLHFError(
                f"stopped at step {step + 1}: {error}; the last good checkpoint is "
                f"{self.last_saved or 'none (no checkpoint was saved yet)'}"
            ) from None
        self.state["skipped_updates"] += result.skipped
        self.state["consecutive_skips"] = result.consecutive_skips
        trained = time.perf_counter()

        # 4b. Sync: the vLLM engine gets the updated weights before it samples again (a no-op for hf).
        sync_seconds = self.rollouts.sync(models.actor)

        # 5. Metrics, averaged over ranks.
        texts = experience.decode_responses(tokenizer, batch, rollout.response_ids, rollout.response_mask)
        engine_metrics = {}
        if engine_logprobs is not None:
            gap, kl_engine = mismatch.logprob_gap(engine_logprobs, rollout.logprobs, rollout.response_mask)
            engine_metrics = {
                "rollout_logprob_gap": gap,
                "rollout_logprob_kl": kl_engine,
                "time_weight_sync": sync_seconds,
            }
        row = tracking.step_metrics(
            step + 1,
            rollout,
            kl,
            result,
            self.kl_controller.value,
            prompts,
            texts,
            self.gold,
            times=(generated - started, scored - generated, trained - scored),
            skipped_updates=self.state["skipped_updates"],
            ptx=self.ptx is not None,
            eos_token_id=self.sampling.stop_token_ids,
            kl_loss=config.kl_in_loss,
            extra=engine_metrics,
        )
        row["learning_rate"] = models.actor.get_lr()[0]  # the schedule's value for the next step
        return row

    def save_checkpoint(self, step: int) -> None:
        trainer_state = {
            "step": step,
            "kl_controller": self.kl_controller.state_dict(),
            "skipped_updates": self.state["skipped_updates"],
            "consecutive_skips": self.state["consecutive_skips"],
            "score_moments": self.moments.state_dict() if self.moments is not None else None,
        }
        self.last_saved = checkpoint.save_checkpoint(
            self.config.output_dir,
            step,
            self.engines.actor,
            self.engines.critic,
            trainer_state,
            self.config.save_total_limit,
        )

    def finish(self):
        """6. Save the policy in Hugging Face format, compare it with the SFT policy on held-out prompts, register.
        Returns the registry entry (None off rank 0)."""
        config = self.config
        final_dir = Path(config.output_dir) / run_files.FINAL_MODEL
        epilogue.save_final_model(
            self.engines.actor.module,
            self.tokenizer,
            final_dir,
            engines.adaptation_for(config, config.adaptation_method),
            zero3=engines.zero_stage(self.engines.actor) == 3,
            engine=self.engines.actor,
        )
        if not distributed.is_main_process():
            return None
        metrics = {
            **evaluation.final_metrics(
                config, self.inputs, self.tokenizer, self.sampling, self.state, final_dir, self.rollouts.engine
            ),
            **self.overlong,
        }
        return epilogue.write_and_register(
            config, self.inputs.registry, final_dir, stage="ppo", metrics=metrics, **self.inputs.lineage(config)
        )

    def cleanup(self) -> None:
        self.logger.close()
        self.stop.restore()

    def close_rollouts(self) -> None:
        """End the vLLM engine's process (none with hf); also when setup or training failed."""
        if self.rollouts is not None:
            self.rollouts.close()
        elif self.vllm is not None:
            self.vllm.close()


def run(config: PPOStageConfig):
    """Train, compare with the SFT policy, save and register. Returns the registry entry (None off rank 0)."""
    recipe = PPORecipe(config)
    try:
        recipe.setup()
        try:
            finished = recipe.train()
        finally:
            recipe.cleanup()
        return recipe.finish() if finished else None
    finally:
        recipe.close_rollouts()


@exits_cleanly(on_interrupt=STAGE_INTERRUPTED)
def main(argv: list[str] | None = None) -> None:
    run_from_command_line(PPOStageConfig, run, argv)


if __name__ == "__main__":
    main(sys.argv[1:])

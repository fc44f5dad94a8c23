"""Tiny PPO inputs built on disk from config (never downloaded): a policy, a reward model, prompts.

The policy is the demo's word-level tokenizer with a one-layer Llama; the reward model is the same architecture
with a scalar head whose weights are scaled up, so that its (fixed, random) score varies clearly between
responses and PPO has something to climb.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from rlhf.config import settings_to_argv
from tests.helpers import REPO


def build_models(root: Path, *, hidden_size: int = 32, num_layers: int = 1, head_scale: float = 50.0) -> dict:
    from rlhf.demo.task import DemoSettings, corpus_words, make_split
    from rlhf.demo.tiny_model import build_tiny_model, build_tiny_reward_model

    policy = build_tiny_model(
        root / "policy", corpus_words(), hidden_size=hidden_size, num_layers=num_layers, num_heads=2, seed=0
    )
    build_tiny_reward_model(root / "reward", policy, seed=1, head_scale=head_scale)

    records = make_split(64, seed=3, settings=DemoSettings())
    (root / "prompts.jsonl").write_text("".join(json.dumps({"prompt": r["prompt"]}) + "\n" for r in records[:48]))
    (root / "eval_prompts.jsonl").write_text("".join(json.dumps({"prompt": r["prompt"]}) + "\n" for r in records[48:]))
    (root / "demos.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return {
        "policy": str(policy),
        "reward": str(root / "reward"),
        "prompts": str(root / "prompts.jsonl"),
        "eval_prompts": str(root / "eval_prompts.jsonl"),
        "demos": str(root / "demos.jsonl"),
    }


def build_reward_ensemble(root: Path, paths: dict, offsets=(0.5, -0.25), head_scale: float = 50.0) -> str:
    """An ensemble of tiny reward models (rlhf.rm.ensemble), one per offset, as the RM stage saves one: members of
    the policy's architecture with random heads of other seeds, each with its own normalisation offset."""
    from rlhf.demo.tiny_model import build_tiny_reward_model
    from rlhf.rm.ensemble import assemble
    from rlhf.rm.model import RewardNormalization

    members = []
    for index, offset in enumerate(offsets):
        member = build_tiny_reward_model(
            root / f"reward-member-{index}", paths["policy"], seed=11 + index, head_scale=head_scale
        )
        RewardNormalization(offset=offset, normalized_on="test", samples=1).save(member)
        members.append(member)
    return str(assemble(members, root / "reward_ensemble"))


def stage_arguments(paths: dict, output_dir: Path, registry: Path, **overrides) -> list[str]:
    """Command-line arguments of a short, fast run on the tiny models (all four engines ZeRO-0)."""
    zero0 = str(REPO / "deepspeed_configs" / "zero0.json")
    settings = dict(
        model_name_or_path=paths["policy"],
        critic_model=paths["reward"],
        reward_model=paths["reward"],
        prompts_file=paths["prompts"],
        eval_prompts_file=paths["eval_prompts"],
        eval_prompts=8,
        output_dir=str(output_dir),
        registry_dir=str(registry),
        max_new_tokens=4,
        max_steps=4,
        rollout_batch_size=8,
        minibatch_size=4,
        ppo_epochs=1,
        actor_learning_rate=5e-3,
        critic_learning_rate=5e-3,
        kl_coef=0.01,
        save_steps=2,
        disable_tqdm=True,
        report_to="none",
        seed=0,
        actor_deepspeed=zero0,
        critic_deepspeed=zero0,
        reference_deepspeed=zero0,
        reward_deepspeed=zero0,
    )
    settings.update(overrides)
    return settings_to_argv(settings)


def subprocess_env(tmp_path: Path) -> dict:
    env = dict(os.environ)
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu")
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)  # a fresh world of one, not the test process's
    return env


PYTHON = sys.executable

# Wall-clock metrics: the only ones two runs of the same computation may disagree on.
TIMING_KEYS = {"time_generation", "time_scoring", "time_training", "tokens_per_second", "time_weight_sync"}


def two_process_command(*target: str, port: int | None = None) -> list[str]:
    """The `deepspeed` command for 2 processes on this machine (`python -m deepspeed.launcher.runner`, found without
    relying on PATH), running `target`: a script and its arguments, or --module and a stage's."""
    from rlhf.distributed import free_port

    return [
        PYTHON,
        "-m",
        "deepspeed.launcher.runner",
        "--num_gpus",
        "2",
        "--master_port",
        str(port or free_port()),
        *target,
    ]


def launch_two(argv: list[str], tmp_path: Path) -> subprocess.Popen:
    """The PPO stage on 2 processes with `argv`, started and not waited for."""
    # Its own session, so that a kill takes the launcher and both ranks at once, as a node failure would.
    command = two_process_command("--module", "rlhf.stages.ppo", *argv)
    return subprocess.Popen(
        command,
        env=subprocess_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=REPO,
        start_new_session=True,
    )


def reports_of_two_ranks(probe: str, input_file: Path, out_dir: Path, tmp_path: Path) -> tuple[list[dict], str]:
    """Run tests/<probe> in 2 processes (the deepspeed launcher, gloo on CPU) on `input_file`; each rank writes
    out_dir/rank<N>.json. Returns both reports and the run's output."""

    command = two_process_command(str(REPO / "tests" / "helpers" / probe), str(input_file), str(out_dir))
    result = subprocess.run(
        command, env=subprocess_env(tmp_path), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert result.returncode == 0, result.stdout[-4000:]
    return [json.loads((out_dir / f"rank{rank}.json").read_text()) for rank in (0, 1)], result.stdout


def assert_same_metric_rows(expected: list[dict], got: list[dict], label: str = "") -> None:
    """Two runs' PPO metric rows agree, step by step, on everything but timing."""
    assert [row["step"] for row in got] == [row["step"] for row in expected]
    for want, have in zip(expected, got):
        for key in set(want) - TIMING_KEYS:
            assert have[key] == pytest.approx(want[key], rel=1e-5, abs=1e-6), (label, want["step"], key)


def assert_same_final_metrics(expected: dict, got: dict) -> None:
    """Two runs' metrics.json agree: numbers to float tolerance, words and flags (the estimator) exactly."""
    assert set(got) == set(expected)
    numbers = {
        key for key, value in expected.items() if isinstance(value, (int, float)) and not isinstance(value, bool)
    }
    words = set(expected) - numbers
    assert {key: got[key] for key in numbers} == pytest.approx(
        {key: expected[key] for key in numbers}, rel=1e-5, abs=1e-6
    )
    assert {key: got[key] for key in words} == {key: expected[key] for key in words}


def saved_weights(directory) -> dict:
    """Every tensor of the safetensors files (shards included) in a saved model directory."""
    from safetensors.torch import load_file

    weights = {}
    for file in sorted(Path(directory).glob("*.safetensors")):
        weights.update(load_file(str(file)))
    return weights


def wait_for(condition, process: subprocess.Popen) -> None:
    """Poll `condition` until it holds; an error with the run's output if the run ends first."""
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"the run ended before the condition held:\n{process.stdout.read()[-3000:]}")
        time.sleep(0.02)


def killed_at_step_2_then_resumed(
    start: Callable[[list[str]], subprocess.Popen],
    kill: Callable[[subprocess.Popen], None],
    models: dict,
    run_dir: Path,
    registry: Path,
    **settings,
) -> str:
    """Start a run, kill it once its step-2 checkpoint exists, check that it died before registering, resume it
    with the same settings; returns the resumed run's output."""
    killed = start(stage_arguments(models, run_dir, registry, **settings))
    wait_for(lambda: (run_dir / "checkpoints" / "step-2").is_dir(), killed)
    kill(killed)
    killed.wait()
    assert not (run_dir / "registered.json").exists()  # it really died mid-run
    resumed = start(stage_arguments(models, run_dir, registry, resume=True, **settings))
    output = resumed.communicate()[0]
    assert resumed.returncode == 0, output[-4000:]
    assert "resuming from" in output
    return output


def engines_for(models: dict, tmp_path: Path, **overrides):
    """The PPO stage's config, inputs and four engines for a short run on the tiny models, built in this process."""
    from rlhf.config import parse_config
    from rlhf.ppo import inputs as ppo_inputs
    from rlhf.ppo.engines import build_engines, init_distributed
    from rlhf.stages.ppo import PPOStageConfig

    init_distributed()
    config = parse_config(PPOStageConfig, stage_arguments(models, tmp_path / "run", tmp_path / "registry", **overrides))
    inputs = ppo_inputs.read_inputs(config)
    return config, inputs, build_engines(config, inputs.paths, inputs.tokenizer)


def scalar_head_model(tokenizer):
    """A tiny random reward model for `tokenizer`, in eval mode."""
    from transformers import LlamaForSequenceClassification

    from rlhf.demo.tiny_model import tiny_llama_config

    torch.manual_seed(0)
    config = tiny_llama_config(
        len(tokenizer), hidden_size=16, num_layers=1, num_heads=2, num_labels=1, pad_token_id=tokenizer.pad_token_id
    )
    return LlamaForSequenceClassification(config).eval()


def scores_in_ppo(
    reward_model,
    reward_tokenizer,
    policy_tokenizer,
    batch,
    response_ids,
    mask,
    offset: float,
    shared_prompt=None,
    forward_batch_size: int = 0,
):
    """The scores PPO's scoring step gives these responses, with the reward model alone behind the engines
    (`shared_prompt`: whether it may share a prompt among its responses; default not)."""
    from types import SimpleNamespace

    from rlhf.ppo.experience import member_reward_scores
    from rlhf.shared_prompt.forward import OFF

    engines = SimpleNamespace(
        reward=SimpleNamespace(module=reward_model, device=torch.device("cpu")),
        reward_tokenizer=reward_tokenizer,
        reward_offsets=(offset,),
        reward_stop_token_ids=(reward_tokenizer.eos_token_id,),
        shared_prompt={"reward": shared_prompt or OFF},
    )
    with torch.no_grad():
        return member_reward_scores(
            engines, policy_tokenizer, batch, response_ids, mask, max_length=64, forward_batch_size=forward_batch_size
        )[:, 0]


def deepspeed_launch(argv: list[str], tmp_path, port: int) -> subprocess.CompletedProcess:
    command = two_process_command("--module", "rlhf.stages.ppo", *argv, port=port)
    return subprocess.run(
        command, env=subprocess_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO
    )


def run_in_process(argv: list[str]):
    from rlhf.config import parse_config
    from rlhf.stages.ppo import PPOStageConfig, run

    return run(parse_config(PPOStageConfig, argv))


def scored_rollout(engines, inputs, count: int = 4):
    from rlhf.ppo import experience
    from rlhf.ppo.logprobs import sampling_settings_for

    sampling = sampling_settings_for(inputs.tokenizer, 1.0, 0, 1.0, 5)
    batch = experience.tokenize_prompts(inputs.tokenizer, inputs.prompts[:count])
    torch.manual_seed(0)
    response_ids = experience.generate(engines.actor, batch, sampling.generation_config(inputs.tokenizer), "auto")
    rollout = experience.score(engines, batch, response_ids, inputs.tokenizer, sampling, 64)
    rollout, _ = experience.with_advantages(
        rollout, experience.RewardShaping(kl_coef=0.01), sampling.stop_token_ids, None
    )
    return rollout, sampling

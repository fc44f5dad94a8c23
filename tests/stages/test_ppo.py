"""The PPO stage end to end on tiny models: reward rises, outputs follow the contract, checkpoints resume
exactly, SIGTERM saves and exits cleanly, non-finite losses are skipped then stop the run."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest
import torch

from tests.helpers.ppo_setup import (
    PYTHON,
    assert_same_final_metrics,
    assert_same_metric_rows,
    killed_at_step_2_then_resumed,
    run_in_process,
    stage_arguments,
    subprocess_env,
    wait_for,
)

CONTRACT_STEP_KEYS = {
    "step",
    "rm_score",
    "gold_score",
    "kl",
    "beta",
    "entropy",
    "response_length",
    "policy_loss",
    "value_loss",
    "clip_fraction",
    "approx_kl",
    "value_explained_variance",
    "non_eos_fraction",
    "skipped_updates",
    "time_generation",
    "time_scoring",
    "time_training",
    "tokens_per_second",
}


def read_rows(output_dir: Path) -> list[dict]:
    from rlhf.ppo.tracking import read_metrics

    return read_metrics(output_dir)


def launch(argv: list[str], tmp_path: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [PYTHON, "-m", "rlhf.stages.ppo", *argv],
        env=subprocess_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.mark.slow
def test_reward_rises_and_outputs_follow_the_contract(models, tmp_path):
    output_dir = tmp_path / "run"
    # No missing-EOS penalty: at 4 new tokens nearly every response is cut, and the penalty would pull the policy
    # towards ending early instead of towards what the random reward model scores (see the test below).
    entry = run_in_process(
        stage_arguments(
            models,
            output_dir,
            tmp_path / "registry",
            max_steps=14,
            rollout_batch_size=32,
            minibatch_size=8,
            ppo_epochs=2,
            gold_scorer="demo",
            report_to="tensorboard",
            save_steps=7,
            missing_eos_penalty=0.0,
        )
    )
    rows = read_rows(output_dir)
    assert [row["step"] for row in rows] == list(range(1, 15))
    assert CONTRACT_STEP_KEYS <= set(rows[0])
    first, last = rows[:3], rows[-3:]
    mean = lambda rows, key: sum(row[key] for row in rows) / len(rows)  # noqa: E731
    assert mean(last, "rm_score") > mean(first, "rm_score") + 1.0, [row["rm_score"] for row in rows]
    assert mean(last, "entropy") < mean(first, "entropy")  # the policy sharpened towards what the RM rewards
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # the first rollout is sampled by the reference itself

    metrics = json.loads((output_dir / "metrics.json").read_text())
    for key in (
        "win_rate_rm",
        "win_rate_gold",
        "rm_score_sft",
        "rm_score_ppo",
        "gold_score_sft",
        "gold_score_ppo",
        "kl_final",
        "steps",
        "skipped_updates",
    ):
        assert key in metrics, key
    assert metrics["rm_score_ppo"] > metrics["rm_score_sft"]
    assert metrics["win_rate_rm"] > 0.5
    samples = json.loads((output_dir / "samples.json").read_text())
    assert set(samples[0]) == {"prompt", "sft", "ppo", "rm_sft", "rm_ppo", "gold_sft", "gold_ppo", "task"}
    assert {sample["task"] for sample in samples} <= {"sort", "reverse", "repeat", "first", "last"}
    for key in ("win_rate_gold_greedy", "gold_score_sft_greedy", "gold_score_ppo_greedy"):
        assert 0 <= metrics[key] <= 1, key
    assert list((output_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert sorted(p.name for p in (output_dir / "checkpoints").iterdir()) == ["step-14", "step-7"]

    registered = json.loads((output_dir / "registered.json").read_text())
    assert registered["reference"] == entry.reference == "ppo@1"
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(entry.path)  # a plain Hugging Face directory


@pytest.mark.slow
def test_the_default_missing_eos_penalty_teaches_the_policy_to_end_its_responses(models, tmp_path):
    output_dir = tmp_path / "run"
    run_in_process(
        stage_arguments(
            models,
            output_dir,
            tmp_path / "registry",
            max_steps=14,
            rollout_batch_size=32,
            minibatch_size=8,
            ppo_epochs=2,
            save_steps=0,
            eval_prompts=2,
        )
    )
    rows = read_rows(output_dir)
    unfinished = [row["non_eos_fraction"] for row in rows]
    # At 4 new tokens the tiny random policy runs to the cap ~90% of the time; the penalty alone makes it stop.
    assert sum(unfinished[-3:]) / 3 < sum(unfinished[:3]) / 3 - 0.4, unfinished


@pytest.mark.slow
def test_resume_after_a_kill_reports_the_same_metrics_as_an_uninterrupted_run(models, tmp_path):
    common = dict(max_steps=8, save_steps=2, eval_prompts=4)
    straight = launch(stage_arguments(models, tmp_path / "straight", tmp_path / "reg1", **common), tmp_path)
    assert straight.wait() == 0, straight.stdout.read()[-3000:]

    killed_dir = tmp_path / "killed"
    killed_at_step_2_then_resumed(
        lambda argv: launch(argv, tmp_path),
        lambda run: run.send_signal(signal.SIGKILL),
        models,
        killed_dir,
        tmp_path / "reg2",
        **common,
    )

    expected, got = read_rows(tmp_path / "straight"), read_rows(killed_dir)
    assert [row["step"] for row in got] == list(range(1, 9))
    assert_same_metric_rows(expected, got)
    final_expected = json.loads((tmp_path / "straight" / "metrics.json").read_text())
    final_got = json.loads((killed_dir / "metrics.json").read_text())
    assert_same_final_metrics(final_expected, final_got)


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_exits_cleanly(models, tmp_path):
    output_dir = tmp_path / "run"
    process = launch(stage_arguments(models, output_dir, tmp_path / "registry", max_steps=500, save_steps=0), tmp_path)
    wait_for(lambda: len(read_rows(output_dir)) >= 2, process)
    process.send_signal(signal.SIGTERM)
    output = process.communicate()[0]
    assert process.returncode == 0, output[-3000:]
    assert "SIGTERM: saved" in output
    from rlhf.ppo.checkpoint import latest_checkpoint

    last_step = read_rows(output_dir)[-1]["step"]
    assert latest_checkpoint(output_dir).name == f"step-{last_step}"
    state = json.loads((latest_checkpoint(output_dir) / "trainer_state.json").read_text())
    assert state["step"] == last_step and "kl_controller" in state
    assert not (output_dir / "registered.json").exists()


@pytest.mark.slow
def test_non_finite_losses_skip_their_updates_then_stop_with_the_last_good_checkpoint(models, tmp_path, monkeypatch):
    from rlhf.errors import RLHFError
    from rlhf.ppo import losses

    real_policy_loss = losses.ppo_policy_loss
    calls = {"count": 0}

    def policy_loss_that_breaks_after_step_one(*args, **kwargs):
        loss, clip_fraction, approx_kl = real_policy_loss(*args, **kwargs)
        calls["count"] += 1
        return (loss if calls["count"] <= 2 else loss * float("nan")), clip_fraction, approx_kl

    monkeypatch.setattr(losses, "ppo_policy_loss", policy_loss_that_breaks_after_step_one)
    output_dir = tmp_path / "run"
    # Two minibatch updates per step: step 1 is good, step 2 skips both (its checkpoint holds step 1's weights),
    # step 3's first skip is the third in a row and stops the run.
    with pytest.raises(
        RLHFError,
        match=r"stopped at step 3: 3 non-finite losses in a row; the last good "
        r"checkpoint is .*step-2",
    ):
        run_in_process(
            stage_arguments(
                models, output_dir, tmp_path / "registry", max_steps=10, save_steps=1, max_consecutive_nonfinite=3
            )
        )
    rows = read_rows(output_dir)
    assert [row["skipped_updates"] for row in rows] == [0, 2]
    assert rows[0]["policy_loss"] is not None and rows[1]["policy_loss"] is None  # no update applied at step 2
    from rlhf.ppo.checkpoint import latest_checkpoint

    state = json.loads((latest_checkpoint(output_dir) / "trainer_state.json").read_text())
    assert (state["step"], state["skipped_updates"], state["consecutive_skips"]) == (2, 2, 2)


def test_a_bad_prompt_record_is_one_line_and_exit_code_2(models, tmp_path, capsys):
    from rlhf.stages.ppo import main

    bad = tmp_path / "prompts.jsonl"
    bad.write_text('{"prompt": "sort these words : cat dog answer :"}\n{"text": "no prompt here"}\n')
    with pytest.raises(SystemExit) as exit_info:
        main(stage_arguments({**models, "prompts": str(bad)}, tmp_path / "run", tmp_path / "registry"))
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: ") and "record 2" in error and "'prompt'" in error


@pytest.mark.slow
def test_ppo_ptx_mixes_in_a_language_modelling_loss_that_falls(models, tmp_path):
    output_dir = tmp_path / "run"
    run_in_process(
        stage_arguments(
            models,
            output_dir,
            tmp_path / "registry",
            max_steps=6,
            save_steps=0,
            eval_prompts_file="",
            ptx_coef=5.0,
            ptx_file=models["demos"],
            ptx_batch_size=8,
        )
    )
    rows = read_rows(output_dir)
    losses = [row["ptx_loss"] for row in rows]
    assert all(loss is not None and loss > 0 for loss in losses)
    # The completions' loss (prompts are out of it, as in SFT) is trained down.
    assert losses[-1] < losses[0] - 0.3, losses
    assert "win_rate_rm" not in json.loads((output_dir / "metrics.json").read_text())  # no held-out prompts given


@pytest.mark.slow
def test_lora_actor_and_critic_train_and_save_a_merged_plain_model(models, tmp_path):
    from transformers import AutoModelForCausalLM

    output_dir = tmp_path / "run"
    entry = run_in_process(
        stage_arguments(
            models,
            output_dir,
            tmp_path / "registry",
            max_steps=3,
            save_steps=0,
            adaptation_method="lora",
            critic_adaptation_method="lora",
            lora_r=4,
            actor_learning_rate=2e-2,
        )
    )
    rows = read_rows(output_dir)
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-6) and rows[-1]["kl"] != 0  # the adapter moved the policy
    saved = AutoModelForCausalLM.from_pretrained(entry.path)  # merged: no peft needed to load it
    base = AutoModelForCausalLM.from_pretrained(models["policy"])
    assert not any("lora" in name for name in saved.state_dict())
    changed = [name for name, tensor in saved.state_dict().items() if not torch.equal(tensor, base.state_dict()[name])]
    assert changed and all(name.endswith(".weight") for name in changed)


@pytest.mark.slow
@pytest.mark.parametrize(
    "estimator, settings",
    [
        ("rloo", {}),
        # Dr.GRPO, with the KL as GRPO's loss term instead of a penalty in the reward.
        ("grpo", {"scale_rewards": False, "loss_aggregation": "dr_grpo", "kl_in_loss": True}),
    ],
)
def test_a_critic_free_estimator_trains_three_models_and_raises_the_reward(models, tmp_path, estimator, settings):
    output_dir = tmp_path / "run"
    entry = run_in_process(
        stage_arguments(
            models,
            output_dir,
            tmp_path / "registry",
            advantage_estimator=estimator,
            samples_per_prompt=4,
            max_steps=10,
            rollout_batch_size=32,
            minibatch_size=16,
            ppo_epochs=2,
            actor_learning_rate=1e-2,
            missing_eos_penalty=0.0,
            save_steps=10,
            eval_prompts=4,
            **settings,
        )
    )
    rows = read_rows(output_dir)
    mean = lambda rows, key: sum(row[key] for row in rows) / len(rows)  # noqa: E731
    assert mean(rows[-3:], "rm_score") > mean(rows[:3], "rm_score") + 0.8, [row["rm_score"] for row in rows]
    assert mean(rows[-3:], "entropy") < mean(rows[:3], "entropy")
    # No critic: no value metrics at all (not zeros), and no critic in the checkpoint.
    assert not {"value_loss", "value_explained_variance"} & set(rows[0])
    assert ("kl_loss" in rows[0]) == bool(settings.get("kl_in_loss"))
    assert sorted(p.name for p in (output_dir / "checkpoints" / "step-10").iterdir()) == [
        "actor",
        "rng_state_0.pt",
        "trainer_state.json",
    ]
    metrics = json.loads((output_dir / "metrics.json").read_text())
    assert (metrics["advantage_estimator"], metrics["samples_per_prompt"]) == (estimator, 4)
    assert metrics["kl_in_loss"] == bool(settings.get("kl_in_loss"))
    assert entry.metrics["advantage_estimator"] == estimator  # the registry entry says which estimator ran


@pytest.mark.slow
def test_an_ensemble_reward_is_aggregated_with_its_disagreement_in_every_row(models, tmp_path):
    from tests.helpers.ppo_setup import build_reward_ensemble

    ensemble = build_reward_ensemble(tmp_path, models, offsets=(0.5, -0.25))
    output_dir = tmp_path / "run"
    entry = run_in_process(
        stage_arguments(
            models,
            output_dir,
            tmp_path / "registry",
            reward_model=ensemble,
            critic_model=ensemble,
            reward_aggregation="mean_minus_std",
            uncertainty_coef=0.5,
            max_steps=3,
            eval_steps=2,
            save_steps=0,
            eval_prompts=4,
            gold_scorer="demo",
        )
    )
    rows, held_out = (
        read_rows(output_dir),
        [json.loads(line) for line in (output_dir / "eval_metrics.jsonl").read_text().splitlines()],
    )
    assert [row["step"] for row in held_out] == [0, 2, 3]
    for row in rows + held_out:
        # The mean over responses of (mean − λ·std) is the mean of the means less λ times the mean std.
        assert row["rm_score"] == pytest.approx(row["rm_score_mean"] - 0.5 * row["rm_score_std"], abs=1e-5)
        assert row["rm_score_std"] > 0  # two members with their own random heads disagree
    metrics = entry.metrics
    assert (metrics["reward_aggregation"], metrics["uncertainty_coef"], metrics["reward_members"]) == (
        "mean_minus_std",
        0.5,
        2,
    )

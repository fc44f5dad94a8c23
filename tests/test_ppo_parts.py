"""Small PPO parts: config validation, DeepSpeed "auto" resolution, prompt positions, win rate, checkpoint picking,
reward shaping, the critic's per-token values."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rlhf.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def parse(argv):
    from rlhf.config import parse_config
    from rlhf.stages.ppo import PPOStageConfig

    return parse_config(PPOStageConfig, argv)


def test_demo_config_loads_and_every_field_documents_itself():
    import dataclasses

    from rlhf.stages.ppo import PPOStageConfig

    config = parse(["--config", str(ROOT / "configs" / "ppo.yaml")])
    assert config.model_name_or_path == "sft" and config.reward_model == "rm" and config.critic_model == "rm"
    assert config.reference_model == ""
    for f in dataclasses.fields(PPOStageConfig):
        assert f.metadata.get("help"), f.name


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--adaptation_method", "bitfit"], "adaptation_method \\(actor\\) must be one of"),
        (["--critic_adaptation_method", "ia3"], "critic_adaptation_method must be one of"),
        (["--rollout_batch_size", "10", "--minibatch_size", "4"], "must be a multiple of minibatch_size"),
        (["--temperature", "0"], "temperature must be > 0"),
        (["--zero3_generation", "sometimes"], "zero3_generation must be one of"),
        (["--ptx_coef", "0.5"], "ptx_coef > 0 needs a ptx_file"),
        (["--kl_estimator", "k9"], r"kl_estimator must be one of \('k1', 'k2', 'k3', 'abs'\), got 'k9'"),
        (["--reward_aggregation", "median"], "reward_aggregation must be one of"),
        (["--uncertainty_coef", "-1"], "uncertainty_coef must be >= 0"),
    ],
)
def test_bad_values_are_config_errors(argv, message):
    with pytest.raises(ConfigError, match=message):
        parse(["--prompts_file", "p.jsonl", *argv])


def test_total_episodes_sets_the_number_of_steps():
    config = parse(
        ["--prompts_file", "p.jsonl", "--total_episodes", "100", "--rollout_batch_size", "16", "--minibatch_size", "8"]
    )
    assert config.steps == 7  # ceil(100 / 16) on one process


@pytest.mark.parametrize("path", sorted((ROOT / "deepspeed_configs").glob("*.json")), ids=lambda p: p.name)
def test_every_deepspeed_config_resolves_its_autos_for_ppo(path):
    from rlhf.config import load_deepspeed_config
    from rlhf.ppo.engines import fill_auto

    resolved = fill_auto(
        load_deepspeed_config(str(path)), micro_batch_size=8, max_grad_norm=1.0, hidden_size=64, source=str(path)
    )
    assert "auto" not in repr(resolved)
    assert resolved["train_micro_batch_size_per_gpu"] == 8 and resolved["train_batch_size"] == 8


def test_an_auto_ppo_cannot_resolve_is_named():
    from rlhf.ppo.engines import fill_auto

    with pytest.raises(ConfigError, match="x.json: 'optimizer.params.lr' is \"auto\""):
        fill_auto(
            {"optimizer": {"params": {"lr": "auto"}}},
            micro_batch_size=1,
            max_grad_norm=1.0,
            hidden_size=4,
            source="x.json",
        )


def test_prompt_positions_follow_from_the_step_and_split_by_rank():
    from rlhf.ppo.data import prompts_for_step

    prompts = list(range(10))
    epoch = [prompts_for_step(prompts, step, 2, 1, 0, seed=0) for step in range(5)]
    assert sorted(sum(epoch, [])) == prompts  # one epoch visits every prompt once
    assert prompts_for_step(prompts, 3, 2, 1, 0, seed=0) == epoch[3]  # no state: a resumed run gets the same
    assert prompts_for_step(prompts, 5, 2, 1, 0, seed=0) != epoch[0]  # a new epoch is reshuffled
    ranks = [prompts_for_step(prompts, 1, 2, 2, rank, seed=0) for rank in (0, 1)]
    assert ranks[0] + ranks[1] == epoch[2] + epoch[3]  # rank r takes its slice of the step's prompts


def test_win_rate_counts_ties_half():
    from rlhf.ppo.evaluation import win_rate

    assert win_rate([1.0, 0.5, 0.2, 0.7], [0.5, 0.5, 0.9, 0.1]) == pytest.approx((1 + 0.5 + 0 + 1) / 4)


def test_non_eos_fraction_reads_the_last_real_token():
    from rlhf.ppo.rollout import Rollout
    from rlhf.ppo.tracking import non_eos_fraction

    response_ids = torch.tensor([[5, 2, 0], [5, 6, 7], [2, 0, 0], [0, 0, 0]])  # eos 2, pad 0
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0], [0, 0, 0]])
    zeros = torch.zeros(4, 3)
    rollout = Rollout(
        query_ids=torch.ones(4, 1, dtype=torch.long),
        query_mask=torch.ones(4, 1),
        response_ids=response_ids,
        response_mask=mask,
        logprobs=zeros,
        ref_logprobs=zeros,
        values=zeros,
        scores=torch.zeros(4),
    )
    assert non_eos_fraction(rollout, eos_token_id=2) == pytest.approx(0.5)  # rows 1 and 3 never ended


def test_latest_checkpoint_ignores_unfinished_ones(tmp_path):
    from rlhf.ppo.checkpoint import TRAINER_STATE, latest_checkpoint

    assert latest_checkpoint(tmp_path) is None
    for step, complete in ((2, True), (10, True), (12, False)):
        directory = tmp_path / "checkpoints" / f"step-{step}"
        directory.mkdir(parents=True)
        if complete:
            (directory / TRAINER_STATE).write_text("{}")
    (tmp_path / "checkpoints" / ".step-14.saving").mkdir()
    assert latest_checkpoint(tmp_path).name == "step-10"  # numeric order, not "step-2" > "step-10"


def test_remove_partial_saves_removes_only_unfinished_staging_directories(tmp_path):
    from rlhf.ppo.checkpoint import TRAINER_STATE, checkpoints_dir, remove_partial_saves

    remove_partial_saves(tmp_path)  # no checkpoints directory yet
    directory = checkpoints_dir(tmp_path)
    (directory / "step-2").mkdir(parents=True)
    (directory / "step-2" / TRAINER_STATE).write_text("{}")
    (directory / ".step-4.saving" / "actor").mkdir(parents=True)
    (directory / ".step-4.saving" / "rng_state_0.pt").write_bytes(b"PK partial")
    (directory / "notes.txt").write_text("a user's file")
    remove_partial_saves(tmp_path)
    assert sorted(path.name for path in directory.iterdir()) == ["notes.txt", "step-2"]


def test_reward_shaping_by_hand():
    from rlhf.ppo import rewards
    from rlhf.ppo.experience import RewardShaping, with_advantages
    from rlhf.ppo.rollout import Rollout

    # One response of 2 tokens ending in EOS (2), one of 3 tokens without EOS.
    response_ids = torch.tensor([[7, 2, 0], [7, 8, 9]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    logprobs = torch.tensor([[-1.0, -1.0, 0.0], [-1.0, -2.0, -1.0]])
    ref_logprobs = torch.tensor([[-1.5, -1.0, 0.0], [-1.0, -1.0, -1.0]])
    rollout = Rollout(
        query_ids=torch.ones(2, 1, dtype=torch.long),
        query_mask=torch.ones(2, 1),
        response_ids=response_ids,
        response_mask=mask,
        logprobs=logprobs,
        ref_logprobs=ref_logprobs,
        values=torch.zeros(2, 3),
        scores=torch.tensor([3.0, 3.0]),
    )
    shaping = RewardShaping(kl_coef=0.1, score_clip=2.5, missing_eos_penalty=1.0, gamma=1.0, lam=1.0)
    shaped, kl = with_advantages(rollout, shaping, eos_token_id=2, moments=None)
    # Row 0: score 3 clipped to 2.5 at its last token; KL 0.5 at token 0. Row 1: 3 clipped to 2.5, then - 1 for
    # the missing EOS (the penalty comes after clipping, so it is never clipped away) = 1.5 at token 2, KL -1 at
    # token 1.
    expected_rewards = torch.tensor([[-0.05, 2.5, 0.0], [0.0, 0.1, 1.5]])
    torch.testing.assert_close(shaped.rewards, expected_rewards)
    torch.testing.assert_close(kl, torch.tensor([[0.5, 0.0, 0.0], [0.0, -1.0, 0.0]]))
    # With V = 0, γ = λ = 1 the returns are the reward-to-go; advantages are those, whitened over real tokens.
    returns = torch.tensor([[2.45, 2.5, 0.0], [1.6, 1.6, 1.5]])
    torch.testing.assert_close(shaped.returns, returns)
    torch.testing.assert_close(shaped.advantages, rewards.masked_whiten(returns, mask))


def test_missing_eos_penalty_is_in_units_of_normalised_scores():
    from rlhf.ppo.experience import RewardShaping, with_advantages
    from rlhf.ppo.rewards import RunningMoments
    from rlhf.ppo.rollout import Rollout

    # Scores 10 and 30: running mean 20, unbiased std sqrt(200) = 14.142; normalised -0.7071 and 0.7071.
    # Row 1 has no EOS: 0.7071 - 0.5 = 0.2071, whatever the raw scale of the scores was.
    zeros = torch.zeros(2, 2)
    rollout = Rollout(
        query_ids=torch.ones(2, 1, dtype=torch.long),
        query_mask=torch.ones(2, 1),
        response_ids=torch.tensor([[7, 2], [7, 8]]),
        response_mask=torch.ones(2, 2),
        logprobs=zeros,
        ref_logprobs=zeros,
        values=zeros,
        scores=torch.tensor([10.0, 30.0]),
    )
    moments = RunningMoments()
    shaped, _ = with_advantages(
        rollout, RewardShaping(kl_coef=0.0, missing_eos_penalty=0.5), eos_token_id=2, moments=moments
    )
    torch.testing.assert_close(shaped.rewards[:, -1], torch.tensor([-0.70710678, 0.20710678]))
    assert (moments.mean, moments.count) == (20.0, 2)  # the moments saw the reward model's scores alone


def test_critic_values_are_the_reward_heads_output_at_every_position(tiny_reward_model):
    from rlhf.ppo.critic import TokenValueModel

    tiny_reward_model.eval()
    critic = TokenValueModel(tiny_reward_model)
    input_ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
    attention_mask = torch.ones_like(input_ids)
    values = critic(input_ids, attention_mask)
    assert values.shape == (2, 4)
    # The sequence classifier's score is the head at the last real token: the critic's last value.
    scores = tiny_reward_model(input_ids=input_ids, attention_mask=attention_mask).logits[:, 0]
    torch.testing.assert_close(values[:, -1], scores)
    # ...and every prefix has its own value: V(s_t) for the prefix input_ids[:, :t+1].
    prefix_scores = tiny_reward_model(input_ids=input_ids[:, :2], attention_mask=attention_mask[:, :2]).logits[:, 0]
    torch.testing.assert_close(values[:, 1], prefix_scores)


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


def test_responses_are_retokenized_for_a_reward_model_with_another_tokenizer():
    from rlhf.demo.task import corpus_words
    from rlhf.demo.tiny_model import build_tokenizer
    from rlhf.models import same_tokenization
    from rlhf.ppo import rewards
    from rlhf.ppo.experience import decode_responses, tokenize_prompts
    from rlhf.rm.model import score_texts

    policy_tokenizer = build_tokenizer(corpus_words())
    # One more word shifts every id after it: the same text becomes other ids for the reward model.
    reward_tokenizer = build_tokenizer(corpus_words() + ["aardvark"])
    assert not same_tokenization(policy_tokenizer, reward_tokenizer)
    reward_model = scalar_head_model(reward_tokenizer)
    prompts = ["sort these words : cat dog answer :", "reverse these words : owl fox bear answer :"]
    batch = tokenize_prompts(policy_tokenizer, prompts)
    word = policy_tokenizer.convert_tokens_to_ids
    response_ids = torch.tensor(
        [[word("cat"), word("dog"), policy_tokenizer.eos_token_id], [word("bear"), word("fox"), word("owl")]]
    )
    mask = rewards.response_mask_after_eos(response_ids, policy_tokenizer.eos_token_id, policy_tokenizer.pad_token_id)
    scores = scores_in_ppo(reward_model, reward_tokenizer, policy_tokenizer, batch, response_ids, mask, offset=0.25)
    texts = decode_responses(policy_tokenizer, batch, response_ids, mask)
    assert texts == [" cat dog", " bear fox owl"]  # decoded after the prompt: the joining space is theirs
    expected = score_texts(reward_model, reward_tokenizer, prompts, texts, max_length=64)
    torch.testing.assert_close(scores, torch.tensor(expected) - 0.25)


def test_with_the_same_tokenization_the_generated_ids_are_scored_as_the_text_would_be():
    from rlhf.demo.task import corpus_words
    from rlhf.demo.tiny_model import build_tokenizer
    from rlhf.ppo import rewards
    from rlhf.ppo.experience import decode_responses, tokenize_prompts
    from rlhf.rm.model import score_texts

    tokenizer = build_tokenizer(corpus_words())
    reward_model = scalar_head_model(tokenizer)
    prompts = ["first word of these : cat dog answer :", "sort these words : owl fox answer :"]
    batch = tokenize_prompts(tokenizer, prompts)
    word = tokenizer.convert_tokens_to_ids
    # A response ended by EOS and one cut at max_new_tokens: both reach the reward model ending in EOS.
    response_ids = torch.tensor(
        [[word("cat"), tokenizer.eos_token_id, tokenizer.pad_token_id], [word("fox"), word("owl"), word("fox")]]
    )
    mask = rewards.response_mask_after_eos(response_ids, tokenizer.eos_token_id, tokenizer.pad_token_id)
    scores = scores_in_ppo(reward_model, tokenizer, tokenizer, batch, response_ids, mask, offset=0.0)
    expected = score_texts(
        reward_model, tokenizer, prompts, decode_responses(tokenizer, batch, response_ids, mask), max_length=64
    )
    torch.testing.assert_close(scores, torch.tensor(expected))


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--advantage_estimator", "ppo"], "advantage_estimator must be one of \\('gae', 'rloo', 'grpo'"),
        (
            ["--advantage_estimator", "rloo"],
            "advantage_estimator rloo compares the responses to one prompt: samples_per_prompt must be >= 2, got 1",
        ),
        (["--advantage_estimator", "reinforce_pp_baseline"], "samples_per_prompt must be >= 2"),
        (["--samples_per_prompt", "0"], "samples_per_prompt must be >= 1, got 0"),
        (
            ["--samples_per_prompt", "3", "--rollout_batch_size", "16", "--minibatch_size", "8"],
            "rollout_batch_size 16 must be a multiple of samples_per_prompt 3: a prompt's responses stay together",
        ),
        (
            ["--samples_per_prompt", "4", "--rollout_batch_size", "16", "--minibatch_size", "2"],
            "minibatch_size 2 must be a multiple of samples_per_prompt 4",
        ),
        (["--loss_aggregation", "sum"], "loss_aggregation must be one of"),
        (
            ["--advantage_estimator", "rloo", "--samples_per_prompt", "4", "--scale_rewards", "false"],
            "scale_rewards: false \\(Dr.GRPO\\) applies to advantage_estimator grpo, not rloo",
        ),
        (["--kl_in_loss", "true", "--adaptive_kl", "true"], "adaptive_kl steers the KL penalty in the reward"),
    ],
)
def test_estimator_settings_that_cannot_work_are_config_errors(argv, message):
    with pytest.raises(ConfigError, match=message):
        parse(["--prompts_file", "p.jsonl", *argv])


def test_a_group_estimator_counts_responses_in_the_batch_sizes():
    config = parse(
        [
            "--prompts_file",
            "p.jsonl",
            "--advantage_estimator",
            "grpo",
            "--samples_per_prompt",
            "4",
            "--rollout_batch_size",
            "16",
            "--minibatch_size",
            "8",
            "--scale_rewards",
            "false",
            "--loss_aggregation",
            "dr_grpo",
            "--kl_in_loss",
            "true",
            "--total_episodes",
            "40",
        ]
    )
    assert config.prompts_per_rank == 4 and not config.needs_critic  # 16 responses: 4 prompts x 4 samples
    assert config.steps == 3  # ceil(40 responses / 16)
    assert parse(["--prompts_file", "p.jsonl"]).needs_critic  # gae, the default

"""Shared-prompt forwards (rlhf/shared_prompt/): the row layout, positions, mask and read-back places worked out by
hand."""

from __future__ import annotations

import pytest
import torch

from tests.helpers.architectures import family_reward_model, ignores_custom_masks


def test_the_shared_prefix_is_what_all_of_a_groups_sequences_begin_with_less_each_ones_last_token():
    from rlhf.shared_prompt.layout import shared_prefix_lengths

    input_ids = torch.tensor(
        [
            [11, 12, 13, 21, 22],
            [11, 12, 13, 31, 0],
            [41, 42, 0, 0, 0],
            [51, 52, 61, 0, 0],
            [51, 52, 62, 63, 0],
            [51, 52, 61, 64, 0],
            [5, 6, 7, 0, 0],
            [5, 6, 7, 0, 0],
        ]
    )
    mask = torch.tensor(
        [
            [1] * 5,
            [1] * 4 + [0],
            [1] * 2 + [0] * 3,
            [1] * 3 + [0] * 2,
            [1] * 4 + [0],
            [1] * 4 + [0],
            [1] * 3 + [0] * 2,
            [1] * 3 + [0] * 2,
        ]
    )
    # (a) 11 12 13 in common; (b) alone: all but its last token; (c) the third member agrees with the first on
    # 51 52 61, the second only on 51 52, and the first has 3 tokens: 2; (d) two equal sequences keep their last.
    assert shared_prefix_lengths(input_ids, mask, [2, 1, 3, 2]).tolist() == [3, 1, 2, 2]
    # Padding is not a token: the same sequences left-padded share the same.
    left = torch.tensor([[0, 11, 12, 13, 31], [11, 12, 13, 21, 22]])
    assert shared_prefix_lengths(left, left != 0, [2]).tolist() == [3]
    with pytest.raises(ValueError, match="every group needs a sequence"):
        shared_prefix_lengths(input_ids, mask, [2, 0, 6])


def right_padded_groups():
    """A ranking of 2, one of 1 and one of 3 (the last one's members share 2 tokens), right-padded as the reward
    model's collator pads them."""
    input_ids = torch.tensor(
        [
            [11, 12, 13, 21, 22],
            [11, 12, 13, 31, 0],
            [41, 42, 0, 0, 0],
            [51, 52, 61, 0, 0],
            [51, 52, 62, 63, 0],
            [51, 52, 61, 64, 0],
        ]
    )
    return input_ids, (input_ids != 0).long(), [2, 1, 3]


def test_groups_are_laid_out_shared_part_first_then_each_sequences_own_with_positions_continuing():
    from rlhf.shared_prompt.layout import shared_prompt_rows

    input_ids, mask, sizes = right_padded_groups()
    # Spans: 3 + 2 + 1 = 6, 1 + 1 = 2, 2 + 1 + 2 + 2 = 7; rows of 8: the first two groups share row 0.
    rows = shared_prompt_rows(input_ids, mask, sizes, row_tokens=8)
    assert rows.input_ids.tolist() == [[11, 12, 13, 21, 22, 31, 41, 42], [51, 52, 61, 62, 63, 61, 64, 0]]
    assert rows.position_ids.tolist() == [[0, 1, 2, 3, 4, 3, 0, 1], [0, 1, 2, 2, 3, 2, 3, 0]]
    assert rows.group_ids.tolist() == [[0, 0, 0, 0, 0, 0, 1, 1], [2, 2, 2, 2, 2, 2, 2, -1]]
    assert rows.segment_ids.tolist() == [[0, 0, 0, 1, 1, 2, 0, 1], [0, 0, 1, 2, 2, 3, 3, -1]]
    # Each sequence's score is read at its own last token.
    last_rows, last_columns = rows.last_tokens()
    assert list(zip(last_rows.tolist(), last_columns.tolist())) == [(0, 4), (0, 5), (0, 7), (1, 2), (1, 4), (1, 6)]
    # Every real token of the padded batch is found again at its place (the shared ones in every sequence).
    assert rows.unpack(rows.input_ids, 0, 5).tolist() == input_ids.tolist()
    # Without row_tokens a row holds the longest group (7): each group gets its own row.
    alone = shared_prompt_rows(input_ids, mask, sizes)
    assert alone.input_ids.tolist() == [
        [11, 12, 13, 21, 22, 31, 0],
        [41, 42, 0, 0, 0, 0, 0],
        [51, 52, 61, 62, 63, 61, 64],
    ]


def test_each_token_sees_the_shared_part_and_its_own_sequence_causally_and_nothing_else():
    from rlhf.shared_prompt.layout import shared_prompt_rows

    rows = shared_prompt_rows(*right_padded_groups(), row_tokens=8)
    mask = rows.attention_mask(torch.float32)
    assert mask.shape == (2, 1, 8, 8)
    seen = [[(mask[row, 0, i] == 0).nonzero()[:, 0].tolist() for i in range(8)] for row in range(2)]
    assert seen[0] == [
        [0],
        [0, 1],
        [0, 1, 2],
        [0, 1, 2, 3],
        [0, 1, 2, 3, 4],  # 21 22: the prompt, then themselves
        [0, 1, 2, 5],  # 31: the prompt and itself, not 21 22
        [6],
        [6, 7],
    ]  # the second group, alone in its part of the row
    assert seen[1] == [
        [0],
        [0, 1],
        [0, 1, 2],  # 61 (member 1)
        [0, 1, 3],
        [0, 1, 3, 4],  # 62 63 (member 2)
        [0, 1, 5],
        [0, 1, 5, 6],  # 61 64 (member 3): its own 61, not member 1's
        [7],
    ]  # filler sees only filler
    assert (mask[mask != 0] == torch.finfo(torch.float32).min).all()
    assert rows.attention_mask(torch.bfloat16).dtype == torch.bfloat16


def test_left_padded_prompts_with_right_padded_responses_share_the_prompt_as_ppo_pads_them():
    """PPO's rollouts: n responses to a prompt in consecutive rows, the prompt padded on the left."""
    from rlhf.ppo.logprobs import position_ids_from_mask
    from rlhf.shared_prompt.layout import shared_prompt_rows

    input_ids = torch.tensor([[0, 11, 12, 21, 22], [0, 11, 12, 23, 0], [13, 14, 15, 24, 0], [13, 14, 15, 25, 26]])
    mask = (input_ids != 0).long()
    rows = shared_prompt_rows(input_ids, mask, [2, 2])
    # Spans 2 + 2 + 1 = 5 and 3 + 1 + 2 = 6: a row each, of 6.
    assert rows.input_ids.tolist() == [[11, 12, 21, 22, 23, 0], [13, 14, 15, 24, 25, 26]]
    assert rows.position_ids.tolist() == [[0, 1, 2, 3, 2, 0], [0, 1, 2, 3, 3, 4]]
    # The positions are those the padded forward gives (counting real tokens), read back at every real token.
    real = mask.bool()
    assert rows.unpack(rows.position_ids, 0, 5)[real].tolist() == position_ids_from_mask(mask)[real].tolist()
    # Per-token outputs of the columns that predict the responses (2..3): both members read the shared 12.
    assert rows.unpack(rows.input_ids, 2, 4).tolist() == [[12, 21], [12, 23], [15, 24], [15, 25]]


def test_runs_of_equal_consecutive_prompts_are_the_groups_that_share():
    from rlhf.shared_prompt.layout import consecutive_runs

    assert consecutive_runs(["a", "a", "b", "a", "a", "a"]) == [2, 1, 3]
    chat = [{"role": "user", "content": "hi"}]
    assert consecutive_runs([chat, list(chat), "hi"]) == [2, 1]
    assert consecutive_runs([]) == []


def test_runs_of_equal_rows_are_ppos_groups_and_only_a_group_of_two_or_more_runs_shared():
    from rlhf.shared_prompt.forward import OFF, SharedPromptSupport
    from rlhf.shared_prompt.layout import runs_of_equal_rows

    queries = torch.tensor([[0, 7, 8], [0, 7, 8], [0, 7, 8], [5, 6, 9], [0, 7, 8]])
    assert runs_of_equal_rows(queries) == [3, 1, 1]
    assert runs_of_equal_rows(torch.tensor([4, 4, 2])) == [2, 1] and runs_of_equal_rows(queries[:0]) == []
    mask = torch.ones((5, 3), dtype=torch.long)
    assert SharedPromptSupport(True).shares([3, 1, 1], mask)
    assert not SharedPromptSupport(True).shares([1, 1, 1, 1, 1], mask)  # samples_per_prompt 1: nothing to share
    assert not OFF.shares([3, 1, 1], mask) and not SharedPromptSupport(True, window=2).shares([3, 1, 1], mask)


# ---------------------------------------------------------------------------------------------------------
# On real model families: the same scores, losses and gradients as one sequence per completion
# ---------------------------------------------------------------------------------------------------------


def ranking_batch(config, seed: int):
    """Three rankings of K = 2, 4 and 3 with prompts of 7, 3 and 5 tokens and completions of 1 to 5 tokens,
    right-padded by the RM stage's collator with the model's padding token (where its score pooling looks)."""
    from rlhf.rm.batches import RankingCollator

    generator = torch.Generator().manual_seed(seed)

    def tokens(count):
        return torch.randint(3, config.vocab_size, (count,), generator=generator).tolist()

    features = []
    for prompt_length, completion_lengths, ranks in (
        (7, [3, 1], [1, 2]),
        (3, [5, 2, 4, 2], [2, 1, 4, 2]),
        (5, [1, 4, 3], [3, 1, 2]),
    ):
        prompt = tokens(prompt_length)
        features.append({"input_ids": [prompt + tokens(n) for n in completion_lengths], "ranks": ranks})
    return RankingCollator(pad_token_id=config.pad_token_id)(features)


def rewards_loss_and_gradients(model, batch, shared):
    from rlhf.rm.loss import kway_ranking_loss
    from rlhf.rm.trainer import ranking_rewards

    model.zero_grad()
    rewards = ranking_rewards(model, batch, shared)
    loss = kway_ranking_loss(rewards.float(), batch["ranks"])
    loss.backward()
    gradients = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return rewards.detach(), loss.detach(), gradients


def assert_same_training_signal(model, batch, shared):
    from rlhf.shared_prompt.forward import OFF

    assert shared.enabled, shared.reason
    separate = rewards_loss_and_gradients(model, batch, OFF)
    together = rewards_loss_and_gradients(model, batch, shared)
    real = batch["ranks"] > 0
    torch.testing.assert_close(together[0][real], separate[0][real], atol=1e-5, rtol=1e-5)
    assert (together[0][~real] == 0).all()
    torch.testing.assert_close(together[1], separate[1], atol=1e-6, rtol=1e-5)
    assert together[2].keys() == separate[2].keys() and len(separate[2]) > 3
    for name in separate[2]:
        torch.testing.assert_close(together[2][name], separate[2][name], atol=1e-5, rtol=1e-4, msg=name)
    assert max(g.abs().max() for g in separate[2].values()) > 1e-3  # the gradients compared are not all zero


@pytest.mark.parametrize(
    "family, attention",
    [(family, "sdpa") for family in ("llama3", "qwen2", "gpt2", "opt", "gpt_neox", "mistral")]
    + [("llama3", "eager"), ("gpt2", "eager")],
)
def test_shared_prompt_rewards_losses_and_gradients_equal_one_sequence_per_completion(family, attention):
    from rlhf.shared_prompt.forward import reward_model_support

    model = family_reward_model(family, attention)
    shared = reward_model_support(model, across_ranks=False)
    assert not model.training  # the check put the modes back
    assert_same_training_signal(model, ranking_batch(model.config, seed=1), shared)


def test_under_activation_checkpointing_in_train_mode_the_training_signal_is_the_same():
    """What the Trainer runs with gradient_checkpointing: layers recompute their activations, 4D mask included."""
    from rlhf.shared_prompt.forward import reward_model_support

    model = family_reward_model("llama3")
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()  # no dropout in this Llama: train mode changes nothing but the checkpointing
    shared = reward_model_support(model, across_ranks=False)
    assert model.training
    assert_same_training_signal(model, ranking_batch(model.config, seed=6), shared)


def test_a_lora_reward_model_shares_through_peft_with_the_same_training_signal():
    """peft wraps the model and puts a trainable copy of the head in its place: the head's outputs are read there."""
    from rlhf.adaptation.apply import apply_adaptation
    from rlhf.adaptation.config import AdaptationConfig
    from rlhf.shared_prompt.forward import reward_model_support

    model = apply_adaptation(
        family_reward_model("llama3"), AdaptationConfig(adaptation_method="lora"), task="reward"
    ).eval()
    shared = reward_model_support(model, across_ranks=False)
    batch = ranking_batch(model.config, seed=2)
    assert_same_training_signal(model, batch, shared)
    _, _, gradients = rewards_loss_and_gradients(model, batch, shared)
    assert any("lora_" in name for name in gradients) and any("score" in name for name in gradients)
    assert all("lora_" in name or "score" in name for name in gradients)  # only what LoRA trains


def test_held_out_rankings_score_the_same_shared_with_prompts_cut_to_max_length_and_batches_splitting_them():
    """Evaluation (`score_rankings` -> `score_texts`): consecutive completions of a prompt share it. Cut to
    max_length, a longer completion loses more of its prompt's start; those rankings share what is still common."""
    from rlhf.data.rankings import Ranking
    from rlhf.demo.task import corpus_words, make_split
    from rlhf.rm.evaluation import score_rankings
    from rlhf.rm.model import score_texts
    from rlhf.shared_prompt.forward import reward_model_support
    from tests.helpers.architectures import family_tokenizer

    tokenizer = family_tokenizer("qwen2", corpus_words())
    model = family_reward_model("qwen2")
    records = make_split(3, seed=0)
    rankings = [
        Ranking(f"r{i}", record["prompt"], completions, tuple(range(1, len(completions) + 1)), None)
        for i, (record, completions) in enumerate(
            zip(
                records,
                (
                    (" a b", " lemon", " peach plum cat lemon banana owl owl"),
                    (" cat", " peach cat cherry lemon wolf"),
                    (" owl", " banana duck", " banana duck lemon owl owl", " duck"),
                ),
            )
        )
    ]
    shared = reward_model_support(model, across_ranks=False)
    assert shared.enabled
    prompts = [r.prompt for r in rankings for _ in r.completions]
    completions = [c for r in rankings for c in r.completions]
    for max_length in (64, 18):  # 18: the prompts (12-13 tokens) lose their start behind the longer completions
        separate = score_texts(model, tokenizer, prompts, completions, max_length=max_length)
        # Batches of 4 cut the first and last rankings in two: each part shares within its batch.
        together = score_texts(
            model, tokenizer, prompts, completions, max_length=max_length, batch_size=4, shared_prompt=shared
        )
        assert together == pytest.approx(separate, abs=1e-5)
    rows = score_rankings(model, tokenizer, rankings, None, 18, shared_prompt=shared)
    assert [len(row) for row in rows] == [3, 2, 4] and sum(rows, []) == pytest.approx(separate, abs=1e-5)


# ---------------------------------------------------------------------------------------------------------
# What falls back, and says so
# ---------------------------------------------------------------------------------------------------------


def test_a_model_whose_attention_ignores_the_custom_mask_fails_the_check_and_scores_one_sequence_per_completion():
    from transformers import AttentionInterface

    from rlhf.rm.trainer import ranking_rewards
    from rlhf.shared_prompt.forward import OFF, reward_model_support

    AttentionInterface.register("ignores_custom_masks", ignores_custom_masks)
    model = family_reward_model("llama3", attention="ignores_custom_masks")
    shared = reward_model_support(model, across_ranks=False)
    assert not shared.enabled
    assert shared.line("reward model") == (
        "shared_prompt_forward: the reward model: its attention does not keep the responses apart under a custom "
        "mask; each response runs with its own copy of the prompt"
    )
    batch = ranking_batch(model.config, seed=3)
    with torch.no_grad():
        assert torch.equal(ranking_rewards(model, batch, shared), ranking_rewards(model, batch, OFF))


def test_the_rm_trainer_checks_once_at_the_first_batch_and_says_so_in_one_line(tmp_path, capsys):
    from transformers import AttentionInterface

    from tests.helpers.rm_setup import ranking_trainer

    AttentionInterface.register("ignores_custom_masks", ignores_custom_masks)
    model = family_reward_model("llama3", attention="ignores_custom_masks")
    trainer = ranking_trainer(model, tmp_path, shared_prompt_forward=True)
    batch = ranking_batch(model.config, seed=5)
    for _ in range(2):
        trainer.compute_loss(model, batch)
    said = [line for line in capsys.readouterr().out.splitlines() if "shared_prompt_forward" in line]
    assert said == [trainer.shared_prompt.line("reward model")] and not trainer.shared_prompt.enabled


def test_flash_attention_is_refused_by_its_name_without_running_the_model():
    from transformers import LlamaConfig

    from rlhf.shared_prompt.forward import check_support

    def never(**inputs):
        raise AssertionError("flash attention's kernels are not asked")

    config = LlamaConfig(
        vocab_size=16,
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=8,
        attn_implementation="flash_attention_2",
    )
    shared = check_support(never, torch.nn.Linear(2, 2), config, "cpu", across_ranks=False)
    assert not shared.enabled and shared.reason == "flash_attention_2's kernels take no custom attention mask"


def test_a_model_that_refuses_a_custom_mask_fails_the_check_with_its_error_named():
    from rlhf.shared_prompt.forward import check_support

    def refuses(input_ids, attention_mask, position_ids=None):
        if attention_mask.dim() == 4:
            raise TypeError("a 2D mask only\nmore detail")
        return input_ids.float()

    config = family_reward_model("gpt2").config
    shared = check_support(refuses, torch.nn.Linear(2, 2), config, "cpu", across_ranks=False)
    assert not shared.enabled
    assert shared.reason == "its forward failed on a shared-prompt row (TypeError: a 2D mask only)"


def test_a_sliding_window_shorter_than_a_batch_sends_that_batch_down_the_separate_path():
    """One custom mask cannot hold a model's window (nor a window on some layers only): a batch whose sequences
    fit the window shares, a longer one runs as before."""
    from rlhf.rm.trainer import ranking_rewards
    from rlhf.shared_prompt.forward import OFF, SharedPromptSupport, reward_model_support

    assert SharedPromptSupport(True, window=8).covers(8) and not SharedPromptSupport(True, window=8).covers(9)
    assert SharedPromptSupport(True).covers(10**6) and not OFF.covers(1)
    model = family_reward_model("mistral")
    model.config.sliding_window = 6  # the batch's longest sequence has 8 tokens
    shared = reward_model_support(model, across_ranks=False)
    assert shared.enabled and shared.window == 6
    batch = ranking_batch(model.config, seed=4)
    with torch.no_grad():
        separate = ranking_rewards(model, batch, OFF)
        torch.testing.assert_close(ranking_rewards(model, batch, shared), separate, atol=1e-6, rtol=1e-6)
        # Shared regardless of the window, the longest completions would see further back than the model does.
        unwindowed = ranking_rewards(model, batch, SharedPromptSupport(True))
    assert (unwindowed - separate).abs().max() > 1e-4


def test_torch_data_parallel_is_refused_as_its_replicas_would_split_the_rows():
    from rlhf.shared_prompt.forward import reward_model_support

    shared = reward_model_support(torch.nn.DataParallel(family_reward_model("llama3")), across_ranks=False)
    assert not shared.enabled and "DataParallel" in shared.reason

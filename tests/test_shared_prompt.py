"""Shared-prompt forwards (rlhf/shared_prompt/): the row layout, positions, mask and read-back places worked out by
hand."""

from __future__ import annotations

import pytest
import torch


def test_the_shared_prefix_is_what_all_of_a_groups_sequences_begin_with_less_each_ones_last_token():
    from rlhf.shared_prompt.layout import shared_prefix_lengths

    input_ids = torch.tensor([[11, 12, 13, 21, 22],
                              [11, 12, 13, 31, 0],
                              [41, 42, 0, 0, 0],
                              [51, 52, 61, 0, 0],
                              [51, 52, 62, 63, 0],
                              [51, 52, 61, 64, 0],
                              [5, 6, 7, 0, 0],
                              [5, 6, 7, 0, 0]])
    mask = torch.tensor([[1] * 5, [1] * 4 + [0], [1] * 2 + [0] * 3, [1] * 3 + [0] * 2, [1] * 4 + [0],
                         [1] * 4 + [0], [1] * 3 + [0] * 2, [1] * 3 + [0] * 2])
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
    input_ids = torch.tensor([[11, 12, 13, 21, 22],
                              [11, 12, 13, 31, 0],
                              [41, 42, 0, 0, 0],
                              [51, 52, 61, 0, 0],
                              [51, 52, 62, 63, 0],
                              [51, 52, 61, 64, 0]])
    return input_ids, (input_ids != 0).long(), [2, 1, 3]


def test_groups_are_laid_out_shared_part_first_then_each_sequences_own_with_positions_continuing():
    from rlhf.shared_prompt.layout import shared_prompt_rows

    input_ids, mask, sizes = right_padded_groups()
    # Spans: 3 + 2 + 1 = 6, 1 + 1 = 2, 2 + 1 + 2 + 2 = 7; rows of 8: the first two groups share row 0.
    rows = shared_prompt_rows(input_ids, mask, sizes, row_tokens=8)
    assert rows.input_ids.tolist() == [[11, 12, 13, 21, 22, 31, 41, 42],
                                       [51, 52, 61, 62, 63, 61, 64, 0]]
    assert rows.position_ids.tolist() == [[0, 1, 2, 3, 4, 3, 0, 1],
                                          [0, 1, 2, 2, 3, 2, 3, 0]]
    assert rows.group_ids.tolist() == [[0, 0, 0, 0, 0, 0, 1, 1],
                                       [2, 2, 2, 2, 2, 2, 2, -1]]
    assert rows.segment_ids.tolist() == [[0, 0, 0, 1, 1, 2, 0, 1],
                                         [0, 0, 1, 2, 2, 3, 3, -1]]
    # Each sequence's score is read at its own last token.
    last_rows, last_columns = rows.last_tokens()
    assert list(zip(last_rows.tolist(), last_columns.tolist())) == [(0, 4), (0, 5), (0, 7), (1, 2), (1, 4), (1, 6)]
    # Every real token of the padded batch is found again at its place (the shared ones in every sequence).
    assert rows.unpack(rows.input_ids, 0, 5).tolist() == input_ids.tolist()
    # Without row_tokens a row holds the longest group (7): each group gets its own row.
    alone = shared_prompt_rows(input_ids, mask, sizes)
    assert alone.input_ids.tolist() == [[11, 12, 13, 21, 22, 31, 0], [41, 42, 0, 0, 0, 0, 0],
                                        [51, 52, 61, 62, 63, 61, 64]]


def test_each_token_sees_the_shared_part_and_its_own_sequence_causally_and_nothing_else():
    from rlhf.shared_prompt.layout import shared_prompt_rows

    rows = shared_prompt_rows(*right_padded_groups(), row_tokens=8)
    mask = rows.attention_mask(torch.float32)
    assert mask.shape == (2, 1, 8, 8)
    seen = [[(mask[row, 0, i] == 0).nonzero()[:, 0].tolist() for i in range(8)] for row in range(2)]
    assert seen[0] == [[0], [0, 1], [0, 1, 2],
                       [0, 1, 2, 3], [0, 1, 2, 3, 4],  # 21 22: the prompt, then themselves
                       [0, 1, 2, 5],  # 31: the prompt and itself, not 21 22
                       [6], [6, 7]]  # the second group, alone in its part of the row
    assert seen[1] == [[0], [0, 1],
                       [0, 1, 2],  # 61 (member 1)
                       [0, 1, 3], [0, 1, 3, 4],  # 62 63 (member 2)
                       [0, 1, 5], [0, 1, 5, 6],  # 61 64 (member 3): its own 61, not member 1's
                       [7]]  # filler sees only filler
    assert (mask[mask != 0] == torch.finfo(torch.float32).min).all()
    assert rows.attention_mask(torch.bfloat16).dtype == torch.bfloat16


def test_left_padded_prompts_with_right_padded_responses_share_the_prompt_as_ppo_pads_them():
    """PPO's rollouts: n responses to a prompt in consecutive rows, the prompt padded on the left."""
    from rlhf.ppo.logprobs import position_ids_from_mask
    from rlhf.shared_prompt.layout import shared_prompt_rows

    input_ids = torch.tensor([[0, 11, 12, 21, 22],
                              [0, 11, 12, 23, 0],
                              [13, 14, 15, 24, 0],
                              [13, 14, 15, 25, 26]])
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

"""Padding-free forwards (rlhf/ppo/packing.py): rows packed as worked out by hand; on six model
families the packed forward gives the padded forward's logits, values and gradients, and the family whose
attention crosses packed sequences (OPT) is found by the probe."""

from __future__ import annotations

import pytest
import torch

from tests.helpers.architectures import FAMILIES, family_models


def test_flash_attention_packs_everything_into_one_row():
    """transformers' flash attention reads packed sequences only from a batch of one row."""
    from rlhf.ppo.packing import pack, row_tokens_for

    assert row_tokens_for("sdpa", 512) == row_tokens_for("eager", 512) == row_tokens_for(None, 512) == 512
    many = torch.ones((40, 30), dtype=torch.long)
    positions = torch.arange(30).repeat(40, 1)
    assert pack(many, many, positions, row_tokens_for("flash_attention_2", 512)).input_ids.shape == (1, 1200)
    assert pack(many, many, positions, row_tokens_for("sdpa", 512)).input_ids.shape == (3, 510)


def test_pack_gives_each_sequence_its_own_positions_and_unpack_restores_the_padded_columns():
    from rlhf.ppo.logprobs import position_ids_from_mask
    from rlhf.ppo.packing import pack

    # Left-padded prompts (11.., 13.., 16..) and right-padded responses (2x); 0 is padding.
    input_ids = torch.tensor([[0, 0, 11, 12, 21, 22, 0], [0, 13, 14, 15, 23, 0, 0], [16, 17, 18, 19, 24, 25, 26]])
    mask = (input_ids != 0).long()
    packed = pack(input_ids, mask, position_ids_from_mask(mask), row_tokens=8)
    # Lengths 4, 4, 7 in rows of 8: the first two share a row; the third's row ends with one filler token.
    assert packed.input_ids.tolist() == [[11, 12, 21, 22, 13, 14, 15, 23], [16, 17, 18, 19, 24, 25, 26, 0]]
    assert packed.position_ids.tolist() == [[0, 1, 2, 3, 0, 1, 2, 3], [0, 1, 2, 3, 4, 5, 6, 0]]
    assert packed.unpack(packed.input_ids, 0, 7).tolist() == (input_ids * mask).tolist()
    # Columns 3..5 only, and per-token outputs with a trailing dimension.
    values = packed.input_ids[..., None].float().repeat(1, 1, 2)
    assert packed.unpack(values, 3, 6)[..., 0].tolist() == [[12, 21, 22], [15, 23, 0], [19, 24, 25]]
    # Rows hold at least the padded length (7): with row_tokens 1, 4 + 4 no longer fit, and each sequence has
    # its own row, filled behind it.
    alone = pack(input_ids, mask, position_ids_from_mask(mask), row_tokens=1)
    assert alone.input_ids.tolist() == [
        [11, 12, 21, 22, 0, 0, 0],
        [13, 14, 15, 23, 0, 0, 0],
        [16, 17, 18, 19, 24, 25, 26],
    ]
    assert alone.position_ids[0].tolist() == [0, 1, 2, 3, 0, 1, 2]


def padded_batch(vocab: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Prompts of 3..6 tokens left-padded to 6, responses of 1..5 tokens right-padded to 5."""
    from rlhf.ppo.forward import sequence_inputs

    prompt_lengths, response_lengths = [6, 3, 5, 4], [5, 1, 3, 4]
    query = torch.randint(3, vocab, (4, 6), generator=generator)
    response = torch.randint(3, vocab, (4, 5), generator=generator)
    query_mask = torch.stack([torch.arange(6) >= 6 - n for n in prompt_lengths]).long()
    response_mask = torch.stack([torch.arange(5) < n for n in response_lengths]).long()
    return sequence_inputs(query * query_mask, query_mask, response * response_mask, response_mask)


@pytest.mark.parametrize("family", FAMILIES)
def test_packed_forwards_equal_padded_ones_where_the_probe_finds_sequences_kept_apart(family):
    from rlhf.ppo.forward import response_logits, response_values
    from rlhf.ppo.packing import keeps_sequences_apart

    policy, critic, vocab = family_models(family)
    inputs = padded_batch(vocab, torch.Generator().manual_seed(1))
    real = inputs["attention_mask"][:, 5:-1].bool()  # positions that predict a real response token
    policy_apart = keeps_sequences_apart(lambda **kw: policy(**kw, use_cache=False).logits, policy, vocab, "cpu")
    critic_apart = keeps_sequences_apart(lambda **kw: critic(**kw), critic, vocab, "cpu")
    assert policy_apart == critic_apart == (family != "opt")  # OPT builds its positions from the attention mask
    assert not any(part.training for part in (*policy.modules(), *critic.model.modules()))  # modes put back

    with torch.no_grad():
        padded_logits = response_logits(policy, inputs, query_length=6)
        padded_values = response_values(critic, inputs, query_length=6)
        for row_tokens in (1, 512):  # one sequence per row of 11, and all four in one row of 31
            packed_logits = response_logits(policy, inputs, 6, row_tokens)
            packed_values = response_values(critic, inputs, 6, row_tokens)
            if policy_apart:
                torch.testing.assert_close(packed_logits[real], padded_logits[real], atol=1e-5, rtol=1e-5)
                torch.testing.assert_close(packed_values[real], padded_values[real], atol=1e-5, rtol=1e-5)
                assert (packed_logits[~real] == 0).all() and (packed_values[~real] == 0).all()
            elif row_tokens == 512:
                # What the probe saw: packed, OPT's sequences see each other.
                assert (packed_logits[real] - padded_logits[real]).abs().max() > 1e-3


def test_packed_gradients_equal_padded_ones():
    from rlhf.ppo.forward import response_logits

    policy, _, vocab = family_models("llama3")
    inputs = padded_batch(vocab, torch.Generator().manual_seed(2))
    real = inputs["attention_mask"][:, 5:-1].bool()
    labels = inputs["input_ids"][:, 6:]

    def gradients(row_tokens):
        policy.zero_grad()
        logprobs = torch.log_softmax(response_logits(policy, inputs, 6, row_tokens), -1)
        logprobs.gather(-1, labels[..., None])[..., 0][real].sum().backward()
        return {name: p.grad.clone() for name, p in policy.named_parameters() if p.grad is not None}

    padded, packed = gradients(None), gradients(512)
    assert padded.keys() == packed.keys() and len(padded) > 5
    for name in padded:
        torch.testing.assert_close(packed[name], padded[name], atol=1e-5, rtol=1e-4)
    assert max(g.abs().max() for g in padded.values()) > 1e-3  # the gradients compared are not all zero

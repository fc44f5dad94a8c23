"""PPO's log-probabilities: the tempered softmax, finite at every sampled token.

Without top-k/top-p it is the sampler's softmax exactly.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch

from rlhf.ppo import rewards
from rlhf.ppo.forward import response_logits, sequence_inputs
from rlhf.ppo.logprobs import LOGPROB_FLOOR, SamplingSettings, sampling_entropy, sampling_logprobs
from rlhf.ppo.options import KL_ESTIMATORS

TOKENS = SimpleNamespace(pad_token_id=0, bos_token_id=1, eos_token_id=2)


def left_padded_queries() -> tuple[torch.Tensor, torch.Tensor]:
    # Rows of different lengths, so positions must be counted from each row's first real token.
    query_ids = torch.tensor([[0, 0, 1, 9, 12], [1, 7, 8, 9, 10], [0, 1, 33, 34, 35]])
    return query_ids, (query_ids != 0).long()


def sample(model, settings: SamplingSettings, seed: int = 0):
    query_ids, query_mask = left_padded_queries()
    torch.manual_seed(seed)
    generation_config = settings.generation_config(TOKENS)
    generation_config.update(output_scores=True, return_dict_in_generate=True)
    output = model.generate(input_ids=query_ids, attention_mask=query_mask, generation_config=generation_config)
    response_ids = output.sequences[:, query_ids.shape[1] :]
    response_mask = rewards.response_mask_after_eos(response_ids, TOKENS.eos_token_id, TOKENS.pad_token_id)
    sampler_logprobs = torch.stack(
        [torch.log_softmax(step_scores.float(), dim=-1) for step_scores in output.scores], dim=1
    ).gather(-1, response_ids[..., None])[..., 0]
    inputs = sequence_inputs(query_ids, query_mask, response_ids, response_mask)
    return response_ids, response_mask, sampler_logprobs, inputs, query_ids.shape[1]


def tempered_logprobs_by_hand(logits: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    return torch.log_softmax(logits.float() / temperature, dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)


def test_without_top_k_or_top_p_the_logprobs_are_exactly_the_samplers(tiny_causal_lm):
    tiny_causal_lm.eval()
    settings = SamplingSettings(temperature=0.7, max_new_tokens=8, suppressed_token_ids=(0,))
    response_ids, mask, sampler_logprobs, inputs, query_length = sample(tiny_causal_lm, settings)
    with torch.no_grad():
        logits = response_logits(tiny_causal_lm, inputs, query_length)
    ours = sampling_logprobs(logits, response_ids, settings)
    real = mask.bool()
    assert real.sum() > 10
    torch.testing.assert_close(ours[real], sampler_logprobs[real], atol=1e-4, rtol=1e-4)
    # Raw softmax log-probabilities (T = 1) are something else: that mismatch is what biases the KL elsewhere.
    raw = tempered_logprobs_by_hand(logits, response_ids, 1.0)
    assert (raw[real] - sampler_logprobs[real]).abs().max() > 0.05


def test_with_top_k_and_top_p_the_logprobs_are_the_full_tempered_softmax(tiny_causal_lm):
    tiny_causal_lm.eval()
    settings = SamplingSettings(temperature=0.6, top_k=8, top_p=0.8, max_new_tokens=8, suppressed_token_ids=(0,))
    response_ids, mask, _, inputs, query_length = sample(tiny_causal_lm, settings, seed=3)
    with torch.no_grad():
        logits = response_logits(tiny_causal_lm, inputs, query_length)
    ours = sampling_logprobs(logits, response_ids, settings)
    expected = tempered_logprobs_by_hand(logits.index_fill(-1, torch.tensor([0]), float("-inf")), response_ids, 0.6)
    real = mask.bool()
    torch.testing.assert_close(ours[real], expected[real])
    # KL of the policy to an identical reference is exactly 0 under every estimator.
    for estimator in KL_ESTIMATORS:
        assert (
            rewards.kl_penalty(ours, sampling_logprobs(logits.clone(), response_ids, settings), estimator)[real]
            .abs()
            .max()
            == 0
        ), estimator


def test_a_sampled_token_at_the_edge_of_the_nucleus_keeps_a_finite_ratio():
    # Sampled under top_k=2 when token 1 was second (logits 3.0, 2.0, 1.99, ...). Rescored by a full forward whose
    # last bits differ, token 2 overtakes it and a recomputed top-2 would give token 1 -inf: an infinite or zero
    # ratio. On the full tempered softmax both passes give finite log-probs, by hand:
    settings = SamplingSettings(temperature=0.5, top_k=2)
    at_sampling = torch.tensor([[[3.0, 2.0, 1.99, -1.0]]])
    at_update = torch.tensor([[[3.0, 1.99, 2.0, -1.0]]])
    labels = torch.tensor([[1]])
    old = sampling_logprobs(at_sampling, labels, settings)
    new = sampling_logprobs(at_update, labels, settings)
    z_old = torch.logsumexp(torch.tensor([6.0, 4.0, 3.98, -2.0]), dim=0)
    z_new = torch.logsumexp(torch.tensor([6.0, 3.98, 4.0, -2.0]), dim=0)
    torch.testing.assert_close(old, (4.0 - z_old).reshape(1, 1))
    torch.testing.assert_close(new, (3.98 - z_new).reshape(1, 1))
    ratio = torch.exp(new - old)
    assert torch.isfinite(ratio).all() and abs(ratio.item() - 1) < 0.05


def test_suppressed_padding_after_eos_gets_the_finite_floor():
    settings = SamplingSettings(suppressed_token_ids=(0,))
    logprobs = sampling_logprobs(torch.tensor([[[1.0, 2.0, 3.0]]]), torch.tensor([[0]]), settings)
    assert logprobs.item() == LOGPROB_FLOOR


def test_entropy_of_the_tempered_distribution_by_hand():
    settings = SamplingSettings(temperature=2.0, top_k=2, suppressed_token_ids=(3,))
    logits = torch.tensor([[[4.0, 2.0, -10.0, 7.0]]])  # /T -> [2, 1, -5]; token 3 is never sampled
    p = torch.softmax(torch.tensor([2.0, 1.0, -5.0]), dim=0)
    expected = -(p * p.log()).sum()
    assert torch.allclose(sampling_entropy(logits, settings), expected.reshape(1, 1))

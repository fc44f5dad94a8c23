"""Log-probabilities under the sampling distribution: they are the sampler's, and the KL of a policy to itself is 0."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from rlhf.ppo import rewards
from rlhf.ppo.experience import response_logits, sequence_inputs
from rlhf.ppo.logprobs import SamplingSettings, sampling_entropy, sampling_logprobs, warp_logits

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
    response_ids = output.sequences[:, query_ids.shape[1]:]
    response_mask = rewards.response_mask_after_eos(response_ids, TOKENS.eos_token_id, TOKENS.pad_token_id)
    sampler_logprobs = torch.stack([torch.log_softmax(step_scores.float(), dim=-1) for step_scores in output.scores],
                                   dim=1).gather(-1, response_ids[..., None])[..., 0]
    inputs = sequence_inputs(query_ids, query_mask, response_ids, response_mask)
    return response_ids, response_mask, sampler_logprobs, inputs, query_ids.shape[1]


def test_logprobs_are_those_of_the_warped_distribution_generate_sampled_from(tiny_causal_lm):
    tiny_causal_lm.eval()
    settings = SamplingSettings(temperature=0.7, top_k=12, top_p=0.9, max_new_tokens=8, suppressed_token_ids=(0,))
    response_ids, mask, sampler_logprobs, inputs, query_length = sample(tiny_causal_lm, settings)
    with torch.no_grad():
        logits = response_logits(tiny_causal_lm, inputs, query_length)
    ours, support = sampling_logprobs(logits, response_ids, settings)
    real = mask.bool()
    assert real.sum() > 10
    torch.testing.assert_close(ours[real], sampler_logprobs[real], atol=1e-4, rtol=1e-4)
    # Every sampled token lies in the support, and the filters really removed tokens.
    assert support.gather(-1, response_ids[..., None])[..., 0][real].all()
    assert (~support[real]).any()
    # Raw softmax log-probabilities are something else: that mismatch is what biases the KL elsewhere.
    raw = softmax_logprobs(logits, response_ids)
    assert (raw[real] - sampler_logprobs[real]).abs().max() > 0.05



def softmax_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[label]: what a sampler without temperature, top-k or top-p would have used."""
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)


def test_kl_to_an_identical_reference_is_zero_under_the_sampling_distribution(tiny_causal_lm):
    tiny_causal_lm.eval()
    settings = SamplingSettings(temperature=0.6, top_k=8, top_p=0.8, max_new_tokens=8, suppressed_token_ids=(0,))
    response_ids, mask, _, inputs, query_length = sample(tiny_causal_lm, settings, seed=3)
    with torch.no_grad():
        policy_logits = response_logits(tiny_causal_lm, inputs, query_length)
        reference_logits = response_logits(tiny_causal_lm, inputs, query_length)
    logprobs, support = sampling_logprobs(policy_logits, response_ids, settings)
    ref_logprobs, _ = sampling_logprobs(reference_logits, response_ids, settings, support=support)
    for estimator in rewards.KL_ESTIMATORS:
        kl = rewards.kl_penalty(logprobs, ref_logprobs, estimator)[mask.bool()]
        assert kl.abs().max() == 0, estimator
    # The same reference read through a plain softmax gives a clearly non-zero (biased) KL estimate.
    unwarped_ref = softmax_logprobs(reference_logits, response_ids)
    biased = rewards.kl_penalty(logprobs, unwarped_ref, "k1")[mask.bool()].mean()
    assert biased.abs() > 0.05


def test_reference_outside_the_policys_top_k_is_restricted_to_the_policys_support():
    # Policy prefers token 0, the reference token 2; with top_k=2 the policy may sample token 1,
    # which the reference's own top-2 ({2, 3}) would give -inf. On the policy's support it stays finite.
    settings = SamplingSettings(temperature=1.0, top_k=2)
    policy_logits = torch.tensor([[[3.0, 2.0, 0.0, -1.0]]])
    reference_logits = torch.tensor([[[0.0, 1.0, 3.0, 2.0]]])
    labels = torch.tensor([[1]])
    logprobs, support = sampling_logprobs(policy_logits, labels, settings)
    ref_logprobs, _ = sampling_logprobs(reference_logits, labels, settings, support=support)
    assert support.tolist() == [[[True, True, False, False]]]
    # log softmax([3, 2])[1] and log softmax([0, 1])[1], by hand.
    assert torch.allclose(logprobs, torch.tensor([[2.0 - torch.logaddexp(torch.tensor(3.0), torch.tensor(2.0))]]))
    assert torch.allclose(ref_logprobs, torch.tensor([[1.0 - torch.logaddexp(torch.tensor(0.0), torch.tensor(1.0))]]))


def test_entropy_of_the_warped_distribution_by_hand():
    settings = SamplingSettings(temperature=2.0, top_k=2)
    logits = torch.tensor([[[4.0, 2.0, -10.0]]])  # /T -> [2, 1, -5]; top-2 keeps [2, 1]
    p = torch.softmax(torch.tensor([2.0, 1.0]), dim=0)
    expected = -(p * p.log()).sum()
    assert torch.allclose(sampling_entropy(logits, settings), expected.reshape(1, 1))
    assert torch.isinf(warp_logits(logits, settings)[0, 0, 2])

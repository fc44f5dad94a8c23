"""rlhf.losses against numbers worked out by hand (the arithmetic is in the comments).

Constants used throughout:
    softplus(-m) = -log σ(m) = log(1 + e^-m)
    log(1 + e^-1) = 0.3132617,  log(1 + e^-2) = 0.1269280,  log(1 + e^-3) = 0.0485874,  log 2 = 0.6931472
"""

from __future__ import annotations

import math

import pytest
import torch

from rlhf import losses

NAN = float("nan")
SP1 = math.log1p(math.exp(-1))  # 0.3132617, loss of a pair with margin 1
SP2 = math.log1p(math.exp(-2))  # 0.1269280, margin 2
SP3 = math.log1p(math.exp(-3))  # 0.0485874, margin 3
LN2 = math.log(2)  # 0.6931472, margin 0


def close(actual, expected, tol=1e-6):
    expected = torch.as_tensor(expected, dtype=torch.float64)
    torch.testing.assert_close(actual.double(), expected, atol=tol, rtol=0, equal_nan=True)


# ---------------------------------------------------------------------------------------------------------
# kway_ranking_loss
# ---------------------------------------------------------------------------------------------------------


def test_kway_loss_single_ranking_of_three():
    # rewards 2 > 1 > 0 ranked 1, 2, 3: pairs (0,1) margin 1, (0,2) margin 2, (1,2) margin 1
    # loss = (SP1 + SP2 + SP1) / 3 = (0.3132617 + 0.1269280 + 0.3132617) / 3 = 0.2511505
    loss = losses.kway_ranking_loss(torch.tensor([[2.0, 1.0, 0.0]]), torch.tensor([[1, 2, 3]]))
    close(loss, (2 * SP1 + SP2) / 3)
    close(loss, 0.2511505)


def test_kway_loss_ranks_need_not_follow_slot_order():
    # slot 1 is ranked best: the only pair is (1, 0) with margin 3 - 0 = 3 -> SP3 = 0.0485874
    loss = losses.kway_ranking_loss(torch.tensor([[0.0, 3.0]]), torch.tensor([[2, 1]]))
    close(loss, SP3)
    # the same rewards ranked the other way round: margin 0 - 3 = -3 -> log(1 + e^3) = 3.0485874
    loss = losses.kway_ranking_loss(torch.tensor([[0.0, 3.0]]), torch.tensor([[1, 2]]))
    close(loss, 3.0485874)


def test_kway_loss_tied_ranks_form_no_pair():
    # ranks 1, 1, 2: slots 0 and 1 are tied (no pair); pairs (0,2) margin 1 - 0 = 1, (1,2) margin 0 - 0 = 0
    # loss = (SP1 + LN2) / 2 = (0.3132617 + 0.6931472) / 2 = 0.5032044
    loss = losses.kway_ranking_loss(torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([[1, 1, 2]]))
    close(loss, 0.5032044)


def test_kway_loss_variable_k_with_padded_slots_holding_nan():
    # row 0: K = 3, the ranking above: 0.2511505
    # row 1: K = 2, slot 2 empty (rank 0) and holding NaN: one pair (0,1) margin 1 -> SP1 = 0.3132617
    # loss = (0.2511505 + 0.3132617) / 2 = 0.2822061
    rewards = torch.tensor([[2.0, 1.0, 0.0], [1.0, 0.0, NAN]], requires_grad=True)
    ranks = torch.tensor([[1, 2, 3], [1, 2, 0]])
    loss = losses.kway_ranking_loss(rewards, ranks)
    close(loss, ((2 * SP1 + SP2) / 3 + SP1) / 2)
    loss.backward()
    assert torch.isfinite(rewards.grad).all()
    assert rewards.grad[1, 2] == 0


def test_kway_loss_ranking_without_pairs_is_left_out_of_the_mean():
    # row 0: one pair, margin 3 -> SP3; row 1: a full tie, no pair -> excluded, so the mean is SP3, not SP3 / 2
    rewards = torch.tensor([[3.0, 0.0], [5.0, -5.0]])
    ranks = torch.tensor([[1, 2], [1, 1]])
    close(losses.kway_ranking_loss(rewards, ranks), SP3)


@pytest.mark.parametrize("ranks", [[[1, 1, 1], [2, 2, 0]], [[0, 0, 0], [0, 0, 0]], [[1, 0, 0], [0, 3, 0]]],
                         ids=["all-ties", "all-empty", "one-filled-slot-each"])
def test_kway_loss_batch_without_pairs_is_zero_with_a_gradient(ranks):
    rewards = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, NAN]], requires_grad=True)
    loss = losses.kway_ranking_loss(rewards, torch.tensor(ranks))
    assert loss.item() == 0.0
    assert loss.requires_grad
    loss.backward()
    assert torch.equal(rewards.grad, torch.zeros_like(rewards))


def test_kway_loss_gradient_by_hand():
    # one pair, margin m = r0 - r1 = 0: loss = -log σ(m), dloss/dr0 = -(1 - σ(m)) = -0.5, dloss/dr1 = +0.5
    rewards = torch.tensor([[0.7, 0.7]], requires_grad=True)
    losses.kway_ranking_loss(rewards, torch.tensor([[1, 2]])).backward()
    close(rewards.grad, [[-0.5, 0.5]])


def test_kway_loss_equals_mean_over_rankings_of_pairwise_loss_on_expanded_pairs():
    torch.manual_seed(0)
    rewards = torch.randn(6, 5)
    # variable K, ties and an all-tie row
    ranks = torch.tensor([[1, 2, 3, 4, 5], [3, 1, 2, 0, 0], [1, 1, 2, 2, 3], [2, 1, 0, 0, 0],
                          [1, 1, 1, 0, 0], [5, 4, 3, 2, 1]])
    ranking_index, chosen_index, rejected_index = losses.expand_to_pairs(ranks)
    per_ranking = []
    for b in range(len(ranks)):
        rows = ranking_index == b
        if rows.any():
            per_ranking.append(losses.pairwise_loss(rewards[b, chosen_index[rows]], rewards[b, rejected_index[rows]]))
    expected = torch.stack(per_ranking).mean()
    close(losses.kway_ranking_loss(rewards, ranks), expected.item())


def test_kway_loss_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="rewards and ranks"):
        losses.kway_ranking_loss(torch.zeros(2, 3), torch.ones(2, 4, dtype=torch.long))


# ---------------------------------------------------------------------------------------------------------
# ranking_pair_accuracy, expand_to_pairs, pairwise_loss
# ---------------------------------------------------------------------------------------------------------


def test_ranking_pair_accuracy_counts_reward_ties_as_half():
    # row 0: rewards 3, 1, 1 ranked 1, 2, 3 (slot 3 empty): (0,1) 3 > 1 -> 1; (0,2) 3 > 1 -> 1; (1,2) 1 = 1 -> 0.5
    # row 1: rewards 0, 5 ranked 1, 2: (0,1) 0 < 5 -> 0
    # row 2: tied ranks, no pair
    # correct = 1 + 1 + 0.5 + 0 = 2.5 of 4 pairs
    rewards = torch.tensor([[3.0, 1.0, 1.0, 9.0], [0.0, 5.0, 0.0, 0.0], [1.0, 2.0, 0.0, 0.0]])
    ranks = torch.tensor([[1, 2, 3, 0], [1, 2, 0, 0], [1, 1, 0, 0]])
    correct, total = losses.ranking_pair_accuracy(rewards, ranks)
    assert correct.item() == 2.5
    assert total.item() == 4


def test_ranking_pair_accuracy_without_pairs():
    correct, total = losses.ranking_pair_accuracy(torch.zeros(2, 2), torch.tensor([[1, 1], [0, 0]]))
    assert (correct.item(), total.item()) == (0.0, 0.0)


def test_expand_to_pairs_by_hand():
    # row 0: ranks 2, 1, 3 -> order slot 1 > slot 0 > slot 2: pairs (0,2), (1,0), (1,2), sorted by chosen slot
    # row 1: slots 0 and 1 tied, slot 2 empty -> no pair
    # row 2: ranks 0, 2, 1 -> (2, 1)
    ranks = torch.tensor([[2, 1, 3], [1, 1, 0], [0, 2, 1]])
    ranking_index, chosen_index, rejected_index = losses.expand_to_pairs(ranks)
    assert ranking_index.tolist() == [0, 0, 0, 2]
    assert chosen_index.tolist() == [0, 1, 1, 2]
    assert rejected_index.tolist() == [2, 0, 2, 1]


def test_expand_to_pairs_gives_k_choose_2_pairs_for_a_strict_ranking():
    for k in (2, 4, 6, 9):
        ranks = torch.arange(1, k + 1).flip(0).unsqueeze(0)
        assert len(losses.expand_to_pairs(ranks)[0]) == math.comb(k, 2)


def test_pairwise_loss_by_hand_and_empty():
    # margins 1 and 0: (SP1 + LN2) / 2 = 0.5032044
    close(losses.pairwise_loss(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.0])), 0.5032044)
    chosen = torch.zeros(0, requires_grad=True)
    loss = losses.pairwise_loss(chosen, torch.zeros(0))
    assert loss.item() == 0.0
    loss.backward()
    assert chosen.grad.shape == (0,)


# ---------------------------------------------------------------------------------------------------------
# masked statistics
# ---------------------------------------------------------------------------------------------------------


def test_masked_mean_ignores_padding_even_nan():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, NAN, 6.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    close(losses.masked_mean(x, mask), 7 / 3)  # (1 + 2 + 4) / 3
    close(losses.masked_mean(x, mask, dim=1), [1.5, 4.0])  # (1 + 2) / 2, 4 / 1
    close(losses.masked_mean(x, mask.bool(), dim=0), [2.5, 2.0, 0.0])  # (1 + 4) / 2, 2 / 1, empty column -> 0


def test_masked_mean_of_empty_mask_is_zero():
    close(losses.masked_mean(torch.tensor([1.0, 2.0]), torch.tensor([0, 0])), 0.0)


def test_masked_var_by_hand():
    # entries 1, 2, 3 (100 is padding): mean 2, squared deviations 1, 0, 1 sum to 2
    # unbiased 2 / (3 - 1) = 1; biased 2 / 3
    x = torch.tensor([1.0, 2.0, 3.0, 100.0])
    mask = torch.tensor([1, 1, 1, 0])
    close(losses.masked_var(x, mask), 1.0)
    close(losses.masked_var(x, mask, unbiased=False), 2 / 3)


def test_masked_var_with_fewer_than_two_entries_is_zero():
    x = torch.tensor([5.0, 7.0])
    close(losses.masked_var(x, torch.tensor([1, 0])), 0.0)
    close(losses.masked_var(x, torch.tensor([0, 0])), 0.0)


def test_masked_whiten_by_hand():
    # entries 2, 4, 6 (NaN is padding): mean 4, unbiased var (4 + 0 + 4) / 2 = 4, std 2
    # whitened: (2-4)/2, (4-4)/2, (6-4)/2 = -1, 0, 1; padding -> 0
    x = torch.tensor([[2.0, 4.0], [6.0, NAN]])
    mask = torch.tensor([[1, 1], [1, 0]])
    close(losses.masked_whiten(x, mask), [[-1.0, 0.0], [1.0, 0.0]])
    # shift_mean=False adds the mean back: -1 + 4, 0 + 4, 1 + 4
    close(losses.masked_whiten(x, mask, shift_mean=False), [[3.0, 4.0], [5.0, 0.0]])


def test_masked_whiten_of_a_single_entry_is_zero_not_nan():
    close(losses.masked_whiten(torch.tensor([3.0, 9.0]), torch.tensor([1, 0])), [0.0, 0.0])


def test_explained_variance_by_hand():
    mask = torch.tensor([1, 1, 1, 0])
    returns = torch.tensor([1.0, 2.0, 3.0, 50.0])
    # Var[R] (biased) = (1 + 0 + 1) / 3 = 2/3
    close(losses.explained_variance(torch.tensor([1.0, 2.0, 3.0, -9.0]), returns, mask), 1.0)  # perfect critic
    close(losses.explained_variance(torch.tensor([2.0, 2.0, 2.0, -9.0]), returns, mask), 0.0)  # constant critic
    # values 1, 2, 4: residuals 0, 0, -1, mean -1/3, Var = ((1/3)² + (1/3)² + (2/3)²) / 3 = 2/9
    # EV = 1 - (2/9) / (2/3) = 2/3
    close(losses.explained_variance(torch.tensor([1.0, 2.0, 4.0, -9.0]), returns, mask), 2 / 3)


def test_explained_variance_of_constant_returns_is_nan():
    assert math.isnan(losses.explained_variance(torch.zeros(3), torch.ones(3), torch.ones(3)).item())


# ---------------------------------------------------------------------------------------------------------
# log-probabilities and entropy
# ---------------------------------------------------------------------------------------------------------


def test_logprobs_from_logits_by_hand():
    # row 0: uniform over 4 tokens -> log(1/4) whatever the label
    # row 1: logits log 1, log 2, log 3, log 4 -> probabilities 1/10, 2/10, 3/10, 4/10; label 3 -> log 0.4
    logits = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [0.0, math.log(2), math.log(3), math.log(4)]]])
    labels = torch.tensor([[2, 3]])
    close(losses.logprobs_from_logits(logits, labels), [[math.log(0.25), math.log(0.4)]])


def test_logprobs_from_logits_half_precision_matches_float32():
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 64) * 4
    labels = torch.randint(0, 64, (3, 5))
    expected = torch.log_softmax(logits.bfloat16().float(), -1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    actual = losses.logprobs_from_logits(logits.bfloat16(), labels)
    assert actual.dtype == torch.float32
    torch.testing.assert_close(actual, expected)
    torch.testing.assert_close(losses.logprobs_from_logits(logits, labels),
                               torch.log_softmax(logits, -1).gather(-1, labels.unsqueeze(-1)).squeeze(-1))


def test_entropy_from_logits_by_hand():
    # uniform over 4 -> log 4; two equal logits and two far below -> log 2
    # probabilities .1 .2 .3 .4 -> -(.1 ln .1 + .2 ln .2 + .3 ln .3 + .4 ln .4) = 1.2798542
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, -1e4, -1e4],
                           [0.0, math.log(2), math.log(3), math.log(4)]])
    close(losses.entropy_from_logits(logits), [math.log(4), math.log(2), 1.2798542])


# ---------------------------------------------------------------------------------------------------------
# response masks, EOS penalty, KL-penalised rewards
# ---------------------------------------------------------------------------------------------------------

EOS, PAD = 2, 0


@pytest.mark.parametrize("response, expected", [
    ([5, 2, 7, 0], [1, 1, 0, 0]),  # EOS in the middle: kept; the token after it is not
    ([2, 5, 5, 5], [1, 0, 0, 0]),  # EOS as the first token
    ([5, 6, 7, 8], [1, 1, 1, 1]),  # no EOS: truncated at max_new_tokens, all kept
    ([5, 6, 0, 0], [1, 1, 0, 0]),  # no EOS, right padding
    ([5, 2, 2, 0], [1, 1, 0, 0]),  # only the first EOS counts
    ([0, 0, 0, 0], [0, 0, 0, 0]),  # nothing but padding
], ids=["eos-middle", "eos-first", "no-eos", "no-eos-padded", "two-eos", "all-padding"])
def test_response_mask_after_eos(response, expected):
    mask = losses.response_mask_after_eos(torch.tensor([response]), EOS, PAD)
    assert mask.tolist() == [expected]


def test_response_mask_when_pad_is_eos():
    # GPT-2 style pad == eos == 2: the first 2 ends the response, later 2s are padding
    mask = losses.response_mask_after_eos(torch.tensor([[5, 2, 2, 2], [5, 6, 7, 8]]), 2, 2)
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]


def test_score_with_eos_penalty():
    # row 0 ends with EOS: unchanged 1.0; row 1 has no EOS: 0.5 - 1.0 = -0.5
    scores = losses.score_with_eos_penalty(torch.tensor([1.0, 0.5]), torch.tensor([[5, 2, 0], [5, 6, 7]]),
                                           eos_token_id=EOS, missing_eos_penalty=1.0)
    close(scores, [1.0, -0.5])


LOGPROBS = torch.tensor([[-1.0, -2.0, -3.0], [-1.0, -1.0, NAN]])
REF_LOGPROBS = torch.tensor([[-1.5, -1.0, -3.0], [-2.0, -1.0, NAN]])
MASK = torch.tensor([[1, 1, 1], [1, 1, 0]])
SCORE = torch.tensor([2.0, -1.0])


def test_kl_penalized_rewards_k1_by_hand():
    # k1 = logp - ref: row 0: -1 - -1.5 = 0.5, -2 - -1 = -1, 0; row 1: 1, 0, (padding) 0
    # rewards = -0.1 * kl, plus the score at the last real token:
    #   row 0: -0.05, 0.1, 0 + 2 = 2.0      row 1: -0.1, 0 + (-1) = -1.0, 0
    rewards, kl = losses.kl_penalized_rewards(SCORE, LOGPROBS, REF_LOGPROBS, MASK, kl_coef=0.1)
    close(kl, [[0.5, -1.0, 0.0], [1.0, 0.0, 0.0]])
    close(rewards, [[-0.05, 0.1, 2.0], [-0.1, -1.0, 0.0]])


def test_kl_penalized_rewards_other_estimators_by_hand():
    # log r = ref - logp: row 0: -0.5, 1, 0; row 1: -1, 0
    # k3 = e^{log r} - 1 - log r: e^-0.5 - 1 + 0.5 = 0.1065307, e - 1 - 1 = 0.7182818, 0; e^-1 - 1 + 1 = 0.3678794, 0
    _, kl = losses.kl_penalized_rewards(SCORE, LOGPROBS, REF_LOGPROBS, MASK, 0.1, kl_estimator="k3")
    close(kl, [[0.1065307, 0.7182818, 0.0], [0.3678794, 0.0, 0.0]])
    assert (kl >= 0).all()
    # abs: 0.5, 1, 0; 1, 0
    _, kl = losses.kl_penalized_rewards(SCORE, LOGPROBS, REF_LOGPROBS, MASK, 0.1, kl_estimator="abs")
    close(kl, [[0.5, 1.0, 0.0], [1.0, 0.0, 0.0]])
    # k2 = ½ (log r)²: 0.125, 0.5, 0; 0.5, 0
    _, kl = losses.kl_penalized_rewards(SCORE, LOGPROBS, REF_LOGPROBS, MASK, 0.1, kl_estimator="k2")
    close(kl, [[0.125, 0.5, 0.0], [0.5, 0.0, 0.0]])


def test_kl_penalized_rewards_eos_first_and_empty_response():
    # row 0: EOS as first token, one real token: -0.5 * (0 - 1) + 3 = 3.5
    # row 1: no real token: no KL, the score has nowhere to go, all zeros
    rewards, kl = losses.kl_penalized_rewards(torch.tensor([3.0, 7.0]), torch.zeros(2, 2), torch.ones(2, 2),
                                              torch.tensor([[1, 0], [0, 0]]), kl_coef=0.5)
    close(rewards, [[3.5, 0.0], [0.0, 0.0]])
    close(kl, [[-1.0, 0.0], [0.0, 0.0]])


def test_kl_penalized_rewards_rejects_unknown_estimator():
    with pytest.raises(ValueError, match="kl_estimator"):
        losses.kl_penalized_rewards(SCORE, LOGPROBS, REF_LOGPROBS, MASK, 0.1, kl_estimator="k4")


# ---------------------------------------------------------------------------------------------------------
# GAE
# ---------------------------------------------------------------------------------------------------------


def test_gae_three_tokens_by_hand():
    # γ = 0.9, λ = 0.8 (γλ = 0.72), V = 1, 2, 3, r = 0, 0, 1
    # t=2: δ = 1 + 0.9·0 - 3 = -2                  A2 = -2
    # t=1: δ = 0 + 0.9·3 - 2 = 0.7                 A1 = 0.7 + 0.72·(-2) = -0.74
    # t=0: δ = 0 + 0.9·2 - 1 = 0.8                 A0 = 0.8 + 0.72·(-0.74) = 0.2672
    # returns = A + V = 1.2672, 1.26, 1.0
    advantages, returns = losses.gae_advantages(torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[0.0, 0.0, 1.0]]),
                                                torch.ones(1, 3), gamma=0.9, lam=0.8)
    close(advantages, [[0.2672, -0.74, -2.0]])
    close(returns, [[1.2672, 1.26, 1.0]])


def test_gae_with_gamma_lambda_one_is_reward_to_go_minus_value():
    # A_t = Σ_{s>=t} r_s - V_t: 1 - 1, 1 - 2, 1 - 3; returns are the reward-to-go, 1 everywhere
    advantages, returns = losses.gae_advantages(torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[0.0, 0.0, 1.0]]),
                                                torch.ones(1, 3), gamma=1.0, lam=1.0)
    close(advantages, [[0.0, -1.0, -2.0]])
    close(returns, [[1.0, 1.0, 1.0]])


def test_gae_padding_does_not_leak_into_real_tokens():
    # row 0: the 3-token example above followed by 2 padded steps holding large values and rewards
    # row 1: 2 real tokens, V = 1, 2, r = 0, 1, then padding (V = 7, r = 9, NaN):
    #   t=1: δ = 1 - 2 = -1 (nothing bootstrapped from padding), A1 = -1
    #   t=0: δ = 0.9·2 - 1 = 0.8, A0 = 0.8 + 0.72·(-1) = 0.08;  returns 1.08, 1.0
    values = torch.tensor([[1.0, 2.0, 3.0, 100.0, 100.0], [1.0, 2.0, 7.0, NAN, 7.0]])
    rewards = torch.tensor([[0.0, 0.0, 1.0, 50.0, 50.0], [0.0, 1.0, 9.0, 9.0, NAN]])
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 0, 0, 0]])
    advantages, returns = losses.gae_advantages(values, rewards, mask, gamma=0.9, lam=0.8)
    close(advantages, [[0.2672, -0.74, -2.0, 0.0, 0.0], [0.08, -1.0, 0.0, 0.0, 0.0]])
    close(returns, [[1.2672, 1.26, 1.0, 0.0, 0.0], [1.08, 1.0, 0.0, 0.0, 0.0]])


# ---------------------------------------------------------------------------------------------------------
# PPO losses
# ---------------------------------------------------------------------------------------------------------


def test_ppo_policy_loss_by_hand():
    # ε = 0.2; ratios ρ = 1.5, 0.5, 1.1, 0.7 (old logprobs 0), advantages 1, 1, -1, -1; a 5th token is padding
    #   ρ=1.5 A=+1: max(-1.5, -1.2) = -1.2  clipped
    #   ρ=0.5 A=+1: max(-0.5, -0.8) = -0.5
    #   ρ=1.1 A=-1: max( 1.1,  1.1) =  1.1  (equal: not counted as clipped)
    #   ρ=0.7 A=-1: max( 0.7,  0.8) =  0.8  clipped
    # loss = (-1.2 - 0.5 + 1.1 + 0.8) / 4 = 0.05; clip_fraction = 2 / 4
    # approx_kl = mean(ρ - 1 - ln ρ) = (0.0945349 + 0.1931472 + 0.0046898 + 0.0566749) / 4 = 0.0872617
    ratios = torch.tensor([[1.5, 0.5, 1.1, 0.7, 10.0]])
    logprobs = ratios.log().requires_grad_()
    advantages = torch.tensor([[1.0, 1.0, -1.0, -1.0, 100.0]])
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    loss, clip_fraction, approx_kl = losses.ppo_policy_loss(logprobs, torch.zeros(1, 5), advantages, mask, 0.2)
    close(loss, 0.05)
    close(clip_fraction, 0.5)
    close(approx_kl, 0.0872617)
    # d loss / d logp = -A ρ / 4 on unclipped tokens, 0 on clipped ones and padding:
    #   0, -(1)(0.5)/4 = -0.125, -(-1)(1.1)/4 = 0.275, 0, 0
    loss.backward()
    close(logprobs.grad, [[0.0, -0.125, 0.275, 0.0, 0.0]])


def test_ppo_policy_loss_on_policy_is_minus_mean_advantage():
    # ρ = 1 everywhere: loss = -mean(A) = -(2 - 1) / 2 = -0.5, nothing clipped, KL 0
    loss, clip_fraction, approx_kl = losses.ppo_policy_loss(torch.zeros(1, 2), torch.zeros(1, 2),
                                                            torch.tensor([[2.0, -1.0]]), torch.ones(1, 2), 0.2)
    close(loss, -0.5)
    close(clip_fraction, 0.0)
    close(approx_kl, 0.0)


def test_ppo_value_loss_by_hand():
    # ε_v = 0.2, V_old = 1 everywhere
    #   V=1.5 R=2: unclipped (1.5-2)² = 0.25, clipped V 1.2: (1.2-2)² = 0.64 -> 0.64 clipped
    #   V=0.9 R=0: within the clip range: 0.81 both                     -> 0.81
    #   V=1.1 R=1: 0.01 both                                            -> 0.01
    #   V=1.5 R=1: unclipped 0.25, clipped (1.2-1)² = 0.04               -> 0.25
    #   5th token is padding
    # loss = 0.5 · (0.64 + 0.81 + 0.01 + 0.25) / 4 = 0.21375; clip_fraction = 1 / 4
    values = torch.tensor([[1.5, 0.9, 1.1, 1.5, 40.0]])
    returns = torch.tensor([[2.0, 0.0, 1.0, 1.0, -40.0]])
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    loss, clip_fraction = losses.ppo_value_loss(values, torch.ones(1, 5), returns, mask, clip_eps_value=0.2)
    close(loss, 0.21375)
    close(clip_fraction, 0.25)


# ---------------------------------------------------------------------------------------------------------
# PPO-ptx language-modelling loss
# ---------------------------------------------------------------------------------------------------------


def test_sft_ptx_loss_by_hand():
    # vocabulary of 2; position 0 predicts labels[1], position 1 predicts labels[2]
    # logits [0, 0] -> p = 1/2 -> -ln 0.5 = 0.6931472; logits [ln 3, 0] -> p(0) = 3/4 -> -ln 0.75 = 0.2876821
    # labels 9, 1, 0: the first label is never predicted; loss = (0.6931472 + 0.2876821) / 2 = 0.4904146
    logits = torch.tensor([[[0.0, 0.0], [math.log(3), 0.0], [5.0, 5.0]]])
    close(losses.sft_ptx_loss(logits, torch.tensor([[9, 1, 0]])), 0.4904146)
    # ignoring the last label leaves ln 2
    close(losses.sft_ptx_loss(logits, torch.tensor([[9, 1, -100]])), LN2)


def test_sft_ptx_loss_all_ignored_is_zero_with_a_gradient():
    logits = torch.zeros(1, 3, 2, requires_grad=True)
    loss = losses.sft_ptx_loss(logits, torch.full((1, 3), -100))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


# ---------------------------------------------------------------------------------------------------------
# RunningMoments
# ---------------------------------------------------------------------------------------------------------


def test_running_moments_by_hand():
    moments = losses.RunningMoments()
    # 1, 2, 3: mean 2, unbiased var (1 + 0 + 1) / 2 = 1
    mean, std = moments.update(torch.tensor([1.0, 2.0, 3.0]))
    assert (mean, std) == pytest.approx((2.0, 1.0))
    # then 4, 5: all of 1..5, mean 3, unbiased var (4 + 1 + 0 + 1 + 4) / 4 = 2.5, std 1.5811388
    mean, std = moments.update(torch.tensor([4.0, 5.0]))
    assert (mean, std) == pytest.approx((3.0, math.sqrt(2.5)))
    assert moments.count == 5
    close(moments.normalize(torch.tensor([3.0, 3.0 + math.sqrt(2.5)])), [0.0, 1.0])
    # an empty batch changes nothing
    assert moments.update(torch.zeros(0)) == pytest.approx((3.0, math.sqrt(2.5)))


def test_running_moments_resume_from_state_dict():
    uninterrupted = losses.RunningMoments()
    for batch in ([1.0, 4.0], [2.0], [8.0, -1.0, 0.5]):
        uninterrupted.update(torch.tensor(batch))
    first = losses.RunningMoments()
    first.update(torch.tensor([1.0, 4.0]))
    first.update(torch.tensor([2.0]))
    resumed = losses.RunningMoments()
    resumed.load_state_dict(first.state_dict())
    resumed.update(torch.tensor([8.0, -1.0, 0.5]))
    assert resumed.state_dict() == pytest.approx(uninterrupted.state_dict())
    # and both agree with the moments of all six numbers at once
    everything = torch.tensor([1.0, 4.0, 2.0, 8.0, -1.0, 0.5], dtype=torch.float64)
    assert (resumed.mean, resumed.std) == pytest.approx((everything.mean().item(), everything.std().item()))

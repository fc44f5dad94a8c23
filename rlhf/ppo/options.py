"""The closed sets of names PPO's config accepts, each written once: the config (import-light) checks a value
against them, and the math that dispatches on the value imports the same list."""

# How advantages are estimated: GAE with a critic (InstructGPT), or one of the critic-free estimators.
ADVANTAGE_ESTIMATORS = ("gae", "rloo", "grpo", "reinforce_pp", "reinforce_pp_baseline")
# These compare a response with the other responses to its prompt, so they need several per prompt.
GROUP_ESTIMATORS = ("rloo", "grpo", "reinforce_pp_baseline")
# How per-token losses become one number (rlhf.ppo.losses.aggregate).
LOSS_AGGREGATIONS = ("token_mean", "sequence_mean", "dr_grpo")
# Per-token estimators of KL(π || π_ref) from log-probabilities (rlhf.ppo.rewards.kl_penalty).
KL_ESTIMATORS = ("k1", "k2", "k3", "abs")

"""Stage 3, PPO: config, inputs, engines, experience, rewards, losses, update, checkpoints, tracking, evaluation.

The recipe that assembles them is rlhf.stages.ppo.
"""

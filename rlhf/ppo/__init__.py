"""PPO parts: engines, experience, update, checkpoints, metrics; assembled by rlhf.stages.ppo."""

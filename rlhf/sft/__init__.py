"""Stage 1, supervised fine-tuning: its config, its demonstration splits and packed rows.

The recipe is rlhf.stages.sft; the demonstrations format (shared with the RM and PPO-ptx) is rlhf.data.demonstrations.
"""

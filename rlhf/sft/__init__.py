"""Stage 1, supervised fine-tuning: its config and packed rows (the demonstrations format is rlhf.data.demonstrations, shared with RM and PPO-ptx). The recipe is rlhf.stages.sft."""

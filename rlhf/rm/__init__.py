"""Stage 2, the reward model: config, rankings, batches, loss, trainer, model and evaluation.

The recipe is rlhf.stages.rm.
"""

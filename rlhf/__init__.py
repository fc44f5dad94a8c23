"""rlhf: an InstructGPT-style pipeline (SFT, k-way reward model, PPO) on DeepSpeed ZeRO.

Kept import-light on purpose: the shared parts (config, registry, data, labels) import no ML library, and the math
(rlhf.rm.loss, rlhf.ppo.rewards, rlhf.ppo.losses) imports torch alone; tests/test_layout.py holds them to it.
"""

__version__ = "0.1.0"

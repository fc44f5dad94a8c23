"""rlhf: an InstructGPT-style pipeline (SFT, k-way reward model, PPO) on DeepSpeed ZeRO.

Kept import-light on purpose: pure modules (losses, data, registry) import no deepspeed, peft or accelerate.
"""

__version__ = "0.1.0"

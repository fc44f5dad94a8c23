"""Prefix tuning (Li & Liang 2021) through TRL's SFTTrainer.

TRL computes its loss by running the base model with a fused LM head, which never goes through peft's forward:
that is where peft puts the prefix's learned keys and values in front of every layer's and widens the attention
mask to cover them. Without it the first step fails (a mask shorter than the keys). This trainer computes the
loss through the peft model's own forward instead: the standard next-token loss on the labels TRL's collator
built (completion tokens only, unless `completion_only_loss: false`).
"""

from __future__ import annotations


def prefix_tuning_trainer_class():
    from trl import SFTTrainer

    class PrefixTuningSFTTrainer(SFTTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            fields = {name: inputs[name] for name in ("input_ids", "attention_mask", "labels") if name in inputs}
            outputs = model(**fields)
            return (outputs.loss, outputs) if return_outputs else outputs.loss

    return PrefixTuningSFTTrainer

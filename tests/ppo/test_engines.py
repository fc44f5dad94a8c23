"""The PPO engines: a LoRA actor is its own reference (adapter disabled = the base model), and under ZeRO-3 both
generation paths (parameters gathered once, or per step with synced_gpus) sample the same tokens."""

from __future__ import annotations

import pytest
import torch

from rlhf.errors import ConfigError
from tests.helpers import REPO
from tests.helpers.ppo_setup import engines_for


def rollout_batch(inputs, count: int = 6):
    from rlhf.ppo.experience import tokenize_prompts

    return tokenize_prompts(inputs.tokenizer, inputs.prompts[:count])


def test_lora_actor_is_its_own_reference_and_disabling_the_adapter_gives_the_base_models_logprobs(models, tmp_path):
    from rlhf.adaptation.checkpoint import load_adapted
    from rlhf.ppo import experience, forward
    from rlhf.ppo.logprobs import sampling_logprobs, sampling_settings_for

    config, inputs, engines = engines_for(models, tmp_path, adaptation_method="lora", lora_dropout=0.0)
    assert engines.reference is None  # no second copy of the policy
    # A trained-looking adapter: LoRA B starts at zero, which would make the test pass trivially.
    torch.manual_seed(0)
    with torch.no_grad():
        for name, parameter in engines.actor.module.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)
    sampling = sampling_settings_for(inputs.tokenizer, 0.8, 0, 1.0, 6)
    batch = rollout_batch(inputs)
    torch.manual_seed(1)
    response_ids = experience.generate(engines.actor, batch, sampling.generation_config(inputs.tokenizer), "auto")
    rollout = experience.score(engines, batch, response_ids, inputs.tokenizer, sampling, 64)

    base = load_adapted(models["policy"], task="causal_lm")
    mask = rollout.response_mask
    seq = forward.sequence_inputs(batch.query_ids, batch.query_mask, response_ids, mask)
    with torch.no_grad():
        base_logits = forward.response_logits(base, seq, batch.query_ids.shape[1])
    base_logprobs = sampling_logprobs(base_logits, response_ids, sampling)
    real = mask.bool()
    torch.testing.assert_close(rollout.ref_logprobs[real], base_logprobs[real], atol=1e-5, rtol=1e-5)
    # ...and the adapter is really on for the policy's own log-probabilities.
    assert (rollout.logprobs[real] - rollout.ref_logprobs[real]).abs().max() > 1e-2


def test_scoring_is_padding_free_and_equals_the_padded_scoring(models, tmp_path):
    from rlhf.ppo import experience
    from rlhf.ppo.logprobs import sampling_settings_for

    config, inputs, engines = engines_for(models, tmp_path)
    assert engines.row_tokens == {"actor": 512, "reference": 512, "critic": 512}
    sampling = sampling_settings_for(inputs.tokenizer, 1.0, 0, 1.0, 6)
    batch = rollout_batch(inputs, count=8)
    torch.manual_seed(2)
    response_ids = experience.generate(engines.actor, batch, sampling.generation_config(inputs.tokenizer), "auto")
    packed = experience.score(engines, batch, response_ids, inputs.tokenizer, sampling, 64)
    engines.row_tokens = dict.fromkeys(engines.row_tokens)
    padded = experience.score(engines, batch, response_ids, inputs.tokenizer, sampling, 64)
    real = padded.response_mask.bool()
    assert 0 < real.sum() < real.numel()  # some responses end early: there is padding to leave out
    for name in ("logprobs", "ref_logprobs", "values"):
        torch.testing.assert_close(getattr(packed, name)[real], getattr(padded, name)[real], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(packed.scores, padded.scores)

    _, _, padded_engines = engines_for(models, tmp_path / "off", padding_free=False)
    assert padded_engines.row_tokens == {"actor": None, "reference": None, "critic": None}


def test_zero3_generation_gathered_once_equals_per_step_gathering(models, tmp_path):
    from rlhf.ppo import experience
    from rlhf.ppo.logprobs import sampling_settings_for

    zero3 = str(REPO / "deepspeed_configs" / "zero3.json")
    config, inputs, engines = engines_for(models, tmp_path, actor_deepspeed=zero3, critic_deepspeed=zero3)
    assert engines.actor.zero_optimization_stage() == 3
    # Partitioned: the module holds no full weight outside a gather.
    assert all(
        p.numel() == 0 or p.numel() < getattr(p, "ds_numel", p.numel()) for p in engines.actor.module.parameters()
    )
    sampling = sampling_settings_for(inputs.tokenizer, 1.0, 0, 1.0, 6)
    generation_config = sampling.generation_config(inputs.tokenizer)
    batch = rollout_batch(inputs, count=8)
    tokens = {}
    for path in ("gather_once", "per_step"):
        torch.manual_seed(123)
        tokens[path] = experience.generate(engines.actor, batch, generation_config, path)
    assert tokens["gather_once"].shape[1] >= 1
    assert torch.equal(tokens["gather_once"], tokens["per_step"])
    torch.manual_seed(124)
    other_seed = experience.generate(engines.actor, batch, generation_config, "gather_once")
    assert not torch.equal(other_seed, tokens["gather_once"])  # the equality above is not a constant output


def test_zero3_hook_lists_stay_one_models_worth_across_rollouts(models, tmp_path):
    """Gathered-once generation takes ZeRO-3's hooks off and puts them back; three rollouts must leave as many
    hook handles, and as many live hooks on the modules, as the engine started with."""
    from rlhf import _compat
    from rlhf.ppo import experience
    from rlhf.ppo.logprobs import sampling_settings_for

    zero3 = str(REPO / "deepspeed_configs" / "zero3.json")
    config, inputs, engines = engines_for(models, tmp_path, actor_deepspeed=zero3)
    offload = _compat.zero3_offload_of(engines.actor)
    modules = list(engines.actor.module.modules())

    def counts():
        live = sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in modules)
        return len(offload.forward_hooks), len(offload.backward_hooks), live

    # Each module gets a pre- and a post-forward hook, and two more for its backward.
    assert counts()[:2] == (2 * len(modules), 2 * len(modules))
    before = counts()
    generation_config = sampling_settings_for(inputs.tokenizer, 1.0, 0, 1.0, 4).generation_config(inputs.tokenizer)
    batch = rollout_batch(inputs, count=4)
    for _ in range(3):
        experience.generate(engines.actor, batch, generation_config, "gather_once")
        assert counts() == before


def test_zero3_float32_actor_has_no_second_master_copy_and_steps_as_plain_adamw(models, tmp_path):
    """Under ZeRO-3 in float32 the optimiser updates the parameter partitions themselves (DeepSpeed would keep a
    float32 copy of them), in several optimiser sub-groups; one step must give the weights that torch's AdamW
    with the same settings gives the whole model."""
    import json

    import deepspeed

    from rlhf.adaptation.checkpoint import load_adapted

    ds_config = json.loads((REPO / "deepspeed_configs" / "zero3.json").read_text())
    ds_config["zero_optimization"]["sub_group_size"] = 5000  # several sub-groups on the tiny actor
    config_file = tmp_path / "zero3_small_groups.json"
    config_file.write_text(json.dumps(ds_config))
    config, inputs, engines = engines_for(
        models, tmp_path, actor_deepspeed=str(config_file), max_grad_norm=0.5, lr_scheduler_type="constant"
    )
    optimizer = engines.actor.optimizer
    assert len(optimizer.fp32_partitioned_groups_flat) > 2
    assert engines.actor.enable_backward_allreduce  # ZeRO-3 moves gradients into partitions through it
    for master, partition in zip(optimizer.fp32_partitioned_groups_flat, optimizer.fp16_partitioned_groups_flat):
        assert master.data_ptr() == partition.data_ptr()

    plain = stepped_beside_plain_adamw(engines.actor, inputs, config, max_grad_norm=0.5)
    parameters = dict(engines.actor.module.named_parameters())
    with deepspeed.zero.GatheredParameters(list(parameters.values())):
        trained = {name: value.detach().clone() for name, value in parameters.items()}
    expected = dict(plain.named_parameters())
    assert trained.keys() == expected.keys()
    start = dict(load_adapted(inputs.paths["actor"], task="causal_lm").named_parameters())
    for name, value in trained.items():
        torch.testing.assert_close(value, expected[name].detach(), rtol=1e-5, atol=1e-6, msg=name)
    assert all(not torch.equal(trained[name], start[name].detach()) for name in trained if name.endswith("weight"))


def test_zero0_in_one_process_skips_deepspeeds_all_reduce_and_steps_as_plain_adamw(models, tmp_path):
    """One process without ZeRO: the gradient all-reduce over a group of one is switched off, and two steps still
    give the weights of torch's AdamW (with clipping) on the whole model. (ZeRO-3 keeps it: the test above.)"""
    from rlhf.adaptation.checkpoint import load_adapted

    zero0 = str(REPO / "deepspeed_configs" / "zero0.json")
    config, inputs, engines = engines_for(
        models, tmp_path, actor_deepspeed=zero0, critic_deepspeed=zero0, max_grad_norm=0.5, lr_scheduler_type="constant"
    )
    assert not engines.actor.enable_backward_allreduce and not engines.critic.enable_backward_allreduce

    plain = stepped_beside_plain_adamw(engines.actor, inputs, config, max_grad_norm=0.5)
    trained, expected = dict(engines.actor.module.named_parameters()), dict(plain.named_parameters())
    start = dict(load_adapted(inputs.paths["actor"], task="causal_lm").named_parameters())
    for name, value in trained.items():
        torch.testing.assert_close(value.detach(), expected[name].detach(), rtol=1e-5, atol=1e-6, msg=name)
        assert not torch.equal(value.detach(), start[name].detach()) or not name.endswith("weight"), name


def stepped_beside_plain_adamw(actor, inputs, config, max_grad_norm: float, steps: int = 2):
    """Take `steps` optimiser steps of the actor engine and of a plain copy of its model under torch's AdamW
    (same settings, clipping at `max_grad_norm`) on the same batch; the losses must agree at every step.
    Returns the plain model, whose weights the engine's should then equal."""
    from rlhf.adaptation.checkpoint import load_adapted

    plain = load_adapted(inputs.paths["actor"], task="causal_lm")
    plain.train(actor.module.training).requires_grad_(True)
    plain_optimizer = torch.optim.AdamW(
        plain.parameters(), lr=config.actor_learning_rate, eps=1e-5, weight_decay=config.weight_decay
    )
    input_ids = torch.randint(0, len(inputs.tokenizer), (2, 7), generator=torch.Generator().manual_seed(0))
    for _ in range(steps):
        loss = actor(input_ids=input_ids).logits.float().pow(2).mean()
        actor.backward(loss)
        actor.step()
        plain_loss = plain(input_ids=input_ids).logits.float().pow(2).mean()
        plain_loss.backward()
        torch.nn.utils.clip_grad_norm_(plain.parameters(), max_grad_norm)
        plain_optimizer.step()
        plain_optimizer.zero_grad()
        torch.testing.assert_close(loss, plain_loss, rtol=1e-5, atol=1e-6)
    return plain


@pytest.mark.parametrize("path", sorted((REPO / "deepspeed_configs").glob("*.json")), ids=lambda p: p.name)
def test_every_deepspeed_config_resolves_its_autos_for_ppo(path):
    from rlhf.config import load_deepspeed_config
    from rlhf.ppo.engines import fill_auto

    resolved = fill_auto(
        load_deepspeed_config(str(path)), micro_batch_size=8, max_grad_norm=1.0, hidden_size=64, source=str(path)
    )
    assert "auto" not in repr(resolved)
    assert resolved["train_micro_batch_size_per_gpu"] == 8 and resolved["train_batch_size"] == 8


def test_an_auto_ppo_cannot_resolve_is_named():
    from rlhf.ppo.engines import fill_auto

    with pytest.raises(ConfigError, match="x.json: 'optimizer.params.lr' is \"auto\""):
        fill_auto(
            {"optimizer": {"params": {"lr": "auto"}}},
            micro_batch_size=1,
            max_grad_norm=1.0,
            hidden_size=4,
            source="x.json",
        )

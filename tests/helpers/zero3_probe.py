"""Run by tests/test_zero3_sharding.py on every rank of a 2-process `deepspeed` launch (gloo on CPU).

    python -m deepspeed.launcher.runner --num_gpus 2 tests/helpers/zero3_probe.py MODELS_JSON OUT_DIR

For two PPO setups under ZeRO-3 (full actor and critic; LoRA actor as its own reference, LoRA critic, Houlsby
reward model) it records, per rank, the share of each model's parameter elements this rank holds: as loaded
(when the model reaches deepspeed.initialize) and once the engines are built. It then gives the trained models
random weights and saves each model twice: streamed one module at a time (what the stages do) and, for
comparison, gathered whole and saved by `save_adapted` (the way it was done before).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from tests.helpers.ppo_setup import REPO, stage_arguments


def local_share(module: torch.nn.Module, only_partitioned: bool = False) -> dict[str, float]:
    """Elements this rank holds (its partitions plus anything whole: persistent or never partitioned) over all."""
    held = total = 0
    for parameter in module.parameters():
        if only_partitioned and not hasattr(parameter, "ds_id"):
            continue
        full = getattr(parameter, "ds_numel", parameter.numel())
        total += full
        partition = parameter.ds_tensor.numel() if hasattr(parameter, "ds_tensor") else 0
        held += partition + parameter.numel()  # numel() is 0 while a ZeRO-3 parameter is released
    return {"held": held, "total": total, "share": held / total}


def randomise(parameters, seed: int) -> None:
    """Rank 0 draws new values for the (partitioned) parameters; ZeRO-3 scatters them."""
    import deepspeed

    generator = torch.Generator().manual_seed(seed)
    for parameter in parameters:
        with deepspeed.zero.GatheredParameters([parameter], modifier_rank=0):
            if torch.distributed.get_rank() == 0:
                with torch.no_grad():
                    parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)


def main(models_path: str, out_dir: str) -> None:
    import deepspeed

    from rlhf import distributed
    from rlhf.adaptation.checkpoint import save_adapted
    from rlhf.adaptation.partitioned_save import save_adapted_partitioned
    from rlhf.config import parse_config
    from rlhf.ppo import inputs as ppo_inputs
    from rlhf.ppo.config import PPOStageConfig
    from rlhf.ppo.engines import adaptation_for, build_engines, init_distributed

    models = json.loads(Path(models_path).read_text())
    out = Path(out_dir)
    init_distributed()
    rank = distributed.global_rank()
    zero3, inference = (str(REPO / "deepspeed_configs" / n) for n in ("zero3.json", "zero3_inference.json"))
    setups = {
        "full": dict(reward_model=models["reward"]),
        "lora": dict(
            adaptation_method="lora",
            critic_adaptation_method="lora",
            lora_dropout=0.0,
            merge_lora_on_save=True,
            reward_model=models["houlsby_reward"],
        ),
    }
    report = {}
    original_initialize = deepspeed.initialize
    for name, overrides in setups.items():
        as_loaded = []

        def initialize(*args, model, as_loaded=as_loaded, **kwargs):
            as_loaded.append(local_share(model, only_partitioned=True))
            return original_initialize(*args, model=model, **kwargs)

        argv = stage_arguments(
            models,
            out / name / "run",
            out / name / "registry",
            actor_deepspeed=zero3,
            critic_deepspeed=zero3,
            reference_deepspeed=inference,
            reward_deepspeed=inference,
            **overrides,
        )
        config = parse_config(PPOStageConfig, argv)
        inputs = ppo_inputs.read_inputs(config)
        deepspeed.initialize = initialize
        try:
            engines = build_engines(config, inputs.paths, inputs.tokenizer)
        finally:
            deepspeed.initialize = original_initialize
        roles = [role for role in ("actor", "critic", "reference", "reward") if getattr(engines, role) is not None]
        report[name] = {
            "as_loaded": dict(zip(roles, as_loaded)),
            "built": {role: local_share(getattr(engines, role).module) for role in roles},
        }

        # Trained-looking weights (LoRA B and Houlsby W_up start at zero), then both saves of each.
        saves = {"actor": (engines.actor.module, adaptation_for(config, config.adaptation_method))}
        if name == "lora":
            saves["reward"] = (engines.reward.module, adaptation_for(config, "adapter"))
        for seed, (role, (module, adaptation)) in enumerate(saves.items()):
            trained = (
                [p for n, p in module.named_parameters() if p.requires_grad or "adapter" in n.split(".")]
                if name == "lora"
                else list(module.parameters())
            )
            randomise(trained, seed)
            save_adapted_partitioned(
                module, inputs.tokenizer, out / name / f"{role}_streamed", adaptation, max_shard_bytes=20_000
            )
            with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
                if rank == 0:
                    save_adapted(module, inputs.tokenizer, out / name / f"{role}_whole", adaptation)
            distributed.barrier()
    (out / f"rank{rank}.json").write_text(json.dumps(report, indent=2))
    # As the stages end (rlhf.stages.prologue): queued ZeRO-3 work finished, then out without the interpreter's
    # teardown, which aborts a rank now and then while gloo's threads still run.
    distributed.finish_pending_work()
    distributed.shutdown()
    distributed.exit_after_success()


if __name__ == "__main__":
    main(*[argument for argument in sys.argv[1:] if not argument.startswith("--local_rank")])

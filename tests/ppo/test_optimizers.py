"""rlhf.ppo.optimizers: DeepSpeed's own Adam where it applies, torch's fused AdamW otherwise, and the same AdamW either
way."""

from __future__ import annotations

import pytest
import torch

from tests.helpers.ppo_setup import TIMING_KEYS, engines_for, run_in_process, stage_arguments


@pytest.mark.parametrize("cuda", [False, True])
def test_deepspeeds_own_adam_where_it_applies_torchs_otherwise(cuda):
    import json

    from rlhf.ppo.optimizers import choose_optimizer
    from tests.helpers.ppo_setup import REPO

    files = {path.name: json.loads(path.read_text()) for path in (REPO / "deepspeed_configs").glob("*.json")}
    chosen = {name: choose_optimizer(ds_config, cuda) for name, ds_config in files.items()}
    on_device = "fused_adam" if cuda else "torch_adamw"
    assert chosen == {name: "cpu_adam" if name == "zero3_offload.json" else on_device for name in files}
    for device, expected in (("cpu", "cpu_adam"), ("nvme", "cpu_adam"), ("none", on_device)):
        ds_config = {"zero_optimization": {"stage": 2, "offload_optimizer": {"device": device}}}
        assert choose_optimizer(ds_config, cuda) == expected, device
    assert choose_optimizer({}, cuda) == on_device


def test_a_fusedadam_that_deepspeed_cannot_build_falls_back_to_torchs_fused_adamw(monkeypatch, capsys):
    """On an H200 whose TORCH_CUDA_ARCH_LIST was "9.0a", DeepSpeed 0.19.8's JIT build of FusedAdam raised
    ValueError (it parses each architecture as numbers) and stopped every ZeRO-0/ZeRO-3 PPO run at engine build.
    The same failure, raised where FusedAdam builds its op, now gives torch's fused AdamW and one line."""
    import deepspeed.ops.adam

    from rlhf.ppo.optimizers import build_optimizer

    def unbuildable(*args, **kwargs):
        raise ValueError("invalid literal for int() with base 10: '0a'")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(deepspeed.ops.adam, "FusedAdam", unbuildable)
    parameter = torch.nn.Parameter(torch.ones(4))
    optimizer = build_optimizer([parameter], {"zero_optimization": {"stage": 3}}, 1e-2, 0.0)
    assert type(optimizer) is torch.optim.AdamW and optimizer.defaults["fused"]
    assert optimizer.defaults["eps"] == 1e-5 and optimizer.defaults["lr"] == 1e-2
    said = capsys.readouterr().out.strip().splitlines()
    assert said == [
        "DeepSpeed's FusedAdam could not be built (ValueError: invalid literal for int() with base 10: "
        "'0a'); using torch's fused AdamW"
    ]


def test_torchs_adamw_is_the_fused_kernel_and_steps_as_the_for_loop_one():
    from rlhf.ppo.optimizers import ADAM_EPS, build_optimizer, can_fuse

    torch.manual_seed(0)
    start, grads = torch.randn(1000), [torch.randn(1000) for _ in range(3)]
    stepped = []
    for make in (
        lambda p: build_optimizer(p, {}, 1e-2, 0.01),
        lambda p: torch.optim.AdamW(p, lr=1e-2, eps=ADAM_EPS, weight_decay=0.01, foreach=False),
    ):
        parameter = torch.nn.Parameter(start.clone())
        optimizer = make([parameter])
        for grad in grads:
            parameter.grad = grad.clone()
            optimizer.step()
        stepped.append(parameter.detach())
    assert optimizer.defaults["fused"] is None and build_optimizer([parameter], {}, 1e-2, 0.0).defaults["fused"]
    assert not torch.equal(stepped[0], start)
    torch.testing.assert_close(stepped[0], stepped[1], rtol=1e-6, atol=1e-7)
    assert not can_fuse(torch.zeros(2, dtype=torch.int64)) and not can_fuse(torch.zeros(2, device="meta"))


@pytest.mark.slow
def test_optimiser_offload_steps_with_deepspeeds_cpu_adam_the_same_adamw_as_torchs(models, tmp_path):
    from deepspeed.ops.adam import DeepSpeedCPUAdam

    from rlhf.ppo.tracking import read_metrics
    from tests.helpers.ppo_setup import REPO

    zero3, offload = (str(REPO / "deepspeed_configs" / name) for name in ("zero3.json", "zero3_offload.json"))
    _, _, engines = engines_for(models, tmp_path / "engines", actor_deepspeed=offload, critic_deepspeed=offload)
    assert all(isinstance(engine.basic_optimizer, DeepSpeedCPUAdam) for engine in (engines.actor, engines.critic))
    # DeepSpeed refuses torch's AdamW with offload (zero_force_ds_cpu_optimizer); the CPU one is the same AdamW.
    common = dict(max_steps=3, save_steps=0, eval_prompts=2, weight_decay=0.01)
    run_in_process(
        stage_arguments(
            models, tmp_path / "torch", tmp_path / "reg1", actor_deepspeed=zero3, critic_deepspeed=zero3, **common
        )
    )
    run_in_process(
        stage_arguments(
            models,
            tmp_path / "cpu_adam",
            tmp_path / "reg2",
            actor_deepspeed=offload,
            critic_deepspeed=offload,
            **common,
        )
    )
    # The actor's numbers agree exactly; the critic's (large values, learning rate 5e-3) carry the two
    # implementations' float rounding: a few parts in a million per step.
    torch_rows, cpu_adam_rows = read_metrics(tmp_path / "torch"), read_metrics(tmp_path / "cpu_adam")
    assert [row["step"] for row in cpu_adam_rows] == [1, 2, 3]
    for want, have in zip(torch_rows, cpu_adam_rows):
        for key in set(want) - TIMING_KEYS:
            assert have[key] == pytest.approx(want[key], rel=1e-4, abs=1e-6), (want["step"], key)

    # One step from the same weights and gradients: the same AdamW update.
    torch.manual_seed(0)
    start, grads = torch.randn(1000), [torch.randn(1000) for _ in range(3)]
    stepped = []
    for make in (
        lambda p: torch.optim.AdamW(p, lr=1e-2, eps=1e-5, weight_decay=0.01),
        lambda p: DeepSpeedCPUAdam(p, lr=1e-2, eps=1e-5, weight_decay=0.01, adamw_mode=True),
    ):
        parameter = torch.nn.Parameter(start.clone())
        optimizer = make([parameter])
        for grad in grads:
            parameter.grad = grad.clone()
            optimizer.step()
        stepped.append(parameter.detach())
    assert not torch.equal(stepped[0], start)
    torch.testing.assert_close(stepped[1], stepped[0], rtol=1e-6, atol=1e-7)

"""Two "nodes" on this machine, as on a cluster without ssh between nodes: one `deepspeed` launcher per node with
`--no_ssh --node_rank N`, a shared hostfile and master address. A short ZeRO-3 PPO job must use both ranks, give
the same results as the same job on one node with two processes, and leave the shared files to rank 0 alone."""

from __future__ import annotations

import json
import subprocess

import pytest

from rlhf.distributed import free_port
from tests.helpers.ppo_setup import (
    PYTHON,
    REPO,
    assert_same_final_metrics,
    stage_arguments,
    subprocess_env,
)

TIMING_KEYS = {"time_generation", "time_scoring", "time_training", "tokens_per_second"}


def _ppo_arguments(models, tmp_path, name):
    zero3, inference = (str(REPO / "deepspeed_configs" / f) for f in ("zero3.json", "zero3_inference.json"))
    return stage_arguments(
        models,
        tmp_path / name,
        tmp_path / f"registry_{name}",
        max_steps=2,
        save_steps=2,
        eval_prompts=4,
        actor_deepspeed=zero3,
        critic_deepspeed=zero3,
        reference_deepspeed=inference,
        reward_deepspeed=inference,
    )


@pytest.mark.slow
def test_two_nodes_without_ssh_equal_one_node_with_two_processes(tmp_path, models):
    from rlhf.ppo.tracking import read_metrics
    from rlhf.registry import Registry

    hostfile = tmp_path / "hostfile"
    hostfile.write_text("127.0.0.1 slots=1\nlocalhost slots=1\n")
    runner = [PYTHON, "-m", "deepspeed.launcher.runner"]

    port = free_port()
    nodes = [
        subprocess.Popen(
            [
                *runner,
                "--hostfile",
                str(hostfile),
                "--no_ssh",
                "--node_rank",
                str(rank),
                "--master_addr",
                "127.0.0.1",
                "--master_port",
                str(port),
                "--module",
                "rlhf.stages.ppo",
                *_ppo_arguments(models, tmp_path, "two_nodes"),
            ],
            env=subprocess_env(tmp_path),
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in (0, 1)
    ]
    outputs = [node.communicate(timeout=900)[0] for node in nodes]
    for node, output in zip(nodes, outputs):
        assert node.returncode == 0, output[-4000:]
    # Each launcher started one process of a world of two: global rank 0 on node 0, rank 1 on node 1.
    assert "dist_world_size=2" in outputs[0] and "dist_world_size=2" in outputs[1]
    assert "global_rank_mapping" in outputs[1] and "node_rank=1" in outputs[1]

    one_node = subprocess.run(
        [
            *runner,
            "--num_gpus",
            "2",
            "--master_port",
            str(free_port()),
            "--module",
            "rlhf.stages.ppo",
            *_ppo_arguments(models, tmp_path, "one_node"),
        ],
        env=subprocess_env(tmp_path),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert one_node.returncode == 0, one_node.stdout[-4000:]

    # Both ranks took part: each wrote its own ZeRO-3 shard of the actor's optimiser states.
    shards = sorted(
        p.name for p in (tmp_path / "two_nodes" / "checkpoints" / "step-2" / "actor").glob("*optim_states.pt")
    )
    assert len(shards) == 2 and any("rank_0" in s for s in shards) and any("rank_1" in s for s in shards), shards

    # The same job: the same per-step metrics and final comparison as on one node.
    two, one = read_metrics(tmp_path / "two_nodes"), read_metrics(tmp_path / "one_node")
    assert [row["step"] for row in two] == [1, 2]
    for a, b in zip(two, one):
        for key in set(a) - TIMING_KEYS:
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), (a["step"], key)
    final_two = json.loads((tmp_path / "two_nodes" / "metrics.json").read_text())
    final_one = json.loads((tmp_path / "one_node" / "metrics.json").read_text())
    assert_same_final_metrics(final_one, final_two)

    # Only rank 0 wrote the shared files: one registry entry, one registered.json, no leftover temporaries.
    assert [e.reference for e in Registry(tmp_path / "registry_two_nodes").entries()] == ["ppo@1"]
    assert json.loads((tmp_path / "two_nodes" / "registered.json").read_text())["reference"] == "ppo@1"
    assert not list((tmp_path / "two_nodes").rglob("*.tmp")) and not list(
        (tmp_path / "registry_two_nodes").rglob("*.tmp")
    )

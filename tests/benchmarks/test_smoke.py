"""The benchmark suite starts and writes its files on the smallest settings (no peer venv, no network).

It measures nothing worth keeping: the numbers come from `python -m benchmarks.run` (benchmarks/RESULTS.md).
The multi-process benchmarks (ZeRO-3 generation, memory per ZeRO layout) start 2-process DeepSpeed launches and
are checked in a slow test of their own.
"""

from __future__ import annotations

import json

import pytest

from benchmarks import run as bench_run


def write_fake_demo_run(root):
    """A pipeline run's stage outputs as the contracts describe them (metrics.json per stage)."""
    stages = {
        "sft": {"eval_loss": 1.2, "gold_score_before": 0.1, "gold_score_after": 0.4},
        "rm": {"eval_pairwise_accuracy": 0.8},
        "ppo": {"gold_score_sft": 0.4, "gold_score_ppo": 0.65, "win_rate_gold": 0.7, "kl_final": 1.5},
    }
    for stage, metrics in stages.items():
        (root / stage).mkdir(parents=True)
        (root / stage / "metrics.json").write_text(json.dumps(metrics))
    (root / "timings.json").write_text(json.dumps({"sft": 12.5, "rm": 7.0, "ppo": 30.0}))


@pytest.mark.slow
def test_suite_runs_on_smallest_settings_and_writes_its_files(tmp_path):
    demo = tmp_path / "demo-run"
    write_fake_demo_run(demo)
    code = bench_run.main(
        [
            "--smallest",
            "--no-peer",
            "--only",
            "ppo_vs_trl",
            "rm_kway",
            "rm_shared_prompt",
            "sft_throughput",
            "demo",
            "--demo-run",
            str(demo),
            "--results-dir",
            str(tmp_path / "out"),
            "--workdir",
            str(tmp_path / "work"),
        ]
    )
    assert code == 0

    results = json.loads((tmp_path / "out" / "results" / "all.json").read_text())
    assert set(results["results"]) == {"matmul", "ppo_vs_trl", "rm_kway", "rm_shared_prompt", "sft_throughput", "demo"}
    assert results["machine"]["cpu_cores"] >= 1 and results["machine"]["versions"]["torch"]
    assert results["results"]["matmul"]["peak_flops"] > 0

    ppo = results["results"]["ppo_vs_trl"]
    assert "trl" not in ppo and "--no-peer" in ppo["note"]
    assert ppo["ours"]["time_iteration"] > 0 and ppo["ours"]["response_length"] > 0
    assert 0 < ppo["ours"]["training_share_of_matmul_peak"]
    # The profile wraps the stage's phases where the recipe looks them up: it must see every update it times.
    assert ppo["ours_training_profile"]["updates"] >= 1 and ppo["ours_training_profile"]["update_s"] > 0
    assert [row["k"] for row in results["results"]["rm_kway"]["rows"]] == [2, 4]
    assert [row["k"] for row in results["results"]["rm_shared_prompt"]["rows"]] == [4, 9, 4, 4]

    demo_result = results["results"]["demo"]
    assert demo_result["stage_seconds"] == {"sft": 12.5, "rm": 7.0, "ppo": 30.0}
    assert abs(demo_result["gold_gain"] - 0.25) < 1e-9

    markdown = (tmp_path / "out" / "RESULTS.md").read_text()
    for heading in (
        "## 1. PPO iteration",
        "## 3. Reward-model training",
        "## 5. Tokens per second",
        "## 6. End-to-end",
    ):
        assert heading in markdown
    assert "| HH-like, K=9 | 150-400 | 20-80 |" in markdown
    assert "not run (left out with --only)" in markdown  # ZeRO-3 generation and memory
    assert "+0.250" in markdown


def test_padding_free_benchmark_times_both_sides_on_the_same_rollouts(tmp_path):
    from benchmarks import padding_free
    from benchmarks.ppo_vs_trl import Settings

    result = padding_free.run(Settings.smallest(), tmp_path, repeats=2, log=lambda line: None)
    for side in ("packed", "padded"):
        assert [len(result["times"][side][phase]) for phase in ("scoring", "training")] == [2, 2]
    assert 0 < result["real_token_share"] <= 1
    assert all(value > 0 for value in result["ratios"].values())
    assert "| training |" in padding_free.markdown(result)


def test_shared_prompt_benchmark_times_both_sides_on_the_same_rankings_and_counts_their_tokens():
    from benchmarks import shared_prompt

    cases = (shared_prompt.Case("long prompts", 3, (40, 60), (2, 6)), shared_prompt.Case("short", 2, (3, 4), (5, 9)))
    result = shared_prompt.run(shared_prompt.Settings.smallest(), cases, log=lambda line: None)
    long_prompts, short = result["rows"]
    for row in result["rows"]:
        assert [len(row["step_s"][side]) for side in ("shared", "separate")] == [1, 1]
        assert row["time_ratio"] > 0
        # The same weights and rankings: the first step's losses agree.
        assert row["first_step_loss"]["shared"] == pytest.approx(row["first_step_loss"]["separate"], abs=1e-5)
    # Three 40-60-token prompts computed once instead of three times, replies of at most 6.
    assert long_prompts["tokens_ratio"] < 0.6 and short["tokens_ratio"] < 1
    assert "| long prompts | 40-60 | 2-6 |" in shared_prompt.markdown(result)


@pytest.mark.slow
def test_multi_process_benchmarks_run_on_smallest_settings_and_see_every_phase(tmp_path):
    code = bench_run.main(
        [
            "--smallest",
            "--no-peer",
            "--only",
            "zero3_generation",
            "ppo_memory",
            "--results-dir",
            str(tmp_path / "out"),
            "--workdir",
            str(tmp_path / "work"),
        ]
    )
    assert code == 0
    results = json.loads((tmp_path / "out" / "results" / "all.json").read_text())["results"]
    assert {row["mode"] for row in results["zero3_generation"]["rows"]} >= {"unsharded", "gather_once", "per_step"}
    for row in results["ppo_memory"]["rows"]:
        # Each phase of the PPO recipe was wrapped and reached, the final save included.
        assert set(row["peak_rss_in_mb"]) >= {
            "engines_built",
            "generation",
            "scoring",
            "backward",
            "optimizer_step",
            "update",
            "final_save",
        }
        assert row["peak_rss_mb"] > 0
        for rank in row["ranks"]:
            # The baseline is taken with every library imported (those the first tokenizer load imports, ~90 MB,
            # included), so little but the process group and prompts lies between it and the first model load.
            assert 0 <= rank["rss_before_models_mb"] - rank["rss_after_imports_mb"] < 40, rank


def test_phases_keep_each_phases_own_cuda_peak(monkeypatch):
    """On a GPU each phase gets the highest torch.cuda.max_memory_allocated within it: the counter is reset as a
    phase begins, so a later, smaller phase does not inherit an earlier peak (a fake CUDA allocator here)."""
    import torch

    from benchmarks.memory_phases import Phases

    mb = 2**20
    allocator = {"now": 50 * mb, "peak": 50 * mb}

    def allocate(megabytes: int, keep: int) -> None:
        allocator["peak"] = max(allocator["peak"], allocator["now"] + megabytes * mb)
        allocator["now"] += keep * mb

    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda: allocator["now"])
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda: allocator["peak"])
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda: allocator.update(peak=allocator["now"]))

    class Stage:
        def big(self):
            allocate(300, keep=10)

        def small(self):
            allocate(20, keep=0)

    phases = Phases(cuda=True)
    phases.wrap(Stage, "big")
    phases.wrap(Stage, "small")
    Stage().big()
    Stage().small()
    big, small = phases.records
    assert (big["cuda_begin_mb"], big["cuda_peak_mb"]) == (50, 350)
    assert (small["cuda_begin_mb"], small["cuda_peak_mb"]) == (60, 80)
    assert phases.cuda_peak_mb() == 350


def test_matched_kl_reads_every_run_where_its_mean_kl_first_reaches_the_lowest_peak():
    from benchmarks.estimators import at_kl, matched_kl_target, window_means

    # Windows of 2: run A's KLs 0, 1, 3, 5 have means 0.5, 2, 4 (peak 4); run B's 0, 2, 2, 2 have 1, 2, 2 (peak 2).
    # The target is the lower peak, 2. A first reaches it at its second window (steps 2-3): mean gold (0.6 + 0.7) / 2.
    a = [
        {"step": s + 1, "kl": kl, "gold_score": gold}
        for s, (kl, gold) in enumerate([(0.0, 0.5), (1.0, 0.6), (3.0, 0.7), (5.0, 0.9)])
    ]
    b = [{"step": s + 1, "kl": kl, "gold_score": 0.5} for s, kl in enumerate([0.0, 2.0, 2.0, 2.0])]
    assert window_means([0.0, 1.0, 3.0, 5.0], 2) == [0.5, 2.0, 4.0]
    assert matched_kl_target([a, b], window=2) == 2.0
    assert at_kl(a, 2.0, window=2) == {"step": 2, "kl": 2.0, "gold_score": pytest.approx(0.65)}
    assert at_kl(b, 2.0, window=2)["step"] == 2


@pytest.mark.slow
def test_estimators_benchmark_runs_on_smallest_settings_and_fills_its_block(tmp_path):
    from benchmarks import estimators

    estimators.main(
        [
            "--smallest",
            "--estimators",
            "gae",
            "rloo",
            "--results-dir",
            str(tmp_path),
            "--out",
            str(tmp_path / "estimators.json"),
            "--workdir",
            str(tmp_path / "work"),
        ]
    )
    result = json.loads((tmp_path / "estimators.json").read_text())
    demo = result["demo"]["rows"]
    assert set(demo) == {"gae", "rloo"} and demo["gae"][0]["time_vs_gae"] == 1.0
    rloo = demo["rloo"][0]
    assert rloo["seconds_per_step"] > 0 and rloo["step_memory_mb"] > 0 and 0 <= rloo["win_rate_gold"] <= 1
    assert rloo["gold_at_matched_kl"] is not None and rloo["time_vs_gae"] > 0
    big = result["size_100m"]["rows"]
    assert set(big) == {"gae", "rloo"} and big["rloo"]["memory_vs_gae"] > 0
    markdown = (tmp_path / "RESULTS.md").read_text()
    block = markdown.split("<!-- measured: estimators -->")[1].split("<!-- end: estimators -->")[0]
    assert "| rloo |" in block and "| gae |" in block


@pytest.mark.slow
def test_estimators_against_trl_runs_on_smallest_settings_with_both_trl_trainers(tmp_path):
    from benchmarks import estimators_vs_trl

    estimators_vs_trl.main(
        [
            "--smallest",
            "--results-dir",
            str(tmp_path),
            "--out",
            str(tmp_path / "vs_trl.json"),
            "--workdir",
            str(tmp_path / "work"),
        ]
    )
    result = json.loads((tmp_path / "vs_trl.json").read_text())
    for estimator, trainer in (("rloo", "RLOOTrainer"), ("grpo", "GRPOTrainer")):
        side = result["estimators"][estimator]
        # 2 iterations per run, the first warm-up: one timed on each side, every phase of it seen.
        assert side["ours"]["timed_steps"] == side["trl"]["timed_steps"] == 1
        assert all(side["trl"][phase] > 0 for phase in ("time_generation", "time_scoring", "time_training"))
        assert side["ratios"]["time_iteration"] > 0
        assert f"| {estimator} vs {trainer} | iteration |" in (tmp_path / "RESULTS.md").read_text()


def test_an_over_optimised_curve_is_read_at_its_best_window_and_its_last_by_hand():
    from benchmarks.overoptimisation import curve_summary, goal

    # Gold 0.5, 0.7, 0.8, 0.9, 0.7, 0.5, 0.4: windows of 3 have means 0.667, 0.8, 0.8, 0.7, 0.533; the first best
    # starts at the second evaluation (step 10), the end is the last window (0.533), kept 0.533 / 0.8 = 0.667.
    gold = [0.5, 0.7, 0.8, 0.9, 0.7, 0.5, 0.4]
    rows = [{"step": 10 * i, "gold_score": g, "kl": float(i), "rm_score": 0.1 * i} for i, g in enumerate(gold)]
    summary = curve_summary(rows, window=3)
    assert summary["gold_peak"] == pytest.approx(0.8) and summary["peak_step"] == 10
    assert summary["gold_end"] == pytest.approx(1.6 / 3) and summary["kept"] == pytest.approx(2 / 3)
    assert summary["kl_end"] == pytest.approx(5.0) and summary["gold_start"] == 0.5
    runs = [
        {"variant": "single", "kept": 0.8},
        {"variant": "single", "kept": 0.86},
        {"variant": "min", "kept": 0.97},
        {"variant": "min", "kept": 0.95},
        {"variant": "mean", "kept": 0.9},
    ]
    verdict = goal({"runs": runs})
    assert verdict["kept"]["single"] == pytest.approx(0.83) and verdict["single_fell"]
    assert verdict["met_by"] == ["min"]  # mean keeps 0.9 < 0.95


@pytest.mark.slow
def test_overoptimisation_runs_on_smallest_settings_and_fills_its_block(tmp_path):
    from benchmarks import overoptimisation

    overoptimisation.main(
        [
            "--smallest",
            "--results-dir",
            str(tmp_path),
            "--out",
            str(tmp_path / "oo.json"),
            "--workdir",
            str(tmp_path / "work"),
        ]
    )
    result = json.loads((tmp_path / "oo.json").read_text())
    assert [(run["variant"], run["seed"]) for run in result["runs"]] == [("single", 0), ("min", 0)]
    for run in result["runs"]:
        assert [row["step"] for row in run["evaluations"]] == [0, 1, 2]
        assert "rm_score_std" in run["evaluations"][0] or run["variant"] == "single"
    assert len(result["reward_models"]["0"]["eval_member_pairwise_accuracy"]) == 2
    block = (tmp_path / "RESULTS.md").read_text().split("<!-- measured: overoptimisation -->")[1]
    assert "| single | 0 |" in block and "| min | 0 |" in block
    assert (tmp_path / "results" / "overoptimisation.png").read_bytes().startswith(b"\x89PNG")


@pytest.mark.slow
def test_rm_ensemble_benchmark_measures_both_designs_on_smallest_settings(tmp_path):
    from benchmarks import rm_ensemble

    rm_ensemble.main(
        [
            "--smallest",
            "--results-dir",
            str(tmp_path),
            "--out",
            str(tmp_path / "rme.json"),
            "--workdir",
            str(tmp_path / "work"),
        ]
    )
    result = json.loads((tmp_path / "rme.json").read_text())
    for design in ("models", "heads"):
        assert len(result[design]["member_pairwise_accuracy"]) == 2 and result[design]["ensemble_std"] >= 0
    assert result["models"]["parameters"] > result["heads"]["parameters"]
    block = (tmp_path / "RESULTS.md").read_text().split("<!-- measured: rm_ensemble -->")[1]
    assert "| 2 separate models |" in block and "| 2 heads, one body |" in block


def test_a_bootstrapped_heads_loss_weighs_each_ranking_by_hand():
    import torch

    from benchmarks.rm_ensemble import bootstrap_weights, weighted_head_loss

    # Two rankings of two: rewards 1 > 0 (loss log(1 + e^-1) = 0.3133) and 0 > 0 (log 2 = 0.6931).
    rewards, ranks = torch.tensor([[1.0, 0.0], [0.0, 0.0]]), torch.tensor([[1, 2], [1, 2]])
    assert weighted_head_loss(rewards, ranks, torch.tensor([2.0, 1.0])).item() == pytest.approx(
        (2 * 0.31326 + 0.69315) / 3, abs=1e-4
    )
    assert weighted_head_loss(rewards, ranks, torch.zeros(2)).item() == 0.0
    weights = bootstrap_weights(3, 1000, seed=0)
    assert weights.shape == (3, 1000) and weights.mean().item() == pytest.approx(1.0, abs=0.1)
    assert torch.equal(weights, bootstrap_weights(3, 1000, seed=0)) and not torch.equal(weights[0], weights[1])


@pytest.mark.slow
@pytest.mark.vllm
def test_vllm_generation_benchmark_runs_on_smallest_settings_and_fills_its_block(tmp_path):
    from benchmarks import vllm_generation

    vllm_generation.main(
        [
            "--smallest",
            "--results-dir",
            str(tmp_path),
            "--out",
            str(tmp_path / "vllm.json"),
            "--workdir",
            str(tmp_path / "work"),
        ]
    )
    result = json.loads((tmp_path / "vllm.json").read_text())
    (size,) = result["sizes"]
    assert size["hf_s"] > 0 and size["vllm_s"] > 0 and size["vllm_vs_hf"] == size["vllm_s"] / size["hf_s"]
    assert size["sync_s"] > 0 and size["sync_bytes"] > 0
    step = result["ppo_step"]
    assert step["steps"] == 1 and 0 < step["sync_share_median"] < 1 and step["rollout_logprob_gap_max"] < 1e-4
    block = (tmp_path / "RESULTS.md").read_text().split("<!-- measured: vllm_generation -->")[1]
    assert "| vLLM / HF |" in block and "weight sync" in block

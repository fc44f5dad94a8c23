"""Stage 2 end to end on a tiny model: the held-out ranking accuracy rises, the run registers with its lineage,
and the InstructGPT labeling loop (sample -> label -> import) closes through the labels CLI."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest

from rlhf.data.rankings import Ranking, ranks_from_scores, read_rankings, write_rankings
from rlhf.demo.task import CHATTER, WORDS, corpus_words, correct_answer, gold_score, make_split, parse_prompt
from rlhf.demo.tiny_model import build_tiny_model
from rlhf.distributed import free_port
from rlhf.registry import Registry


def _demo_rankings(count: int, seed: int) -> list[Ranking]:
    """Rankings of four responses of clearly different quality, ordered by the gold score as a careful labeler would."""
    rng = random.Random(seed)
    rankings = []
    for number, record in enumerate(make_split(count, seed)):
        answer = correct_answer(parse_prompt(record["prompt"]))
        responses = [
            " ".join(answer),
            f"{rng.choice(CHATTER)} {' '.join(answer)}",
            " ".join(answer + rng.sample(WORDS, 3)),
            " ".join(rng.sample(WORDS, 6)),
        ]
        scores = [gold_score(record["prompt"], text) for text in responses]
        rankings.append(
            Ranking(
                f"r{number}", record["prompt"], tuple(responses), ranks_from_scores(scores), f"labeler-{number % 3}"
            )
        )
    return rankings


@pytest.fixture(scope="module")
def rm_workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("rm")
    model_dir = build_tiny_model(root / "sft_model", corpus_words(), hidden_size=32, num_layers=2)
    registry = Registry(root / "registry")
    registry.register("sft", "sft", model_dir, base_model="tiny")
    write_rankings(root / "rankings.jsonl", _demo_rankings(240, seed=1))
    demos = make_split(40, seed=2)
    (root / "demos.jsonl").write_text("".join(json.dumps(d) + "\n" for d in demos))
    return root


def _rm_args(root, *extra):
    return [
        "--model_name_or_path",
        "sft",
        "--registry_dir",
        str(root / "registry"),
        "--train_file",
        str(root / "rankings.jsonl"),
        "--normalization_file",
        str(root / "demos.jsonl"),
        "--eval_fraction",
        "0.2",
        "--gold_scorer",
        "demo",
        "--max_length",
        "48",
        "--num_train_epochs",
        "4",
        "--per_device_train_batch_size",
        "8",
        "--learning_rate",
        "2e-3",
        "--lr_scheduler_type",
        "constant",
        "--eval_strategy",
        "no",
        "--save_strategy",
        "no",
        "--logging_steps",
        "10",
        "--report_to",
        "none",
        "--seed",
        "0",
        *extra,
    ]


@pytest.mark.slow
def test_rm_run_raises_held_out_pairwise_accuracy_and_registers_with_its_sft_parent(rm_workspace, capsys):
    from rlhf.rm.model import load_reward_model, score_texts
    from rlhf.stages.rm import main

    main(_rm_args(rm_workspace, "--output_dir", str(rm_workspace / "out")))

    entry = Registry(rm_workspace / "registry").get("rm")
    metrics = entry.metrics
    assert entry.reference == "rm@1" and entry.parents == ["sft@1"] and entry.stage == "rm"
    assert metrics["eval_rankings"] == 48 and metrics["train_rankings"] == 192  # held out by prompt, 20%
    assert metrics["eval_pairwise_accuracy"] >= metrics["eval_pairwise_accuracy_before"] + 0.2
    assert metrics["eval_pairwise_accuracy"] >= 0.8
    assert metrics["eval_pairwise_accuracy_k4"] == metrics["eval_pairwise_accuracy"]
    assert metrics["eval_kendall_tau"] > 0.5
    assert metrics["gold_agreement"] > 0.75
    assert metrics["shared_prompt_forward"] is True  # on by default, and the tiny Llama passes the check
    assert "shared_prompt_forward:" not in capsys.readouterr().out
    # The reliability diagram's bins lie beside the metrics; the ECE is in the registry entry.
    calibration = json.loads((rm_workspace / "out" / "calibration.json").read_text())
    assert metrics["eval_ece"] == pytest.approx(calibration["ece"]) and 0 <= metrics["eval_ece"] <= 1
    assert len(calibration["bins"]) == 10
    assert metrics["eval_calibration_pairs"] == calibration["pairs"] >= metrics["eval_pairs"]

    # The offset puts the named demonstrations' mean reward at 0, and travels with the model.
    model, tokenizer, normalization = load_reward_model(entry.path)
    assert normalization.offset == pytest.approx(metrics["reward_offset"])
    demos = [json.loads(line) for line in (rm_workspace / "demos.jsonl").read_text().splitlines()]
    rewards = score_texts(
        model,
        tokenizer,
        [d["prompt"] for d in demos],
        [d["completion"] for d in demos],
        normalization=normalization,
        max_length=48,
    )
    assert sum(rewards) / len(rewards) == pytest.approx(0.0, abs=1e-3)
    assert json.loads((rm_workspace / "out" / "registered.json").read_text())["reference"] == "rm@1"
    assert (rm_workspace / "out" / "resolved_config.yaml").is_file()


def test_rm_bad_rankings_file_is_one_line_error_and_registers_nothing(rm_workspace, tmp_path):
    bad = tmp_path / "bad.jsonl"
    good = json.loads((rm_workspace / "rankings.jsonl").read_text().splitlines()[0])
    bad.write_text(json.dumps(good) + "\n" + json.dumps({**good, "ranks": [1, 2]}) + "\n")
    before = [e.reference for e in Registry(rm_workspace / "registry").entries()]
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "rlhf.stages.rm",
            *_rm_args(rm_workspace),
            "--train_file",
            str(bad),
            "--output_dir",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert str(bad) in result.stderr and "record 2" in result.stderr and "ranks" in result.stderr
    assert [e.reference for e in Registry(rm_workspace / "registry").entries()] == before


def test_export_annotate_import_closes_the_labeling_loop(rm_workspace, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompt_texts = [r["prompt"] for r in make_split(6, seed=3)]
    too_long = " ".join(["cat"] * 60) + " answer :"  # the policy reads 64 tokens: 56 left beside 8 new ones
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompt_texts + [too_long]))
    tasks, export, rankings = tmp_path / "tasks.json", tmp_path / "export.json", tmp_path / "rankings.jsonl"

    def run(*args):
        result = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        return result.stdout

    said = run(
        "rlhf.labels",
        "export",
        "--policy",
        "sft",
        "--registry_dir",
        str(rm_workspace / "registry"),
        "--prompts",
        str(prompts),
        "--k",
        "4",
        "--max_new_tokens",
        "8",
        "--format",
        "label-studio",
        "-o",
        str(tasks),
    )
    assert f"{prompts}: 1 of 7 prompts are over max_prompt_length 56: 1 dropped" in said
    assert (tmp_path / "tasks.config.xml").read_text().count("<Ranker") == 1
    run("rlhf.demo.annotate", str(tasks), "-o", str(export))
    summary = run("rlhf.labels", "import", "--format", "label-studio", str(export), "-o", str(rankings))

    shown = {
        task["data"]["prompt"]: {item["body"] for item in task["data"]["items"]}
        for task in json.loads(tasks.read_text())
    }
    imported = read_rankings(rankings)
    assert set(shown) <= set(prompt_texts) and imported
    for ranking in imported:
        # Every imported ranking is of exactly the responses shown for its prompt, each ranked once.
        assert set(ranking.completions) == shown[ranking.prompt]
        assert sorted(ranking.ranks) == list(range(1, len(ranking.completions) + 1))
    assert f"wrote {len(imported)} rankings" in summary


def test_rankable_leaves_out_empty_and_duplicate_samples_and_counts_them():
    from rlhf.labels.sampling import rankable

    items = [("p1", ["a b", "a b", " ", "c"]), ("p2", ["x", "x", ""]), ("p3", ["y", "z"])]
    kept, dropped = rankable(items)
    assert kept == [("p1", ["a b", "c"]), ("p3", ["y", "z"])]
    assert dropped == {
        "empty responses": 2,
        "duplicate responses": 2,
        "prompts with fewer than 2 distinct responses": 1,
    }


def test_argilla_export_from_a_policy_keeps_only_prompts_with_k_distinct_responses(rm_workspace, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": r["prompt"]}) + "\n" for r in make_split(8, seed=4)))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "rlhf.labels",
            "export",
            "--policy",
            "sft",
            "--registry_dir",
            str(rm_workspace / "registry"),
            "--prompts",
            str(prompts),
            "--k",
            "3",
            "--max_new_tokens",
            "6",
            "--format",
            "argilla",
            "-o",
            str(tmp_path / "records.json"),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    records = json.loads((tmp_path / "records.json").read_text())
    settings = json.loads((tmp_path / "records.settings.json").read_text())
    assert records and all(
        sorted(k for k in r if k.startswith("response-")) == ["response-1", "response-2", "response-3"] for r in records
    )
    assert [o["value"] for o in settings["questions"][0]["settings"]["options"]] == [
        "response-1",
        "response-2",
        "response-3",
    ]
    assert f"wrote {len(records)} tasks" in result.stdout


def test_sampling_for_labels_repeats_with_the_same_seed_and_batch_size_and_shows_progress(rm_workspace, capsys):
    from rlhf.labels.sampling import sample_k_responses

    prompts = [r["prompt"] for r in make_split(5, seed=5)]

    def sample():
        return sample_k_responses(
            "sft", prompts, k=3, registry_dir=str(rm_workspace / "registry"), max_new_tokens=6, seed=7, batch_size=4
        )

    first = sample()
    assert "sampling responses" in capsys.readouterr().err
    assert first == sample()
    assert [prompt for prompt, _ in first] == prompts and all(len(responses) == 3 for _, responses in first)


def test_export_refuses_a_batch_size_below_one_in_one_line(tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "sort: b a"}) + "\n")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "rlhf.labels",
            "export",
            "--prompts",
            str(prompts),
            "--batch_size",
            "0",
            "--format",
            "label-studio",
            "-o",
            str(tmp_path / "tasks.json"),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == ["error: --batch_size must be >= 1, got 0"]
    assert not (tmp_path / "tasks.json").exists()


@pytest.mark.slow
def test_rm_under_two_process_zero3_trains_on_both_ranks_and_saves_whole_weights(rm_workspace, tmp_path):
    import os
    from pathlib import Path

    from safetensors.torch import load_file

    registry = tmp_path / "registry"
    Registry(registry).register(
        "sft",
        "sft",
        build_tiny_model(tmp_path / "sft", corpus_words(), hidden_size=32, num_layers=2),
        base_model="tiny",
    )
    deepspeed = Path(sys.executable).parent / "deepspeed"
    result = subprocess.run(
        [
            str(deepspeed),
            "--num_gpus",
            "2",
            "--master_port",
            str(free_port()),
            "--module",
            "rlhf.stages.rm",
            *_rm_args(rm_workspace, "--num_train_epochs", "1"),
            "--registry_dir",
            str(registry),
            "--output_dir",
            str(tmp_path / "out"),
            "--deepspeed",
            "deepspeed_configs/zero3.json",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    entries = Registry(registry).entries("rm")
    assert [e.reference for e in entries] == ["rm@1"]  # rank 1 registered nothing
    history = [json.loads(line) for line in (tmp_path / "out" / "log_history.jsonl").read_text().splitlines()]
    steps = max(row.get("step", 0) for row in history)
    assert steps == 192 // (8 * 2)  # each rank took half of every global batch of 2 x 8 rankings
    weights = load_file(Path(entries[0].path) / "model.safetensors")
    assert weights["score.weight"].shape == (1, 32)  # gathered from the ZeRO-3 partitions, not empty shards
    assert all(tensor.numel() > 0 for tensor in weights.values())
    assert 0.0 <= entries[0].metrics["eval_pairwise_accuracy"] <= 1.0 and "reward_offset" in entries[0].metrics
    # Both ranks ran the check on their ZeRO-3 partitions and agreed.
    assert entries[0].metrics["shared_prompt_forward"] is True


@pytest.mark.slow
def test_an_ensemble_trains_k_seeds_and_registers_them_as_one_entry_with_each_members_zero(rm_workspace):
    from rlhf.rm.ensemble import member_dirs, members_of
    from rlhf.rm.model import load_reward_model, score_texts, score_texts_by_member, single_reward_model
    from rlhf.stages.rm import main

    output_dir = rm_workspace / "ensemble"
    main(
        _rm_args(
            rm_workspace,
            "--output_dir",
            str(output_dir),
            "--ensemble_size",
            "2",
            "--num_train_epochs",
            "2",
            "--register_as",
            "rmens",
        )
    )

    entry = Registry(rm_workspace / "registry").get("rmens")
    assert [e.reference for e in Registry(rm_workspace / "registry").entries("rmens")] == ["rmens@1"]
    metrics = entry.metrics
    assert metrics["ensemble_size"] == 2 and len(member_dirs(entry.path)) == 2
    # The members trained apart (seeds 0 and 1: their heads and data orders), and disagree somewhat.
    assert metrics["member_train_loss"][0] != metrics["member_train_loss"][1]
    assert len(metrics["eval_member_pairwise_accuracy"]) == 2 and metrics["eval_ensemble_std"] > 0
    assert metrics["eval_pairwise_accuracy"] >= 0.75 and metrics["eval_averaged_pairwise_accuracy"] >= 0.7
    # Calibration of the members' mean, and their spread against its errors, beside the metrics.
    calibration = json.loads((output_dir / "calibration.json").read_text())
    assert calibration["ece"] == pytest.approx(metrics["eval_ece"]) and len(calibration["bins"]) == 10
    assert sum(b["pairs"] for b in calibration["uncertainty"]) == metrics["eval_pairs"]
    assert metrics["eval_error_rate_most_uncertain"] == calibration["uncertainty"][-1]["error_rate"]
    # One log, each row saying whose it is.
    rows = [json.loads(line) for line in (output_dir / "log_history.jsonl").read_text().splitlines()]
    assert {row["member"] for row in rows} == {0, 1}

    # Each member, and the weight average at the top, scores the demonstrations 0 on average.
    demos = [json.loads(line) for line in (rm_workspace / "demos.jsonl").read_text().splitlines()]
    prompts, completions = [d["prompt"] for d in demos], [d["completion"] for d in demos]
    model, tokenizer, normalization = load_reward_model(entry.path)
    assert len(members_of(model)) == 2 and list(normalization.offsets) == metrics["member_reward_offsets"]
    for scores in score_texts_by_member(
        model, tokenizer, prompts, completions, normalization=normalization, max_length=48
    ):
        assert sum(scores) / len(scores) == pytest.approx(0.0, abs=1e-3)
    averaged, _, averaged_normalization = single_reward_model(entry.path)
    assert averaged_normalization.offset == pytest.approx(metrics["reward_offset"])
    rewards = score_texts(
        averaged, tokenizer, prompts, completions, normalization=averaged_normalization, max_length=48
    )
    assert sum(rewards) / len(rewards) == pytest.approx(0.0, abs=1e-3)

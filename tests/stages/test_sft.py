"""Stage 1 end to end on a tiny model: held-out loss falls, the run registers what it should, the loss sees only
what it should, every adaptation method runs through the stage, a killed run resumes, and bad input is one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rlhf.demo.task import corpus_words, make_split
from rlhf.demo.tiny_model import build_tiny_model
from rlhf.distributed import free_port
from rlhf.registry import Registry, fingerprint_files
from tests.helpers import full_disk_hook


def _write_jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


@pytest.fixture(scope="module")
def sft_workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("sft")
    build_tiny_model(root / "base", corpus_words(), hidden_size=32, num_layers=2)
    _write_jsonl(root / "train.jsonl", make_split(256, seed=1))
    _write_jsonl(root / "eval.jsonl", make_split(32, seed=2))
    return root


def _sft_args(root: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--model_name_or_path",
        str(root / "base"),
        "--registry_dir",
        str(out / "registry"),
        "--train_file",
        str(root / "train.jsonl"),
        "--eval_file",
        str(root / "eval.jsonl"),
        "--output_dir",
        str(out / "run"),
        "--max_length",
        "48",
        "--per_device_train_batch_size",
        "16",
        "--per_device_eval_batch_size",
        "32",
        "--learning_rate",
        "3e-3",
        "--lr_scheduler_type",
        "constant",
        "--max_steps",
        "30",
        "--logging_steps",
        "10",
        "--eval_strategy",
        "no",
        "--save_strategy",
        "no",
        "--report_to",
        "none",
        "--seed",
        "0",
        *extra,
    ]


@pytest.mark.slow
def test_sft_lowers_held_out_loss_and_registers_lineage_data_and_config(sft_workspace, tmp_path):
    from rlhf.config import config_to_dict, parse_config
    from rlhf.stages.sft import SFTStageConfig, main

    main(_sft_args(sft_workspace, tmp_path, "--gold_scorer", "demo", "--gold_eval_prompts", "8"))

    entry = Registry(tmp_path / "registry").get("sft")
    metrics = entry.metrics
    assert entry.reference == "sft@1" and entry.stage == "sft" and entry.parents == []
    assert entry.base_model == str((sft_workspace / "base").resolve())
    assert metrics["eval_loss_after"] < metrics["eval_loss_before"] - 1.0
    assert 0.0 <= metrics["gold_score_before"] <= 1.0 and 0.0 <= metrics["gold_score_after"] <= 1.0
    assert entry.data_fingerprint == fingerprint_files([sft_workspace / "train.jsonl"])
    assert entry.config["learning_rate"] == 3e-3 and entry.config["max_steps"] == 30
    assert (Path(entry.path) / "model.safetensors").is_file() and (Path(entry.path) / "tokenizer.json").is_file()

    run_dir = tmp_path / "run"
    assert json.loads((run_dir / "metrics.json").read_text()) == metrics
    assert json.loads((run_dir / "registered.json").read_text()) == {"reference": "sft@1", "path": entry.path}
    # The resolved config is a config: fed back, it rebuilds the same run.
    resolved = run_dir / "resolved_config.yaml"
    again = parse_config(SFTStageConfig, ["--config", str(resolved)])
    original = yaml.safe_load(resolved.read_text())
    assert {k: v for k, v in config_to_dict(again).items() if k in original} == original


def _first_batch(sft_workspace, tmp_path, records, *extra):
    """The first training batch that the stage's SFTTrainer builds from `records`, and the tokenizer."""
    import datasets
    from trl import SFTTrainer

    from rlhf.adaptation.checkpoint import load_adapted
    from rlhf.config import parse_config
    from rlhf.models import load_tokenizer
    from rlhf.sft.packing import keep_packed_rows
    from rlhf.stages.sft import SFTStageConfig

    config = parse_config(
        SFTStageConfig,
        [
            "--model_name_or_path",
            str(sft_workspace / "base"),
            "--output_dir",
            str(tmp_path / "o"),
            "--max_length",
            "48",
            "--per_device_train_batch_size",
            str(len(records)),
            "--report_to",
            "none",
            *extra,
        ],
    )
    tokenizer = load_tokenizer(str(sft_workspace / "base"))
    trainer = SFTTrainer(
        model=load_adapted(str(sft_workspace / "base"), task="causal_lm", is_trainable=True),
        args=config,
        processing_class=tokenizer,
        train_dataset=datasets.Dataset.from_list(records),
    )
    keep_packed_rows(trainer)  # as the stage does
    batch = next(iter(trainer.get_train_dataloader()))
    return batch, tokenizer


def _ids(tokenizer, words: str) -> list[int]:
    return tokenizer.convert_tokens_to_ids(words.split())


def test_loss_is_on_completion_tokens_and_eos_only_by_default(sft_workspace, tmp_path):
    batch, tokenizer = _first_batch(
        sft_workspace, tmp_path, [{"prompt": "reverse cat dog answer :", "completion": " dog cat"}]
    )
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    assert batch["input_ids"][0].tolist() == [bos, *_ids(tokenizer, "reverse cat dog answer : dog cat"), eos]
    assert batch["labels"][0].tolist() == [-100] * 6 + [*_ids(tokenizer, "dog cat"), eos]


def test_instruction_modeling_puts_the_prompt_in_the_loss_too(sft_workspace, tmp_path):
    batch, tokenizer = _first_batch(
        sft_workspace,
        tmp_path,
        [{"prompt": "first owl bee answer :", "completion": " owl"}],
        "--completion_only_loss",
        "false",
    )
    expected = [tokenizer.bos_token_id, *_ids(tokenizer, "first owl bee answer : owl"), tokenizer.eos_token_id]
    assert batch["input_ids"][0].tolist() == expected
    assert batch["labels"][0].tolist() == expected  # the model shifts labels itself


def test_conversational_records_put_only_the_assistant_reply_in_the_loss(sft_workspace, tmp_path):
    from rlhf.data.demonstrations import load_demonstrations

    path = _write_jsonl(
        tmp_path / "chat.jsonl",
        [{"messages": [{"role": "user", "content": "repeat cat answer :"}, {"role": "assistant", "content": "cat"}]}],
    )
    batch, tokenizer = _first_batch(sft_workspace, tmp_path, load_demonstrations(str(path)))
    tokens = tokenizer.convert_ids_to_tokens(batch["input_ids"][0].tolist())
    labelled = [t for t, label in zip(tokens, batch["labels"][0].tolist()) if label != -100]
    assert tokens[:7] == ["<s>", "user", ":", "repeat", "cat", "answer", ":"]
    assert labelled == ["cat", "</s>"]


def test_packing_joins_several_demonstrations_into_one_row(sft_workspace, tmp_path):
    records = make_split(8, seed=5)
    batch, _ = _first_batch(sft_workspace, tmp_path, records, "--packing", "true")
    rows, width = batch["input_ids"].shape
    assert 1 < rows < len(records) and width <= 48  # 8 short demonstrations fit in fewer rows of 48 tokens
    # Each packed demonstration restarts its positions, so attention does not cross into its neighbour.
    assert int((batch["position_ids"] == 0).sum()) == len(records)
    assert "attention_mask" not in batch  # which is what lets transformers read the boundaries from positions


def test_packed_rows_give_the_loss_of_trls_flattened_batch(sft_workspace, tmp_path):
    """Without flash attention the stage keeps packed rows as rows (rlhf.sft.packing); the loss must be the
    one TRL's flattened, padding-free batch gives, where attention is confined to each demonstration."""
    import datasets
    import torch
    from trl import SFTTrainer
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from rlhf.adaptation.checkpoint import load_adapted
    from rlhf.config import parse_config
    from rlhf.models import load_tokenizer
    from rlhf.sft.packing import PackedRowsCollator
    from rlhf.stages.sft import SFTStageConfig

    records = make_split(24, seed=6)
    config = parse_config(
        SFTStageConfig,
        ["--output_dir", str(tmp_path / "p"), "--max_length", "48", "--packing", "true", "--report_to", "none"],
    )
    tokenizer = load_tokenizer(str(sft_workspace / "base"))
    model = load_adapted(str(sft_workspace / "base"), task="causal_lm", is_trainable=True)
    trainer = SFTTrainer(
        model=model, args=config, processing_class=tokenizer, train_dataset=datasets.Dataset.from_list(records)
    )
    examples = [trainer.train_dataset[i] for i in range(len(trainer.train_dataset))]
    assert sum(len(e["seq_lengths"]) for e in examples) == len(records) > len(examples)

    flattened = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id, padding_free=True)(examples)
    rows = PackedRowsCollator(tokenizer.pad_token_id)(examples)
    assert flattened["input_ids"].shape[0] == 1 and rows["input_ids"].shape[0] == len(examples)
    assert int((flattened["labels"] != -100).sum()) == int((rows["labels"] != -100).sum())
    with torch.no_grad():
        flat_loss = model(**flattened).loss
        row_loss = model(**rows).loss
    torch.testing.assert_close(row_loss, flat_loss, rtol=1e-5, atol=1e-6)


ADAPTATIONS = {
    "lora": ["--lora_r", "4"],
    "bitfit": [],
    "adapter": ["--adapter_bottleneck", "8"],
    "ia3": [],
    "prompt_tuning": ["--num_virtual_tokens", "4"],
    "prefix_tuning": ["--num_virtual_tokens", "4"],
}


def _changed_tensors(saved: Path, base: Path) -> set[str]:
    import torch
    from safetensors.torch import load_file

    before, after = load_file(base / "model.safetensors"), load_file(saved / "model.safetensors")
    assert after.keys() == before.keys()
    return {name for name in before if not torch.equal(before[name], after[name])}


def _trained_only_its_parameters(method: str, saved: Path, base: Path) -> bool:
    """What the saved directory shows of which parameters moved: the method's own, and nothing else."""
    from safetensors.torch import load_file

    if method == "bitfit":  # a plain model in which only biases moved
        changed = _changed_tensors(saved, base)
        return bool(changed) and all(name.endswith(".bias") for name in changed)
    if method == "lora":  # merged on save: only the adapted linear layers' weights moved
        changed = _changed_tensors(saved, base)
        return bool(changed) and all(name.endswith("_proj.weight") for name in changed)
    if method == "adapter":  # the base saved untouched, the adapters beside it
        adapters = load_file(saved / "rlhf_adapters.safetensors")
        return not _changed_tensors(saved, base) and bool(adapters)
    # peft's own format: only the method's tensors are saved, the base is named by path
    key = {"ia3": "ia3_l", "prompt_tuning": "prompt_embeddings", "prefix_tuning": "prompt_embeddings"}[method]
    saved_names = list(load_file(saved / "adapter_model.safetensors"))
    return not (saved / "model.safetensors").exists() and bool(saved_names) and all(key in n for n in saved_names)


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(ADAPTATIONS))
def test_each_adaptation_method_trains_only_its_parameters_through_the_stage(sft_workspace, tmp_path, method):
    from rlhf.adaptation.checkpoint import load_adapted
    from rlhf.stages.sft import main

    main(
        _sft_args(
            sft_workspace,
            tmp_path,
            "--adaptation_method",
            method,
            *ADAPTATIONS[method],
            "--max_steps",
            "4",
            "--learning_rate",
            "1e-2",
        )
    )
    entry = Registry(tmp_path / "registry").get("sft")
    assert 0 < entry.metrics["trainable_params"] < entry.metrics["total_params"] / 2
    assert entry.metrics["eval_loss_after"] < entry.metrics["eval_loss_before"]
    assert entry.config["adaptation_method"] == method
    assert _trained_only_its_parameters(method, Path(entry.path), sft_workspace / "base")
    load_adapted(entry.path, task="causal_lm")  # the saved directory loads as the method saved it


@pytest.mark.slow
def test_csv_demonstrations_and_a_datasets_directory_train_through_the_stage(sft_workspace, tmp_path):
    import csv

    import datasets

    from rlhf.stages.sft import main

    train_csv = tmp_path / "train.csv"
    with open(train_csv, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["prompt", "completion"])
        writer.writeheader()
        writer.writerows(make_split(128, seed=1))
    eval_dir = tmp_path / "eval_dataset"
    datasets.Dataset.from_list(make_split(32, seed=2)).save_to_disk(str(eval_dir))

    main(
        _sft_args(
            sft_workspace, tmp_path, "--train_file", str(train_csv), "--eval_file", str(eval_dir), "--max_steps", "8"
        )
    )
    entry = Registry(tmp_path / "registry").get("sft")
    assert entry.data_fingerprint == fingerprint_files([train_csv])
    assert entry.metrics["eval_loss_after"] < entry.metrics["eval_loss_before"]


@pytest.mark.slow
def test_resume_continues_a_killed_run_from_its_last_checkpoint(sft_workspace, tmp_path):
    from rlhf.stages.sft import main

    common = ["--save_strategy", "steps", "--save_steps", "4", "--logging_steps", "1", "--eval_file", ""]
    main(_sft_args(sft_workspace, tmp_path, *common, "--max_steps", "4", "--register_as", "interrupted"))
    assert (tmp_path / "run" / "checkpoint-4").is_dir()

    main(_sft_args(sft_workspace, tmp_path, *common, "--max_steps", "8", "--resume", "true"))
    history = [json.loads(line) for line in (tmp_path / "run" / "log_history.jsonl").read_text().splitlines()]
    steps = [row["step"] for row in history if "loss" in row]
    assert steps == list(range(1, 9))  # steps 1-4 restored from the checkpoint, 5-8 trained after it
    state = json.loads((tmp_path / "run" / "checkpoint-8" / "trainer_state.json").read_text())
    assert state["global_step"] == 8


def _stage_error(capsys, argv) -> str:
    from rlhf.stages.sft import main

    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


@pytest.mark.parametrize(
    "case, expected",
    [
        ("missing file", ["nope.jsonl", "no such file"]),
        ("misnamed column", ["bad.jsonl", "record 2", "'prompt'", "missing"]),
        ("empty data set", ["bad.jsonl", "empty"]),
        ("nothing fits", ["bad.jsonl", "none of the 1 demonstrations fits max_length 48"]),
        ("missing model", ["no/such/model", "neither a registry entry"]),
        ("unknown key", ["learning_rat"]),
        ("wrong type", ["learning_rate", "fast"]),
    ],
)
def test_bad_input_is_one_line_naming_where_and_leaves_the_registry_untouched(
    sft_workspace, tmp_path, capsys, case, expected
):
    bad = tmp_path / "bad.jsonl"
    args = _sft_args(sft_workspace, tmp_path)
    if case == "missing file":
        args += ["--train_file", str(tmp_path / "nope.jsonl")]
    elif case == "misnamed column":
        _write_jsonl(bad, [{"prompt": "sort cat answer :", "completion": " cat"}, {"question": "x", "completion": "y"}])
        args += ["--train_file", str(bad)]
    elif case == "empty data set":
        bad.write_text("")
        args += ["--train_file", str(bad)]
    elif case == "nothing fits":
        _write_jsonl(bad, [{"prompt": " ".join(["cat"] * 60), "completion": " cat"}])
        args += ["--train_file", str(bad)]
    elif case == "missing model":
        args += ["--model_name_or_path", "./no/such/model"]
    elif case == "unknown key":
        args += ["--learning_rat", "1e-3"]
    else:
        args += ["--learning_rate", "fast"]
    message = _stage_error(capsys, args)
    for fragment in expected:
        assert fragment in message, message
    assert Registry(tmp_path / "registry").entries() == []
    assert not (tmp_path / "registry" / "models").exists() or not any((tmp_path / "registry" / "models").rglob("*"))


def test_the_command_line_reports_a_yaml_typo_without_a_traceback(sft_workspace, tmp_path):
    config = tmp_path / "sft.yaml"
    config.write_text(f"model_name_or_path: {sft_workspace / 'base'}\nnum_train_epoch: 3\n")
    result = subprocess.run(
        [sys.executable, "-m", "rlhf.stages.sft", "--config", str(config)], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "num_train_epoch" in result.stderr and str(config) in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_sft_under_two_process_zero3_trains_registers_once_and_saves_whole_weights(sft_workspace, tmp_path):
    import torch
    from safetensors.torch import load_file

    from rlhf.adaptation.checkpoint import load_adapted

    deepspeed = Path(sys.executable).parent / "deepspeed"
    result = subprocess.run(
        [
            str(deepspeed),
            "--num_gpus",
            "2",
            "--master_port",
            str(free_port()),
            "--module",
            "rlhf.stages.sft",
            *_sft_args(
                sft_workspace,
                tmp_path,
                "--max_steps",
                "16",
                "--per_device_train_batch_size",
                "8",
                "--gold_scorer",
                "demo",
                "--gold_eval_prompts",
                "4",
            ),
            "--deepspeed",
            "deepspeed_configs/zero3.json",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    entries = Registry(tmp_path / "registry").entries()
    assert [e.reference for e in entries] == ["sft@1"]  # only rank 0 registered
    metrics = entries[0].metrics
    assert metrics["eval_loss_after"] < metrics["eval_loss_before"]
    assert "gold_score_before" in metrics and "gold_score_after" in metrics
    saved = load_file(Path(entries[0].path) / "model.safetensors")
    base = load_file(sft_workspace / "base" / "model.safetensors")
    assert saved.keys() == base.keys()
    assert all(saved[name].shape == base[name].shape for name in base)  # whole tensors, not ZeRO-3 partitions
    assert any(not torch.equal(saved[name], base[name]) for name in base)  # and trained
    load_adapted(entries[0].path, task="causal_lm")


@pytest.mark.slow
@pytest.mark.parametrize("failing_rank", [0, 1])
def test_a_full_disk_on_one_of_two_zero3_ranks_is_one_line_and_the_run_resumes(sft_workspace, tmp_path, failing_rank):
    deepspeed = Path(sys.executable).parent / "deepspeed"
    command = [
        str(deepspeed),
        "--num_gpus",
        "2",
        "--master_port",
        str(free_port()),
        "--module",
        "rlhf.stages.sft",
        *_sft_args(
            sft_workspace,
            tmp_path,
            "--max_steps",
            "6",
            "--per_device_train_batch_size",
            "8",
            "--save_strategy",
            "steps",
            "--save_steps",
            "2",
            "--resume",
            "true",
        ),
        "--deepspeed",
        "deepspeed_configs/zero3.json",
    ]
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    # One rank's ZeRO-3 optimiser shard of checkpoint-4 fills the disk while the other is still to write its own.
    full_disk_env, marker = full_disk_hook.install(
        tmp_path,
        env,
        inside="checkpoint-4",
        failing=f"zero_pp_rank_{failing_rank}_mp_rank_00_optim",
        watching=f"zero_pp_rank_{1 - failing_rank}_mp_rank_00_optim",
    )
    # No timeout: were rank 0 left waiting at a barrier, this would hang, and that is the failure it guards.
    failed = subprocess.run(command, capture_output=True, text=True, env=full_disk_env)
    output = failed.stdout + failed.stderr
    assert failed.returncode == 2, output[-4000:]
    run_dir = tmp_path / "run"
    errors = [line for line in output.splitlines() if "error: " in line]
    assert errors and all(f"no space left on device writing {run_dir / 'checkpoint-4'}" in line for line in errors), (
        errors
    )
    assert f"the last whole checkpoint is {run_dir / 'checkpoint-2'}" in errors[0]
    assert f"left the partial {run_dir / 'checkpoint-4'}, as other ranks" in errors[0]
    assert not marker.exists()  # nothing was removed under the other rank's write
    assert Registry(tmp_path / "registry").entries() == []

    resumed = subprocess.run(command, capture_output=True, text=True, env=env)
    output = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, output[-4000:]
    assert "skipping damaged checkpoint(s)" in output and f"resuming from {run_dir / 'checkpoint-2'}" in output
    assert [entry.reference for entry in Registry(tmp_path / "registry").entries()] == ["sft@1"]
    trained = json.loads((run_dir / "checkpoint-6" / "trainer_state.json").read_text())
    assert trained["global_step"] == 6

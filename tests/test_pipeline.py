"""The one-command pipeline: what it decides to run, and the whole demo on the smallest settings, re-run, resumed,
paused for people and fed their labels."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rlhf.errors import ConfigError
from rlhf.pipeline import PipelineConfig, plan, stage_key
from rlhf.registry import Registry


def test_plan_runs_fresh_skips_done_resumes_interrupted(tmp_path):
    registry = Registry(tmp_path / "registry")
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text("{}")
    entry = registry.register("sft", "sft", model)
    assert plan({}, "sft", "k1", registry) == "fresh"
    assert plan({"sft": {"key": "k1", "status": "done", "reference": entry.reference}}, "sft", "k1", registry) == "skip"
    assert plan({"sft": {"key": "k1", "status": "running"}}, "sft", "k1", registry) == "resume"
    # Other inputs or config: the old run, finished or not, is not this one.
    assert plan({"sft": {"key": "k0", "status": "done", "reference": "sft@1"}}, "sft", "k1", registry) == "fresh"
    assert plan({"sft": {"key": "k0", "status": "running"}}, "sft", "k1", registry) == "fresh"
    # Done, but its model is gone from the registry: run it again.
    assert plan({"sft": {"key": "k1", "status": "done", "reference": "sft@7"}}, "sft", "k1", registry) == "fresh"


def test_stage_key_follows_config_text_and_data_content(tmp_path):
    config, data = tmp_path / "sft.yaml", tmp_path / "d.jsonl"
    config.write_text("learning_rate: 1.0e-3\n")
    data.write_text('{"prompt": "a", "completion": "b"}\n')
    key = stage_key("sft", config, {}, {}, [data])
    assert key == stage_key("sft", config, {}, {}, [data])
    assert key != stage_key("sft", config, {"max_steps": 3}, {}, [data])
    assert key != stage_key("sft", config, {}, {"model_name_or_path": "sft@2"}, [data])
    data.write_text('{"prompt": "a", "completion": "c"}\n')
    assert key != stage_key("sft", config, {}, {}, [data])


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"labels": "crowd"}, "labels must be one of"),
        ({"labels": "import"}, "needs labels_file"),
        ({"launcher": "torchrun"}, "launcher must be one of"),
        ({"ppo_overrides": "[1, 2]"}, "ppo_overrides must be a mapping"),
        ({"sft_overrides": "{a: &x [1, 2], b: [*x, *x]}"}, r"sft_overrides: line 1: YAML aliases \(\*x\) are refused"),
        ({"label_overlap": 1.5}, "label_overlap must be between 0 and 1"),
        ({"best_of_n_max": -1}, "best_of_n_max must be >= 0"),
    ],
)
def test_bad_pipeline_settings_fail_before_anything_runs(settings, message):
    with pytest.raises(ConfigError, match=message):
        PipelineConfig(**settings)


def _yaml(path: Path, settings: dict) -> str:
    path.write_text(yaml.safe_dump(settings))
    return str(path)


@pytest.fixture(scope="module")
def smallest(tmp_path_factory):
    """Configs for the whole pipeline on the smallest demo: a few steps of each stage."""
    root = tmp_path_factory.mktemp("pipeline")
    demo = root / "demo"
    data = demo / "data"
    configs = {
        "sft_config": _yaml(
            root / "sft.yaml",
            {
                "model_name_or_path": str(demo / "base_model"),
                "train_file": str(data / "sft_train.jsonl"),
                "eval_file": str(data / "sft_eval.jsonl"),
                "max_length": 48,
                "max_steps": 6,
                "per_device_train_batch_size": 16,
                "learning_rate": 3e-3,
                "eval_strategy": "no",
                "save_strategy": "no",
                "report_to": "none",
                "gold_scorer": "demo",
                "gold_eval_prompts": 4,
            },
        ),
        "rm_config": _yaml(
            root / "rm.yaml",
            {
                "max_length": 48,
                "num_train_epochs": 1,
                "per_device_train_batch_size": 4,
                "eval_fraction": 0.25,
                "eval_strategy": "no",
                "save_strategy": "no",
                "report_to": "none",
                "gold_scorer": "demo",
            },
        ),
        "ppo_config": _yaml(
            root / "ppo.yaml",
            {
                "prompts_file": str(data / "prompts_train.jsonl"),
                "eval_prompts_file": str(data / "prompts_eval.jsonl"),
                "eval_prompts": 4,
                "max_steps": 2,
                "save_steps": 1,
                "rollout_batch_size": 8,
                "minibatch_size": 4,
                "ppo_epochs": 1,
                "max_new_tokens": 8,
                "gold_scorer": "demo",
                "report_to": [],
                "disable_tqdm": True,
                "eval_steps": 1,
                "eval_steps_prompts": 4,
                **{
                    f"{model}_deepspeed": "deepspeed_configs/zero0.json"
                    for model in ("actor", "critic", "reference", "reward")
                },
            },
        ),
    }
    pipeline = _yaml(
        root / "pipeline.yaml",
        {
            "run_dir": str(root / "run"),
            "prepare_demo": str(demo),
            "demo_scale": 0.02,
            "demo_hidden_size": 32,
            "label_prompts": str(data / "prompts_train.jsonl"),
            "label_k": 3,
            "label_max_new_tokens": 8,
            "best_of_n_max": 4,
            "best_of_n_prompts": 4,
            **configs,
        },
    )
    return root, pipeline


def _pipeline(config: str, *overrides: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "rlhf.pipeline", "--config", config, *overrides], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return "\n".join(line for line in result.stdout.splitlines() if line.startswith("[pipeline]"))


@pytest.mark.slow
def test_pipeline_runs_every_stage_then_skips_resumes_and_reruns_only_what_changed(smallest):
    root, config = smallest
    run = root / "run"
    first = _pipeline(config)
    registry = Registry(run / "registry")
    assert [e.reference for e in registry.entries()] == ["ppo@1", "rm@1", "sft@1"] or sorted(
        e.reference for e in registry.entries()
    ) == ["ppo@1", "rm@1", "sft@1"]
    assert registry.get("rm@1").parents == ["sft@1"]
    assert registry.get("ppo@1").parents == ["sft@1", "rm@1"]
    assert (run / "labels" / "rankings.jsonl").is_file() and (run / "labels" / "tasks.config.xml").is_file()
    report = run / "report" / "report.md"
    assert f"Report: {report}" in first and "Win rate of PPO over SFT" in report.read_text()
    # Best-of-N after PPO, and PPO's held-out points (steps 0, 1, 2), side by side at matched KL.
    assert json.loads((run / "evaluation" / "best_of_n.json").read_text())["samples_per_prompt"] == 4
    assert "![Best-of-N vs PPO](best_of_n_vs_ppo.png)" in report.read_text()
    assert "| 2 |" in report.read_text().split("### At each PPO evaluation's KL")[1]
    assert (run / "resolved_config.yaml").is_file()

    # Nothing changed: every stage is skipped and nothing new is registered.
    again = _pipeline(config)
    for stage in ("sft", "labels", "rm", "ppo", "best_of_n"):
        assert f"{stage}: unchanged since its last run, skipped" in again
    assert len(registry.entries()) == 3

    # The pipeline was killed after PPO registered its model but before it recorded that: the entry is reused.
    state = json.loads((run / "pipeline_state.json").read_text())
    state["ppo"]["status"] = "running"
    (run / "pipeline_state.json").write_text(json.dumps(state))
    reused = _pipeline(config)
    assert "ppo: the interrupted run had already registered ppo@1; reusing it" in reused
    assert len(registry.entries()) == 3

    # PPO was killed mid-run, before registering: the next run resumes it from its checkpoint, and leaves SFT and
    # RM alone.
    (run / "pipeline_state.json").write_text(json.dumps(state))
    for name in ("registered.json", "registering.json"):
        (run / "ppo" / name).unlink()
    resumed = _pipeline(config)
    assert "ppo: resuming the interrupted run" in resumed and "sft: unchanged" in resumed and "rm: unchanged" in resumed
    assert registry.get("ppo").reference == "ppo@2"

    # A changed PPO setting reruns PPO from scratch, and only PPO.
    changed = _pipeline(config, "--ppo_overrides", '{"kl_coef": 0.2}')
    assert "ppo: running" in changed and "rm: unchanged" in changed
    assert len(list(run.glob("ppo.old-*"))) == 1  # the previous PPO run is kept aside, not deleted
    assert registry.get("ppo").config["kl_coef"] == 0.2


@pytest.mark.slow
def test_pipeline_pauses_for_people_then_trains_on_their_imported_labels(smallest, tmp_path):
    root, config = smallest
    run = root / "run"
    paused = _pipeline(config, "--labels", "pause")
    tasks = run / "labels" / "tasks.json"
    assert "paused for labeling" in paused and f"Import {tasks}" in paused and "--labels import" in paused
    assert json.loads(tasks.read_text())[0]["data"]["items"]

    # People rank in Label Studio (here the demo's labelers) and the export comes back.
    export = tmp_path / "export.json"
    subprocess.run(
        [sys.executable, "-m", "rlhf.demo.annotate", str(tasks), "-o", str(export), "--seed", "3"],
        check=True,
        capture_output=True,
    )
    imported = _pipeline(config, "--labels", "import", "--labels_file", str(export), "--report", "false")
    assert "sft: unchanged" in imported and "labels: running" in imported and "rm: running" in imported
    registry = Registry(run / "registry")
    newest_rm = registry.get("rm")
    assert newest_rm.data_fingerprint != registry.get("rm@1").data_fingerprint  # trained on the imported labels
    assert registry.get("ppo").parents == ["sft@1", newest_rm.reference]


def test_each_stage_starts_with_the_launcher_and_its_own_process_layout(tmp_path):
    from rlhf.pipeline import Pipeline

    plain = Pipeline(PipelineConfig(run_dir=str(tmp_path)))
    assert plain.stage_command("sft") == [sys.executable, "-m", "rlhf.stages.sft"]
    launched = Pipeline(
        PipelineConfig(
            run_dir=str(tmp_path),
            launcher="deepspeed",
            launcher_args="--num_gpus 2",
            ppo_launcher_args="--hostfile 'my hosts' --no_ssh --node_rank 0",
        )
    )
    runner = [sys.executable, "-m", "deepspeed.launcher.runner"]
    assert launched.stage_command("rm") == [*runner, "--num_gpus", "2", "--module", "rlhf.stages.rm"]
    assert launched.stage_command("ppo") == [
        *runner,
        "--hostfile",
        "my hosts",
        "--no_ssh",
        "--node_rank",
        "0",
        "--module",
        "rlhf.stages.ppo",
    ]


def test_a_failing_step_is_named_with_its_own_error_line_and_its_log_kept(tmp_path, capsys):
    from rlhf.errors import RLHFError
    from rlhf.pipeline import Pipeline

    pipeline = Pipeline(PipelineConfig(run_dir=str(tmp_path / "run")))
    step = "import sys; print('training...'); print('error: data.jsonl: record 3: field prompt: missing'); sys.exit(2)"
    with pytest.raises(RLHFError) as failure:
        pipeline._run([sys.executable, "-c", step], "sft")
    log = tmp_path / "run" / "logs" / "sft.log"
    assert "error: data.jsonl: record 3: field prompt: missing" in str(failure.value) and str(log) in str(failure.value)
    assert "training..." in log.read_text() and "training..." in capsys.readouterr().out  # shown and kept


def test_labels_import_passes_its_importer_options_and_reruns_when_the_labeling_config_changes(tmp_path):
    from rlhf.pipeline import Pipeline

    export, labeling_config = tmp_path / "export.json", tmp_path / "labeling_config.xml"
    export.write_text("[]")
    labeling_config.write_text("<View><Ranker name='rank' toName='answers'/></View>")
    settings = PipelineConfig(
        run_dir=str(tmp_path / "run"),
        labels="import",
        labels_file=str(export),
        labels_options=f"{{config: {labeling_config}, bucket_order: 'best,worst'}}",
    )
    commands = []

    def record(command, stage):
        commands.append(command)
        Path(command[command.index("-o") + 1]).parent.mkdir(parents=True, exist_ok=True)
        Path(command[command.index("-o") + 1]).write_text("")

    pipeline = Pipeline(settings)
    pipeline._run = record
    pipeline.labels("sft@1")
    assert commands[0][-4:] == ["--option", f"config={labeling_config}", "--option", "bucket_order=best,worst"]

    pipeline.labels("sft@1")
    assert len(commands) == 1  # unchanged: skipped
    labeling_config.write_text("<View><Ranker name='rank' toName='answers'/><Bucket name='best'/></View>")
    pipeline.labels("sft@1")
    assert len(commands) == 2  # the labeling config's content is an input of the import


def test_labels_options_that_are_not_a_mapping_fail_at_once():
    with pytest.raises(ConfigError, match="labels_options must be a mapping"):
        PipelineConfig(labels_options="config=x.xml")


def test_a_demo_prepared_elsewhere_is_what_every_stage_reads(tmp_path, monkeypatch):
    """The stage configs name runs/demo/...; with prepare_demo set to another directory, the stages read that one."""
    from rlhf.pipeline import Pipeline

    demo = tmp_path / "elsewhere"
    pipeline = Pipeline(PipelineConfig(run_dir=str(tmp_path / "run"), prepare_demo=str(demo)))
    started = {}
    monkeypatch.setattr(
        pipeline,
        "_trained_stage",
        lambda stage, config_file, overrides, inputs, data: started.setdefault(stage, (inputs, data)),
    )
    pipeline.sft()
    pipeline.ppo("sft@1", "rm@1")
    sft_inputs, sft_data = started["sft"]
    assert sft_inputs["model_name_or_path"] == str(demo / "base_model")
    assert sft_data == [demo / "data" / "sft_train.jsonl"]
    assert started["ppo"][0]["prompts_file"] == str(demo / "data" / "prompts_train.jsonl")
    assert pipeline.label_prompts == str(demo / "data" / "prompts_train.jsonl")
    # Without prepare_demo, the stage configs decide.
    assert Pipeline(PipelineConfig(run_dir=str(tmp_path / "run2"))).demo_inputs("sft") == {}


def test_simulated_labels_pass_the_overlap_and_rerun_when_it_changes(tmp_path):
    from rlhf.pipeline import Pipeline

    commands = []

    def record(command, stage):
        commands.append(command)
        output = Path(command[command.index("-o") + 1])
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text("")

    for overlap, runs in ((0.2, 1), (0.2, 1), (0.5, 2)):
        pipeline = Pipeline(
            PipelineConfig(run_dir=str(tmp_path / "run"), label_overlap=overlap, label_prompts="prompts.jsonl")
        )
        pipeline._run = record
        pipeline.labels("sft@1")
        annotate = [c for c in commands if "rlhf.demo.annotate" in c]
        assert len(annotate) == runs and annotate[-1][-2:] == ["--overlap", str(overlap)]


def test_best_of_n_runs_after_ppo_on_its_settings_and_reruns_when_a_model_changes(tmp_path):
    from rlhf.pipeline import Pipeline, best_of_n_sizes

    assert best_of_n_sizes(16) == [1, 2, 4, 8, 16] and best_of_n_sizes(12) == [1, 2, 4, 8, 12]
    assert best_of_n_sizes(1) == [1]
    commands = []

    def record(command, stage):
        commands.append(command)
        output = tmp_path / "run" / "evaluation" / "best_of_n.json"
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text("{}")

    pipeline = Pipeline(PipelineConfig(run_dir=str(tmp_path / "run"), best_of_n_max=8, best_of_n_prompts=10))
    pipeline._run = record
    pipeline.best_of_n("sft@1", "rm@1", "ppo@1")
    command = commands[0]
    assert command[1:5] == ["-m", "rlhf.evaluate", "best-of-n", "--run_dir"]
    assert command[command.index("--policy") + 1] == "sft@1" and command[command.index("--reward_model") + 1] == "rm@1"
    assert command[command.index("--limit") + 1] == "10" and command[-5:] == ["--n", "1", "2", "4", "8"]
    pipeline.best_of_n("sft@1", "rm@1", "ppo@1")
    assert len(commands) == 1  # unchanged: skipped
    pipeline.best_of_n("sft@1", "rm@1", "ppo@2")  # PPO's settings may have changed
    assert len(commands) == 2
    (tmp_path / "run" / "evaluation" / "best_of_n.json").unlink()
    pipeline.best_of_n("sft@1", "rm@1", "ppo@2")  # its output is gone
    assert len(commands) == 3
    Pipeline(PipelineConfig(run_dir=str(tmp_path / "off"))).best_of_n("sft@1", "rm@1", "ppo@1")  # 0: off

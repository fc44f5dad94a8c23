"""The whole InstructGPT pipeline in one command: SFT, labeling, reward model, PPO, best-of-N, report.

    python -m rlhf.pipeline --config configs/demo.yaml

Each stage runs as its own process (`python -m rlhf.stages.X`, or under the `deepspeed` launcher), reads its own
config file, and hands its model to the next through the registry by exact reference (`sft@3`), so that a later
stage never picks up a model it was not planned with. The pipeline remembers, in `<run_dir>/pipeline_state.json`,
what each stage was built from: a re-run skips a stage whose inputs and config are unchanged and whose registry
entry still exists, resumes one that was interrupted, and starts afresh one whose inputs changed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlhf import run_lock
from rlhf.config import check_numbers, load_yaml, parse_config, parse_yaml, settings_to_argv, write_resolved_config
from rlhf.demo.arguments import DemoArguments
from rlhf.demo.prepare import demo_inputs, demo_settings, is_prepared
from rlhf.errors import ConfigError, RLHFError, exits_cleanly
from rlhf.io import atomic_write_json, disk_full_is_one_line
from rlhf.registry import Registry, fingerprint_files
from rlhf.report import write_report
from rlhf.run_files import best_of_n_path, registered_reference

LABEL_MODES = ("simulated", "import", "pause")
LAUNCHERS = ("python", "deepspeed")


@dataclass
class PipelineConfig(DemoArguments):
    """What to run and where. Each stage's own settings stay in its own config file; the demo's in DemoArguments."""

    run_dir: str = field(
        default="runs/pipeline", metadata={"help": "Every stage's outputs, the labels and the report."}
    )
    registry_dir: str = field(default="", metadata={"help": "Model registry. Empty: <run_dir>/registry."})
    sft_config: str = field(default="configs/sft.yaml", metadata={"help": "Stage 1's config file."})
    rm_config: str = field(default="configs/rm.yaml", metadata={"help": "Stage 2's config file."})
    ppo_config: str = field(default="configs/ppo.yaml", metadata={"help": "Stage 3's config file."})
    sft_overrides: str = field(default="", metadata={"help": "Stage 1 settings over its file, as a JSON/YAML mapping."})
    rm_overrides: str = field(default="", metadata={"help": "Stage 2 settings over its file, as a JSON/YAML mapping."})
    ppo_overrides: str = field(default="", metadata={"help": "Stage 3 settings over its file, as a JSON/YAML mapping."})
    labels: str = field(
        default="simulated",
        metadata={
            "help": "'simulated': the demo's labelers rank the samples; "
            "'import': read labels_file; 'pause': write the "
            "labeling tasks and stop until the labels are imported."
        },
    )
    labels_file: str = field(default="", metadata={"help": "With labels: import, the labeling tool's export."})
    labels_format: str = field(
        default="label-studio",
        metadata={"help": "Format of labels_file, or of the tasks written for labeling (label-studio, argilla)."},
    )
    labels_options: str = field(
        default="",
        metadata={
            "help": "Importer options for labels: import, as a mapping "
            "(e.g. {config: labeling_config.xml}): each is an "
            "--option KEY=VALUE of `rlhf.labels import`."
        },
    )
    label_prompts: str = field(
        default="",
        metadata={"help": "With labels: simulated or pause, the prompts whose sampled responses are ranked."},
    )
    label_k: int = field(
        default=4, metadata={"help": "Responses sampled per prompt for ranking (InstructGPT: 4 to 9)."}
    )
    label_limit: int = field(default=0, metadata={"help": "Use only the first N prompts for labeling (0: all)."})
    label_max_new_tokens: int = field(default=24, metadata={"help": "Length cap of the sampled responses."})
    label_batch_size: int = field(default=128, metadata={"help": "Responses sampled at once for labeling."})
    launcher: str = field(default="python", metadata={"help": "'python' (one process) or 'deepspeed'."})
    launcher_args: str = field(
        default="",
        metadata={"help": "Arguments for the deepspeed launcher, e.g. '--num_gpus 8' or '--hostfile hostfile'."},
    )
    sft_launcher_args: str = field(
        default="", metadata={"help": "Launcher arguments for SFT alone (default: launcher_args)."}
    )
    rm_launcher_args: str = field(
        default="", metadata={"help": "Launcher arguments for the RM alone (default: launcher_args)."}
    )
    ppo_launcher_args: str = field(
        default="", metadata={"help": "Launcher arguments for PPO alone (default: launcher_args)."}
    )
    best_of_n_max: int = field(
        default=0,
        metadata={
            "help": "After PPO, best-of-N of the SFT policy under the "
            "reward model for N = 1, 2, 4, ... up to this, on PPO's "
            "held-out prompts with PPO's sampling settings (python -m "
            "rlhf.evaluate best-of-n), for the report's comparison at "
            "matched KL. 0: off."
        },
    )
    best_of_n_prompts: int = field(
        default=32, metadata={"help": "Held-out prompts best-of-N samples best_of_n_max responses for."}
    )
    report: bool = field(default=True, metadata={"help": "Write the report (plots + summary) at the end."})

    def __post_init__(self):
        super().__post_init__()
        check_numbers(self)
        if self.labels not in LABEL_MODES:
            raise ConfigError(f"labels must be one of {LABEL_MODES}, got '{self.labels}'")
        if self.launcher not in LAUNCHERS:
            raise ConfigError(f"launcher must be one of {LAUNCHERS}, got '{self.launcher}'")
        if self.labels == "import" and not self.labels_file:
            raise ConfigError("labels: import needs labels_file (the labeling tool's export)")
        if self.best_of_n_max < 0 or self.best_of_n_prompts < 1:
            raise ConfigError(
                f"best_of_n_max must be >= 0 (0: off) and best_of_n_prompts >= 1, got "
                f"{self.best_of_n_max} and {self.best_of_n_prompts}"
            )
        for name in ("sft_overrides", "rm_overrides", "ppo_overrides", "labels_options"):
            overrides_of(self, name)  # a malformed mapping fails now, not after an hour of SFT


def overrides_of(config: PipelineConfig, name: str) -> dict[str, Any]:
    text = getattr(config, name)
    if not text:
        return {}
    value = parse_yaml(text, name)
    if not isinstance(value, dict):
        raise ConfigError(f"{name} must be a mapping of config keys, got {text!r}")
    return value


# -- deciding what to run ------------------------------------------------------------------------------------------


def stage_key(*parts: Any) -> str:
    """What a stage was built from: its config file's text, its overrides, its input data and models."""

    def content(part: Any) -> Any:
        if isinstance(part, Path):  # a file or directory counts by what is in it, not by its name
            return fingerprint_files([part]) if part.exists() else str(part)
        if isinstance(part, (list, tuple)):
            return [content(item) for item in part]
        if isinstance(part, dict):
            return {key: content(value) for key, value in part.items()}
        return part

    return hashlib.sha256(json.dumps(content(list(parts)), sort_keys=True, default=str).encode()).hexdigest()[:16]


def plan(state: dict[str, Any], stage: str, key: str, registry: Registry | None) -> str:
    """'skip' (done from the same inputs, and its model is still registered), 'resume' (interrupted with the
    same inputs) or 'fresh' (never run, or its inputs changed)."""
    record = state.get(stage)
    if not record or record.get("key") != key:
        return "fresh"
    if record.get("status") == "done":
        reference = record.get("reference")
        if reference is None or (registry is not None and registry.has(reference)):
            return "skip"
        return "fresh"
    return "resume"


ATTEMPT_HEADER = "==== attempt"


class Pipeline:
    def __init__(self, config: PipelineConfig):
        self.config = config
        self.run_dir = Path(config.run_dir)
        self.registry = Registry(config.registry_dir or self.run_dir / "registry")
        self.state_file = self.run_dir / "pipeline_state.json"
        self.state: dict[str, Any] = json.loads(self.state_file.read_text()) if self.state_file.is_file() else {}
        self._stages_with_a_header: set[str] = set()  # stages whose current attempt already has its log header

    def _save_state(self) -> None:
        atomic_write_json(self.state_file, self.state)

    def _say(self, message: str) -> None:
        print(f"[pipeline] {message}", flush=True)

    def _run(self, command: list[str], stage: str) -> None:
        """Run one step, its output shown and kept in <run_dir>/logs/<stage>.log; a failure names its error line."""
        self._say(" ".join(command))
        log_path = self.run_dir / "logs" / f"{stage}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        error_lines: list[str] = []
        # Appended and line-buffered, with the child unbuffered too: a killed attempt's last lines are the ones
        # that say why, and the next attempt must not overwrite them. One header per attempt of a stage, however
        # many commands that attempt runs.
        with disk_full_is_one_line(log_path), open(log_path, "a", encoding="utf-8", buffering=1) as log:
            if stage not in self._stages_with_a_header:
                attempt = 1 + (
                    log_path.read_text(encoding="utf-8", errors="replace").count(ATTEMPT_HEADER)
                    if log_path.stat().st_size
                    else 0
                )
                log.write(f"{ATTEMPT_HEADER} {attempt}, started {time.strftime('%Y-%m-%dT%H:%M:%S%z')} ====\n")
                self._stages_with_a_header.add(stage)
            log.write(f"$ {' '.join(command)}\n")
            environment = {**os.environ, "RLHF_REGISTRY": str(self.registry.root), "PYTHONUNBUFFERED": "1"}
            process = subprocess.Popen(
                command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
            )
            # A scheduler stopping the pipeline stops the step as it would stop the stage itself: SIGTERM, on
            # which the stage saves a checkpoint that the next run resumes from.
            previous = signal.signal(signal.SIGTERM, lambda *_: process.terminate())
            try:
                for line in process.stdout:
                    sys.stdout.write(line)
                    log.write(line)
                    if line.startswith("error: "):
                        error_lines.append(line.strip())
                returncode = process.wait()
            except BaseException:  # Ctrl-C, or a full disk under the log: the step must not run on unwatched
                process.terminate()
                process.wait()
                raise
            finally:
                signal.signal(signal.SIGTERM, previous)
        if returncode != 0:
            said = error_lines[-1] if error_lines else f"exit code {returncode}"
            raise RLHFError(
                f"stage {stage} failed ({said}); its output is in {log_path}. Re-run the same command to resume it."
            )

    def stage_command(self, stage: str) -> list[str]:
        """How a stage starts: `python -m`, or the deepspeed launcher with that stage's process layout."""
        module = f"rlhf.stages.{stage}"
        if self.config.launcher == "deepspeed":
            arguments = getattr(self.config, f"{stage}_launcher_args") or self.config.launcher_args
            return [sys.executable, "-m", "deepspeed.launcher.runner", *shlex.split(arguments), "--module", module]
        return [sys.executable, "-m", module]

    def run_stage(self, stage: str, key: str, action) -> Any:
        """Run `action(fresh)` unless planned away; record the result. Returns the stage's registry reference."""
        decision = plan(self.state, stage, key, self.registry)
        if decision == "skip":
            self._say(
                f"{stage}: unchanged since its last run, skipped ({self.state[stage].get('reference') or 'done'})"
            )
            return self.state[stage].get("reference")
        self._say(f"{stage}: {'resuming the interrupted run' if decision == 'resume' else 'running'}")
        self._stages_with_a_header.discard(stage)
        self.state[stage] = {"key": key, "status": "running"}
        self._save_state()
        reference = action(decision == "fresh")
        self.state[stage] = {"key": key, "status": "done", "reference": reference}
        self._save_state()
        return reference

    def _trained_stage(
        self, stage: str, config_file: str, overrides: dict[str, Any], inputs: dict[str, Any], data: list[Path]
    ) -> str:
        output_dir = self.run_dir / stage
        # The process layout changes the global batch, so a stage run on other processes is another run.
        launch = self.stage_command(stage)[:-2]
        key = stage_key(stage, Path(config_file), overrides, inputs, data, launch[1:])

        def action(fresh: bool) -> str:
            already = None if fresh else registered_reference(output_dir, self.registry)
            if already and self.registry.has(already):
                # Killed after the stage registered but before the pipeline recorded it: training again would
                # register a second copy, and later stages would point at it.
                self._say(f"{stage}: the interrupted run had already registered {already}; reusing it")
                return already
            if fresh and output_dir.exists():
                # Checkpoints of other inputs must not be resumed into this run; the old run is kept aside, unless
                # a stage run by hand is writing there.
                aside = output_dir.with_name(f"{stage}.old-{time.strftime('%Y%m%d-%H%M%S')}")
                with run_lock.holding(output_dir, "run_dir"):
                    output_dir.rename(aside)
                self._say(f"{stage}: inputs changed; the previous run's directory is now {aside}")
            # The overrides merge into the file's mapping, so that `key: null` means the field's default in both.
            settings = {
                **load_yaml(config_file),
                **overrides,
                **inputs,
                "registry_dir": str(self.registry.root),
                "output_dir": str(output_dir),
                "resume": True,
            }
            self._run([*self.stage_command(stage), *settings_to_argv(settings)], stage)
            return registered_reference(output_dir, self.registry)

        return self.run_stage(stage, key, action)

    # -- the stages, in order -------------------------------------------------------------------------------------

    def prepare_demo(self) -> None:

        out = Path(self.config.prepare_demo)
        if is_prepared(out, demo_settings(scale=self.config.demo_scale, hidden_size=self.config.demo_hidden_size)):
            return
        written_before = (out / "base_model").exists()
        self._say(
            f"writing the demo model and data to {out}"
            + (" (what is there was written with other settings, or not to the end)" if written_before else "")
        )
        self._run(
            [
                sys.executable,
                "-m",
                "rlhf.demo.prepare",
                "--out",
                str(out),
                "--scale",
                str(self.config.demo_scale),
                "--hidden_size",
                str(self.config.demo_hidden_size),
            ],
            "prepare",
        )

    def demo_inputs(self, stage: str) -> dict[str, str]:
        """With prepare_demo, the settings that point `stage` at the demo written there, wherever that is."""
        if not self.config.prepare_demo:
            return {}

        return demo_inputs(self.config.prepare_demo)[stage]

    def sft(self) -> str:
        overrides = overrides_of(self.config, "sft_overrides")
        inputs = self.demo_inputs("sft")
        train = inputs.get("train_file") or self._setting(self.config.sft_config, overrides, "train_file")
        return self._trained_stage("sft", self.config.sft_config, overrides, inputs, [Path(train)] if train else [])

    def labels(self, sft_reference: str) -> Path | None:
        """The rankings file for the reward model, or None when the pipeline pauses for people to label."""
        labels_dir = self.run_dir / "labels"
        rankings = labels_dir / "rankings.jsonl"
        mode = self.config.labels
        source = Path(self.config.labels_file) if mode == "import" else Path(self.label_prompts)
        options = overrides_of(self.config, "labels_options")
        # A file named by an option (a labeling config) counts by its content, as the export does.
        option_parts = {key: Path(value) if Path(str(value)).is_file() else value for key, value in options.items()}
        # The overlap counts where the simulated labelers use it, and only away from its default, so that runs
        # labeled before it was a setting keep their labels.
        overlap = (
            [("label_overlap", self.config.label_overlap)]
            if (mode == "simulated" and self.config.label_overlap != PipelineConfig.label_overlap)
            else []
        )
        key = stage_key(
            "labels",
            mode,
            sft_reference,
            source,
            self.config.labels_format,
            self.config.label_k,
            self.config.label_limit,
            self.config.label_max_new_tokens,
            self.config.label_batch_size,
            *([option_parts] if options else []),
            *overlap,
        )
        if mode == "pause":
            tasks = labels_dir / "tasks.json"
            if self.state.get("labeling_tasks") != key or not tasks.is_file():  # people may be labeling these
                self._write_tasks(sft_reference, tasks)
                self.state["labeling_tasks"] = key
                self._save_state()
            return None
        if not rankings.is_file():
            self.state.pop("labels", None)  # its output is gone: nothing to skip to

        def action(fresh: bool) -> None:
            labels_dir.mkdir(parents=True, exist_ok=True)
            if mode == "import":
                option_flags = [flag for key, value in options.items() for flag in ("--option", f"{key}={value}")]
                self._run(
                    [
                        sys.executable,
                        "-m",
                        "rlhf.labels",
                        "import",
                        "--format",
                        self.config.labels_format,
                        str(source),
                        "-o",
                        str(rankings),
                        *option_flags,
                    ],
                    "labels",
                )
                return None
            tasks = self._write_tasks(sft_reference, labels_dir / "tasks.json")
            self._run(
                [
                    sys.executable,
                    "-m",
                    "rlhf.demo.annotate",
                    str(tasks),
                    "-o",
                    str(labels_dir / "export.json"),
                    "--overlap",
                    str(self.config.label_overlap),
                ],
                "labels",
            )
            self._run(
                [
                    sys.executable,
                    "-m",
                    "rlhf.labels",
                    "import",
                    "--format",
                    "label-studio",
                    str(labels_dir / "export.json"),
                    "-o",
                    str(rankings),
                ],
                "labels",
            )
            return None

        self.run_stage("labels", key, action)
        return rankings

    @property
    def label_prompts(self) -> str:
        prompts = self.demo_inputs("labels").get("label_prompts") or self.config.label_prompts
        if not prompts:
            raise ConfigError(f"labels: {self.config.labels} needs label_prompts (the prompts to sample responses to)")
        return prompts

    def _write_tasks(self, sft_reference: str, tasks: Path) -> Path:
        self._run(
            [
                sys.executable,
                "-m",
                "rlhf.labels",
                "export",
                "--policy",
                sft_reference,
                "--registry_dir",
                str(self.registry.root),
                "--prompts",
                self.label_prompts,
                "--k",
                str(self.config.label_k),
                "--limit",
                str(self.config.label_limit),
                "--max_new_tokens",
                str(self.config.label_max_new_tokens),
                "--batch_size",
                str(self.config.label_batch_size),
                "--format",
                self.config.labels_format,
                "-o",
                str(tasks),
            ],
            "labels",
        )
        return tasks

    def rm(self, sft_reference: str, rankings: Path) -> str:
        overrides = overrides_of(self.config, "rm_overrides")
        inputs = {"model_name_or_path": sft_reference, "train_file": str(rankings)}
        return self._trained_stage("rm", self.config.rm_config, overrides, inputs, [rankings])

    def ppo(self, sft_reference: str, rm_reference: str) -> str:
        overrides = overrides_of(self.config, "ppo_overrides")
        prompts = self._setting(self.config.ppo_config, overrides, "prompts_file")
        inputs = {
            "model_name_or_path": sft_reference,
            "critic_model": rm_reference,
            "reward_model": rm_reference,
            **self.demo_inputs("ppo"),
        }
        prompts = inputs.get("prompts_file") or prompts
        return self._trained_stage("ppo", self.config.ppo_config, overrides, inputs, [Path(prompts)] if prompts else [])

    def best_of_n(self, sft_reference: str, rm_reference: str, ppo_reference: str) -> None:
        """Best-of-N of the SFT policy under the reward model, on PPO's held-out prompts and sampling settings, into
        <run_dir>/evaluation/best_of_n.json; redone when any of the three models or its own settings change."""
        if not self.config.best_of_n_max:
            return
        sizes = best_of_n_sizes(self.config.best_of_n_max)
        key = stage_key("best_of_n", sft_reference, rm_reference, ppo_reference, sizes, self.config.best_of_n_prompts)
        if not best_of_n_path(self.run_dir).is_file():
            self.state.pop("best_of_n", None)  # its output is gone: nothing to skip to

        def action(fresh: bool) -> None:
            self._run(
                [
                    sys.executable,
                    "-m",
                    "rlhf.evaluate",
                    "best-of-n",
                    "--run_dir",
                    str(self.run_dir),
                    "--policy",
                    sft_reference,
                    "--reward_model",
                    rm_reference,
                    "--registry_dir",
                    str(self.registry.root),
                    "--limit",
                    str(self.config.best_of_n_prompts),
                    "--n",
                    *map(str, sizes),
                ],
                "best_of_n",
            )

        self.run_stage("best_of_n", key, action)

    @staticmethod
    def _setting(config_file: str, overrides: dict[str, Any], key: str) -> str:
        return str(overrides.get(key) or load_yaml(config_file).get(key) or "")


def best_of_n_sizes(largest: int) -> list[int]:
    """1, 2, 4, ... up to `largest`, and `largest` itself: 16 -> [1, 2, 4, 8, 16], 12 -> [1, 2, 4, 8, 12]."""
    sizes = [1 << power for power in range(largest.bit_length()) if 1 << power <= largest]
    return sizes + ([largest] if sizes[-1] != largest else [])


def run(config: PipelineConfig) -> int:
    # A second pipeline on the same run_dir (a job submitted twice, a requeue while the first still runs) would
    # train into the same stage directories and register twice.
    with run_lock.holding(config.run_dir, "run_dir"):
        return run_stages(config)


def run_stages(config: PipelineConfig) -> int:
    pipeline = Pipeline(config)
    write_resolved_config(config, pipeline.run_dir)
    if config.prepare_demo:
        pipeline.prepare_demo()

    sft_reference = pipeline.sft()
    rankings = pipeline.labels(sft_reference)
    if rankings is None:
        tasks = pipeline.run_dir / "labels" / "tasks.json"
        pipeline._say(
            f"paused for labeling. Import {tasks} (and the labeling config beside it) into "
            f"{'Label Studio' if config.labels_format == 'label-studio' else 'Argilla'}, have people rank the "
            f"responses, export the results, then run this command again with "
            f"--labels import --labels_file EXPORT --labels_format {config.labels_format}. "
            f"Finished stages will be skipped."
        )
        return 0
    rm_reference = pipeline.rm(sft_reference, rankings)
    ppo_reference = pipeline.ppo(sft_reference, rm_reference)
    pipeline.best_of_n(sft_reference, rm_reference, ppo_reference)

    if config.report:
        report = write_report(pipeline.run_dir, registry_dir=str(pipeline.registry.root))
        pipeline._say(f"done: {sft_reference} -> {rm_reference} -> {ppo_reference}. Report: {report}")
    else:
        pipeline._say(f"done: {sft_reference} -> {rm_reference} -> {ppo_reference}")
    return 0


@exits_cleanly(
    on_interrupt="the pipeline stopped; run the same command to resume (finished stages are skipped, "
    "the stopped one continues from its last checkpoint)"
)
def main(argv: list[str] | None = None) -> int:
    return run(parse_config(PipelineConfig, argv))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""The demo's files: written whole with a manifest, and written again when the pipeline asks for other settings."""

from __future__ import annotations

import json

import pytest

from rlhf.demo import prepare as demo_prepare
from rlhf.demo.prepare import MANIFEST, demo_settings, is_prepared
from rlhf.pipeline import Pipeline, PipelineConfig


def _write(out, scale=0.002, hidden_size=32):
    demo_prepare.main(["--out", str(out), "--scale", str(scale), "--hidden_size", str(hidden_size)])


def test_the_manifest_is_what_the_command_line_wrote_and_tells_other_settings_apart(tmp_path):
    _write(tmp_path / "demo")
    written = demo_settings(scale=0.002, hidden_size=32)
    assert is_prepared(tmp_path / "demo", written)
    assert json.loads((tmp_path / "demo" / MANIFEST).read_text())["sizes"] == written["sizes"]
    assert (
        len((tmp_path / "demo" / "data" / "prompts_train.jsonl").read_text().splitlines())
        == written["sizes"]["prompts_train"]
        == 24
    )  # 12000 x 0.002
    assert not is_prepared(tmp_path / "demo", demo_settings(scale=0.004, hidden_size=32))
    assert not is_prepared(tmp_path / "demo", demo_settings(scale=0.002, hidden_size=64))
    assert not is_prepared(tmp_path / "missing", written)


def test_a_rewrite_killed_before_its_end_is_not_taken_for_a_whole_demo(tmp_path, monkeypatch):
    _write(tmp_path / "demo")

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(demo_prepare, "build_tiny_model", killed)
    with pytest.raises(KeyboardInterrupt):
        _write(tmp_path / "demo", hidden_size=48)
    assert not is_prepared(tmp_path / "demo", demo_settings(scale=0.002, hidden_size=32))
    assert not is_prepared(tmp_path / "demo", demo_settings(scale=0.002, hidden_size=48))


def test_the_pipeline_writes_the_demo_again_only_when_its_settings_differ(tmp_path, monkeypatch, capsys):
    commands = []

    def run(self, command, stage):
        commands.append(command)
        _write(
            tmp_path / "demo",
            scale=float(command[command.index("--scale") + 1]),
            hidden_size=int(command[command.index("--hidden_size") + 1]),
        )

    monkeypatch.setattr(Pipeline, "_run", run)

    def prepare(scale):
        Pipeline(
            PipelineConfig(
                run_dir=str(tmp_path / "run"),
                prepare_demo=str(tmp_path / "demo"),
                demo_scale=scale,
                demo_hidden_size=32,
            )
        ).prepare_demo()

    prepare(0.002)
    prepare(0.002)
    assert len(commands) == 1
    prepare(0.004)  # an older or other demo is there: written again, not used as it is
    assert len(commands) == 2 and "written with other settings" in capsys.readouterr().out
    assert is_prepared(tmp_path / "demo", demo_settings(scale=0.004, hidden_size=32))

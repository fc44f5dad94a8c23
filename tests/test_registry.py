import json
import multiprocessing
import subprocess
import sys
from pathlib import Path

import pytest

from rlhf.errors import ConfigError, RLHFError
from rlhf.registry import Registry, fingerprint_files, resolve_model


def make_model_dir(path: Path, marker: str = "x") -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"marker": marker}))
    return path


def test_versions_count_up_and_bare_name_means_latest(tmp_path):
    registry = Registry(tmp_path / "reg")
    first = registry.register("sft", "sft", make_model_dir(tmp_path / "a", "a"), metrics={"loss": 1.0})
    second = registry.register("sft", "sft", make_model_dir(tmp_path / "b", "b"))
    assert (first.reference, second.reference) == ("sft@1", "sft@2")
    assert registry.get("sft").version == 2
    assert registry.get("sft@1").metrics == {"loss": 1.0}
    # The model directory was moved into the registry and is intact there.
    assert json.loads((Path(registry.get("sft@1").path) / "config.json").read_text()) == {"marker": "a"}
    assert not (tmp_path / "a").exists()


def test_lineage_pins_parents_to_versions(tmp_path):
    registry = Registry(tmp_path / "reg")
    registry.register("sft", "sft", make_model_dir(tmp_path / "s1"))
    registry.register("sft", "sft", make_model_dir(tmp_path / "s2"))
    registry.register("rm", "rm", make_model_dir(tmp_path / "r"), parents=["sft"])
    ppo = registry.register("ppo", "ppo", make_model_dir(tmp_path / "p"), parents=["sft@1", "rm"])
    assert registry.get("rm").parents == ["sft@2"]
    assert ppo.parents == ["sft@1", "rm@1"]
    assert [e.reference for e in registry.lineage("ppo")] == ["ppo@1", "sft@1", "rm@1", "sft@2"]


def test_missing_references_are_clear_errors(tmp_path):
    registry = Registry(tmp_path / "reg")
    registry.register("sft", "sft", make_model_dir(tmp_path / "s"))
    with pytest.raises(ConfigError, match="no version 7 of 'sft'.*sft@1"):
        registry.get("sft@7")
    with pytest.raises(ConfigError, match="no entry named 'rm'"):
        registry.register("ppo", "ppo", make_model_dir(tmp_path / "p"), parents=["rm"])
    # The failed registration left nothing behind.
    assert [e.reference for e in registry.entries()] == ["sft@1"]


@pytest.mark.parametrize("name", ["../escape", "a/b", "", "1sft", "x" * 70])
def test_names_that_could_escape_the_registry_are_refused(tmp_path, name):
    with pytest.raises(ConfigError, match="registry name"):
        Registry(tmp_path / "reg").register(name, "sft", make_model_dir(tmp_path / "m"))


def test_a_failed_registration_writes_no_entry(tmp_path):
    registry = Registry(tmp_path / "reg")
    with pytest.raises(RLHFError, match="not a directory"):
        registry.register("sft", "sft", tmp_path / "does-not-exist")
    assert registry.entries() == []


def _register_one(args):
    root, index = args
    source = make_model_dir(Path(root) / f"model-{index}", str(index))
    return Registry(Path(root) / "reg").register("sft", "sft", source).version


def test_concurrent_writers_get_distinct_versions(tmp_path):
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        versions = pool.map(_register_one, [(str(tmp_path), i) for i in range(12)])
    assert sorted(versions) == list(range(1, 13))
    registry = Registry(tmp_path / "reg")
    markers = {json.loads((Path(e.path) / "config.json").read_text())["marker"] for e in registry.entries()}
    assert markers == {str(i) for i in range(12)}  # every model landed whole, none overwritten


def test_resolve_order_registry_then_directory_then_hub(tmp_path, monkeypatch):
    registry = Registry(tmp_path / "reg")
    entry = registry.register("sft", "sft", make_model_dir(tmp_path / "s"))
    assert resolve_model("sft", registry) == (entry.path, entry)
    local = make_model_dir(tmp_path / "local")
    assert resolve_model(str(local), registry) == (str(local.resolve()), None)
    assert resolve_model("org/some-model", registry) == ("org/some-model", None)
    with pytest.raises(ConfigError, match="neither a registry entry"):
        resolve_model("./missing/dir", registry)
    with pytest.raises(ConfigError, match="not in the registry"):
        resolve_model("rm@3", registry)
    with pytest.raises(ConfigError, match="'rm' is not in the registry.*run that stage first"):
        resolve_model("rm", registry)  # a stage that has not run yet, not a hub id to try downloading


def test_environment_variable_sets_the_default_root(tmp_path, monkeypatch):
    monkeypatch.setenv("RLHF_REGISTRY", str(tmp_path / "env-reg"))
    assert Registry().root == tmp_path / "env-reg"


def test_fingerprint_changes_with_content(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"a": 1}\n')
    before = fingerprint_files([data])
    assert before == fingerprint_files([data])
    data.write_text('{"a": 2}\n')
    assert fingerprint_files([data]) != before


def test_cli_lists_entries_as_json(tmp_path):
    registry = Registry(tmp_path / "reg")
    registry.register("sft", "sft", make_model_dir(tmp_path / "s"), metrics={"eval_loss_after": 0.5})
    registry.register("rm", "rm", make_model_dir(tmp_path / "r"), parents=["sft"])
    out = subprocess.run([sys.executable, "-m", "rlhf.registry", "--registry_dir", str(tmp_path / "reg"),
                          "list", "--json"], capture_output=True, text=True, check=True).stdout
    rows = json.loads(out)
    assert [(r["name"], r["version"], r["stage"], r["parents"]) for r in rows] == [
        ("rm", 1, "rm", ["sft@1"]), ("sft", 1, "sft", [])]
    assert rows[1]["metrics"] == {"eval_loss_after": 0.5} and Path(rows[1]["path"]).is_dir()
    missing = subprocess.run([sys.executable, "-m", "rlhf.registry", "--registry_dir", str(tmp_path / "reg"),
                              "show", "ppo"], capture_output=True, text=True)
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines() == [f"error: registry {tmp_path / 'reg'}: no entry named 'ppo'"]

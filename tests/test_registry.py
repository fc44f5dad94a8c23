import json
import multiprocessing
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch

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
    hub_cache(tmp_path / "hub", "org/some-model", monkeypatch)
    assert resolve_model("org/some-model", registry) == ("org/some-model", None)  # cached: no network needed
    with pytest.raises(ConfigError, match="neither a registry entry"):
        resolve_model("./missing/dir", registry)
    with pytest.raises(ConfigError, match="not in the registry"):
        resolve_model("rm@3", registry)
    with pytest.raises(ConfigError, match="'rm' is not in the registry.*run that stage first"):
        resolve_model("rm", registry)  # a stage that has not run yet, not a hub id to try downloading
    with pytest.raises(ConfigError, match=r"no version 99 of 'sft' \(have sft@1\)"):
        resolve_model("sft@99", registry)  # not "run that stage first": it ran


def hub_cache(root: Path, model_id: str, monkeypatch) -> None:
    """The hub client's cache layout, as a download leaves it.

    models--org--name/refs/main -> snapshots/<commit>/...
    """
    from huggingface_hub import constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = root / f"models--{model_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "snapshots" / commit / "config.json").write_text("{}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(root))


def test_a_registered_model_whose_directory_was_deleted_is_named_as_such(tmp_path):
    registry = Registry(tmp_path / "reg")
    entry = registry.register("sft", "sft", make_model_dir(tmp_path / "s"))
    shutil.rmtree(entry.path)
    with pytest.raises(ConfigError, match=r"sft@1's model directory .* no longer exists \(deleted or moved\)"):
        resolve_model("sft", registry)


@pytest.mark.parametrize(
    "damage, problem",
    [
        (lambda data: data[: len(data) // 2], "cut short"),
        (lambda data: b"\x07" * 5000, "not a safetensors file"),
        (lambda data: b"", "not a safetensors file (0 bytes)"),
    ],
)
def test_a_model_directory_with_damaged_weights_is_refused_naming_the_file(tmp_path, damage, problem):
    from safetensors.torch import save_file

    model = make_model_dir(tmp_path / "model")
    save_file({"weight": torch.ones(4, 4)}, str(model / "model.safetensors"))
    weights = model / "model.safetensors"
    weights.write_bytes(damage(weights.read_bytes()))
    with pytest.raises(RLHFError) as refused:
        resolve_model(str(model), Registry(tmp_path / "reg"))
    assert str(refused.value).startswith(f"{weights}: ") and problem in str(refused.value)


DEEP_HEADER = b'{"weight": ' + b"[" * 10**5 + b"]" * 10**5 + b"}"


def deep_json(path: Path) -> None:
    path.write_text('{"architectures": ' + "[" * 10**5 + "]" * 10**5 + "}")


@pytest.mark.parametrize(
    "name, damage, problem",
    [
        (
            "config.json",
            lambda path: os.symlink("/dev/zero", path),
            "is over 64 MiB, far more than a JSON file of its kind holds: "
            "refused unread (a link to a device, or a damaged file?)",
        ),
        ("config.json", deep_json, "nested deeper than 100 levels"),
        ("tokenizer_config.json", lambda path: path.write_text('{"model_max_length": '), "is not valid JSON"),
        (
            "model.safetensors",
            lambda path: path.write_bytes(struct.pack("<Q", len(DEEP_HEADER)) + DEEP_HEADER),
            "not a safetensors file (its header is not JSON)",
        ),
    ],
)
def test_a_model_directory_with_a_hostile_json_file_is_refused_in_one_line_naming_it(tmp_path, name, damage, problem):
    model = make_model_dir(tmp_path / "model")
    (model / name).unlink(missing_ok=True)
    damage(model / name)
    with pytest.raises(RLHFError) as refused:
        resolve_model(str(model), Registry(tmp_path / "reg"))
    assert str(refused.value).startswith(f"{model / name}: {problem}")


def test_an_unknown_name_says_where_it_was_looked_for_without_a_minute_of_retries(tmp_path, monkeypatch):
    from huggingface_hub import HfApi, constants

    registry = Registry(tmp_path / "reg")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # as HF_HUB_OFFLINE=1 at start-up sets it
    with pytest.raises(ConfigError) as offline:
        resolve_model("no-such-model", registry)
    assert str(offline.value) == (
        f"model 'no-such-model' is neither a registry entry in {registry.root}, nor a "
        f"directory, nor in the local hub cache (HF_HUB_OFFLINE is set)"
    )

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    asked = []

    def unreachable(self, model_id, timeout=None):
        asked.append((model_id, timeout))
        raise ConnectionError("[Errno -2] Name or service not known")

    monkeypatch.setattr(HfApi, "model_info", unreachable)
    with pytest.raises(
        ConfigError,
        match=r"nor in the local hub cache, and the hub is not reachable "
        r"\(\[Errno -2\] Name or service not known\)",
    ):
        resolve_model("no-such-model", registry)
    assert asked == [("no-such-model", 10)]  # asked once, with a short timeout


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
    out = subprocess.run(
        [sys.executable, "-m", "rlhf.registry", "--registry_dir", str(tmp_path / "reg"), "list", "--json"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows = json.loads(out)
    assert [(r["name"], r["version"], r["stage"], r["parents"]) for r in rows] == [
        ("rm", 1, "rm", ["sft@1"]),
        ("sft", 1, "sft", []),
    ]
    assert rows[1]["metrics"] == {"eval_loss_after": 0.5} and Path(rows[1]["path"]).is_dir()
    missing = subprocess.run(
        [sys.executable, "-m", "rlhf.registry", "--registry_dir", str(tmp_path / "reg"), "show", "ppo"],
        capture_output=True,
        text=True,
    )
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines() == [f"error: registry {tmp_path / 'reg'}: no entry named 'ppo'"]


def test_cli_takes_its_options_anywhere_and_shows_an_entry_whose_parent_is_damaged(tmp_path, capsys):
    from rlhf.registry import main

    registry = Registry(tmp_path / "reg")
    registry.register("sft", "sft", make_model_dir(tmp_path / "s"))
    registry.register("rm", "rm", make_model_dir(tmp_path / "r"), parents=["sft"])
    for argv in (["--registry_dir", str(tmp_path / "reg"), "list"], ["list", "--registry_dir", str(tmp_path / "reg")]):
        main(argv)
        assert [line.split()[0] for line in capsys.readouterr().out.splitlines()] == ["rm@1", "sft@1"]
    (tmp_path / "reg" / "entries" / "sft" / "1.json").write_text('{"name": "sft", "ver')  # cut short
    main(["show", "rm", "--registry_dir", str(tmp_path / "reg")])  # exits 0: the entry asked for is whole
    captured = capsys.readouterr()
    assert '"reference"' not in captured.out and '"name": "rm"' in captured.out
    assert captured.out.splitlines()[-1] == "lineage: rm@1 (unreadable, left out: sft@1)"
    assert "registry entry" in captured.err and "is damaged and left out" in captured.err

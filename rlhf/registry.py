"""The model registry every stage shares.

    python -m rlhf.registry list [--json]
    python -m rlhf.registry show sft@2 [--json]

Layout under the root (default `runs/registry`, or $RLHF_REGISTRY):

    entries/<name>/<version>.json   one immutable entry per version, written atomically
    models/<name>/<version>/        the Hugging Face directory the stage saved, moved in on registration
    .lock                           serialises version numbers between concurrent writers

`sft` means the latest version of `sft`; `sft@2` a given one. A stage names its input model as a
registry reference, a local directory, or a hub id, tried in that order (`resolve_model`).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from filelock import FileLock

from rlhf.errors import ConfigError, RLHFError, exits_cleanly
from rlhf.io import atomic_write_json, disk_full_is_one_line

DEFAULT_ROOT = "runs/registry"
# Names become directory names, so they are held to a safe alphabet (no '/', no '..').
NAME_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")
REFERENCE_PATTERN = re.compile(r"^(?P<name>[A-Za-z][A-Za-z0-9_.-]{0,63})(@(?P<version>[0-9]+))?$")


@dataclass
class Entry:
    """One registered model version and where it came from."""

    name: str
    version: int
    stage: str
    path: str
    base_model: str = ""
    parents: list[str] = field(default_factory=list)
    data_fingerprint: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    created_at: str = ""
    # Which stage run registered it, so that a run killed right after registering finds its entry again.
    run_id: str = ""

    @property
    def reference(self) -> str:
        return f"{self.name}@{self.version}"


def default_root() -> Path:
    return Path(os.environ.get("RLHF_REGISTRY") or DEFAULT_ROOT)


def check_name(name: str) -> str:
    if not NAME_PATTERN.match(name) or ".." in name:
        raise ConfigError(f"registry name '{name}' must be letters, digits, '_', '.', '-' (starting with a letter)")
    return name


class Registry:
    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root) if root else default_root()
        self._reported: set[Path] = set()

    # -- reading --------------------------------------------------------------------------------
    def entries(self, name: str | None = None) -> list[Entry]:
        """All entries (or all versions of one name), oldest first. A damaged entry file is reported on stderr
        with its path and left out, so that one bad file does not take the rest of the registry with it."""
        found = []
        for file in self._entry_files(name):
            try:
                found.append(_read_entry(file))
            except (OSError, ValueError, TypeError) as error:
                if file not in self._reported:
                    self._reported.add(file)
                    print(
                        f"warning: registry entry {file} is damaged and left out "
                        f"({' '.join(str(error).split())[:200]})",
                        file=sys.stderr,
                    )
        return sorted(found, key=lambda entry: (entry.name, entry.version))

    def _entry_files(self, name: str | None = None) -> list[Path]:
        base = self.root / "entries"
        names = [name] if name else sorted(p.name for p in base.iterdir() if p.is_dir()) if base.is_dir() else []
        return [
            file
            for entry_name in names
            if (base / entry_name).is_dir()
            for file in (base / entry_name).glob("*.json")
            if file.stem.isdigit()
        ]

    def get(self, reference: str) -> Entry:
        match = REFERENCE_PATTERN.match(reference)
        if not match:
            raise ConfigError(f"'{reference}' is not a registry reference (NAME or NAME@VERSION)")
        versions = self.entries(match["name"])
        if not versions:
            raise ConfigError(f"registry {self.root}: no entry named '{match['name']}'")
        if match["version"] is None:
            return versions[-1]
        wanted = int(match["version"])
        for entry in versions:
            if entry.version == wanted:
                return entry
        raise ConfigError(
            f"registry {self.root}: no version {wanted} of '{match['name']}' "
            f"(have {', '.join(e.reference for e in versions)})"
        )

    def registered_by(self, name: str, run_id: str) -> Entry | None:
        """The entry that the stage run `run_id` registered under `name`, if it got that far."""
        return next((entry for entry in self.entries(name) if run_id and entry.run_id == run_id), None)

    def find(self, reference: str) -> Entry | None:
        """The entry `get` would return, or None where it would raise."""
        try:
            return self.get(reference)
        except ConfigError:
            return None

    def has(self, reference: str) -> bool:
        return self.find(reference) is not None

    # -- writing --------------------------------------------------------------------------------
    def register(
        self,
        name: str,
        stage: str,
        model_dir: str | os.PathLike,
        *,
        base_model: str = "",
        parents: Iterable[str] = (),
        data_fingerprint: str = "",
        config: dict | None = None,
        metrics: dict | None = None,
        run_id: str = "",
    ) -> Entry:
        """Move `model_dir` into the registry as the next version of `name` and write its entry.

        Call on global rank 0 only. The entry file appears last and in one rename, so a crash
        part-way leaves no entry that points at a missing or half-copied model.
        """
        check_name(name)
        model_dir = Path(model_dir)
        if not model_dir.is_dir():
            raise RLHFError(f"cannot register '{name}': {model_dir} is not a directory")
        parents = [self.get(parent).reference for parent in parents]  # pin "sft" to "sft@N"
        (self.root / "entries" / name).mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.root / ".lock")):
            # Counted from the file names, damaged entries included: their version numbers stay taken.
            version = max((int(file.stem) for file in self._entry_files(name)), default=0) + 1
            stored = (self.root / "models" / name / str(version)).resolve()
            stored.parent.mkdir(parents=True, exist_ok=True)
            if stored.exists():  # left by a registration that died before writing its entry
                shutil.rmtree(stored)
            _move_directory(model_dir, stored)
            entry = Entry(
                name=name,
                version=version,
                stage=stage,
                path=str(stored),
                base_model=base_model,
                parents=parents,
                data_fingerprint=data_fingerprint,
                config=config or {},
                metrics=metrics or {},
                created_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                run_id=run_id,
            )
            try:
                atomic_write_json(self.root / "entries" / name / f"{version}.json", asdict(entry))
            except BaseException:
                # A failed registration (a full disk) leaves the model where it was, for the re-run to register,
                # rather than a second copy's worth of space taken in models/ with no entry.
                with contextlib.suppress(OSError):
                    os.replace(stored, model_dir)
                raise
        return entry

    def lineage(self, reference: str) -> list[Entry]:
        """The entry and every ancestor that can be read, depth first (the entry itself first). An ancestor whose
        entry is damaged or gone is left out (a damaged one is reported on stderr), with its own ancestors."""
        seen: dict[str, Entry] = {}
        pending = [reference]
        while pending:
            wanted = pending.pop(0)
            entry = self.get(wanted) if not seen else self.find(wanted)
            if entry is not None and entry.reference not in seen:
                seen[entry.reference] = entry
                pending.extend(entry.parents)
        return list(seen.values())


def _read_entry(file: Path) -> Entry:
    values = json.loads(file.read_text(encoding="utf-8"))
    if not isinstance(values, dict):
        raise ValueError("not a JSON object")
    entry = Entry(**values)
    if entry.version != int(file.stem) or not isinstance(entry.path, str):
        raise ValueError(f"its version {entry.version!r} is not its file name's")
    return entry


def _move_directory(source: Path, target: Path) -> None:
    try:
        os.replace(source, target)
    except OSError:  # another filesystem: copy beside the target, then rename into place
        staging = target.with_name(f".{target.name}.tmp")
        shutil.rmtree(staging, ignore_errors=True)
        with disk_full_is_one_line(target):
            try:
                shutil.copytree(source, staging)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
        os.replace(staging, target)
        shutil.rmtree(source, ignore_errors=True)


STAGE_NAMES = ("sft", "rm", "ppo")


def resolve_model(reference: str, registry: Registry | None = None) -> tuple[str, Entry | None]:
    """Where to load `reference` from: a registry entry, else a local directory, else a hub id.

    A local model's weight and config files are checked whole here, before anything loads them.
    """
    from rlhf.checkpoint_files import check_model_directory

    if not reference:
        raise ConfigError("no model given (set model_name_or_path)")
    registry = registry or Registry()
    match = REFERENCE_PATTERN.match(reference)
    entry = registry.find(reference) if match else None
    if entry is not None:
        if not Path(entry.path).is_dir():
            raise ConfigError(
                f"registry {registry.root}: {entry.reference}'s model directory {entry.path} no longer "
                f"exists (deleted or moved): re-run its stage, or register the model again"
            )
        check_model_directory(Path(entry.path))
        return entry.path, entry
    if Path(reference).expanduser().is_dir():
        check_model_directory(Path(reference).expanduser())
        return str(Path(reference).expanduser().resolve()), None
    if Path(reference).expanduser().exists():
        raise ConfigError(f"model '{reference}' is a file; a model is a Hugging Face directory")
    if match and match["version"] and registry.entries(match["name"]):
        registry.get(reference)  # the name is registered, that version is not: the error lists the versions
    if reference.split("@")[0] in STAGE_NAMES:
        # Nobody means the hub's "sft": this is a stage that has not run, or a registry looked for in the wrong place.
        raise ConfigError(
            f"model '{reference}' is not in the registry at {registry.root}: run that stage first, "
            f"or point registry_dir (or $RLHF_REGISTRY) at the registry that has it"
        )
    looks_local = reference.startswith((".", "/", "~")) or reference.count("/") > 1
    if looks_local or "@" in reference:
        raise ConfigError(
            f"model '{reference}' is neither a registry entry in {registry.root} nor an existing directory"
        )
    problem = hub_problem(reference)
    if problem:
        raise ConfigError(
            f"model '{reference}' is neither a registry entry in {registry.root}, nor a directory, nor {problem}"
        )
    return reference, None


def hub_problem(model_id: str) -> str | None:
    """Why the hub cannot give `model_id` (None when it is cached, or the hub has it), asked once and briefly:
    from_pretrained alone retries for about a minute before it says that there is no network."""
    from huggingface_hub import HfApi, is_offline_mode, try_to_load_from_cache
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    if isinstance(try_to_load_from_cache(model_id, "config.json"), str):
        return None
    if is_offline_mode():  # the hub client's own reading of HF_HUB_OFFLINE (and TRANSFORMERS_OFFLINE)
        return "in the local hub cache (HF_HUB_OFFLINE is set)"
    try:
        HfApi().model_info(model_id, timeout=10)
    except GatedRepoError:
        return None  # it exists; from_pretrained says whether this user's token may read it
    except RepositoryNotFoundError:
        return "a model on the hub (not found there, or private to another account)"
    except Exception as error:  # the hub client's network errors have no common public base class
        return f"in the local hub cache, and the hub is not reachable ({' '.join(str(error).split())[:120]})"
    return None


def fingerprint_files(paths: Iterable[str | os.PathLike]) -> str:
    """sha256 over the contents of data files (a directory: all its files, sorted by path; a hub dataset
    reference, which is no file: its name and split)."""
    from rlhf.data.records import hub_reference

    digest = hashlib.sha256()
    for path in paths:
        if not Path(path).exists() and hub_reference(str(path)) is not None:
            digest.update(f"hub:{path}".encode())
            continue
        path = Path(path)
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            digest.update(str(file.relative_to(path) if path.is_dir() else file.name).encode())
            with open(file, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
    return "sha256:" + digest.hexdigest()


# -- command line ------------------------------------------------------------------------------
def _summary_row(entry: Entry) -> str:
    metrics = ", ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(entry.metrics.items())[:4]
    )
    parents = ",".join(entry.parents) or "-"
    return f"{entry.reference:<12} {entry.stage:<5} {entry.created_at:<25} parents={parents:<16} {metrics}"


@exits_cleanly
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m rlhf.registry", description=__doc__.split("\n")[0])
    registry_help = "registry root (default $RLHF_REGISTRY or runs/registry)"
    parser.add_argument("--registry_dir", default=None, help=registry_help)
    # The same option after the subcommand too; SUPPRESS keeps one given before it from being reset.
    anywhere = argparse.ArgumentParser(add_help=False)
    anywhere.add_argument("--registry_dir", default=argparse.SUPPRESS, help=registry_help)
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", help="every entry", parents=[anywhere])
    listing.add_argument("--json", action="store_true")
    show = commands.add_parser("show", help="one entry and its lineage", parents=[anywhere])
    show.add_argument("reference")
    show.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    registry = Registry(args.registry_dir)
    if args.command == "list":
        entries = registry.entries()
        if args.json:
            print(json.dumps([asdict(entry) for entry in entries], indent=2))
        elif not entries:
            print(f"registry {registry.root} is empty")
        else:
            print("\n".join(_summary_row(entry) for entry in entries))
    else:
        entry = registry.get(args.reference)
        if args.json:
            print(json.dumps(asdict(entry), indent=2))
        else:
            print(json.dumps({k: v for k, v in asdict(entry).items() if k != "config"}, indent=2))
            lineage = registry.lineage(entry.reference)
            unreadable = sorted({parent for e in lineage for parent in e.parents} - {e.reference for e in lineage})
            print(
                "lineage: "
                + " <- ".join(e.reference for e in lineage)
                + (f" (unreadable, left out: {', '.join(unreadable)})" if unreadable else "")
            )


if __name__ == "__main__":
    main(sys.argv[1:])

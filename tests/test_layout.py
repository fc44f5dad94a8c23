"""The layout's promises: import-light modules really are, and arrows point from stages to shared parts."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO

PACKAGE = REPO / "rlhf"
HEAVY = ("torch", "transformers", "deepspeed", "peft", "accelerate", "datasets", "trl")

# Modules a data tool or a test imports without any ML library.
NO_ML_LIBRARIES = [
    "rlhf",
    "rlhf.bounded_json",
    "rlhf.config",
    "rlhf.errors",
    "rlhf.io",
    "rlhf.registry",
    "rlhf.run_files",
    "rlhf._compat",
    "rlhf.distributed",
    "rlhf.data.records",
    "rlhf.data.formatting",
    "rlhf.data.rankings",
    "rlhf.data.prompts",
    "rlhf.data.demonstrations",
    "rlhf.data.overlong",
    "rlhf.labels",
    "rlhf.labels.cli",
    "rlhf.labels.exporters",
    "rlhf.labels.importers",
    "rlhf.adaptation",
    "rlhf.adaptation.config",
    "rlhf.sft.data",
    "rlhf.rm.data",
    "rlhf.pipeline",
    "rlhf.evaluate",
    "rlhf.evaluate.overoptimisation",
    "rlhf.rm.calibration",
    "rlhf.labels.agreement",
    "rlhf.rollout",
    "rlhf.rollout.protocol",
    "rlhf.rollout.settings",
    "rlhf.rollout.vllm_engine",
    "rlhf.rollout.vllm_server",
]
# Pure math: torch at most, nothing else heavy.
TORCH_ONLY = [
    "rlhf.rm.loss",
    "rlhf.ppo.rewards",
    "rlhf.ppo.losses",
    "rlhf.ppo.rollout",
    "rlhf.ppo.kl_control",
    "rlhf.ppo.estimators",
    "rlhf.ppo.groups",
    "rlhf.ppo.mismatch",
    "rlhf.packed_rows",
    "rlhf.probes",
    "rlhf.shared_prompt.layout",
]


def heavy_modules_after_import(module: str) -> list[str]:
    code = f"import sys, {module}; print(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, capture_output=True, text=True)
    return result.stdout.split()


@pytest.mark.parametrize("module", NO_ML_LIBRARIES)
def test_import_light_modules_import_no_ml_library(module):
    assert heavy_modules_after_import(module) == []


@pytest.mark.parametrize("module", TORCH_ONLY)
def test_math_modules_import_nothing_heavier_than_torch(module):
    assert set(heavy_modules_after_import(module)) <= {"torch"}


def imported_rlhf_modules(path: Path) -> set[str]:
    """Every rlhf module `path` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("rlhf"):
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("rlhf"))
    return found


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")


def import_graph() -> dict[str, set[str]]:
    """module -> the rlhf modules it imports, at the top or inside a function (`from a import b` is a -> a.b when
    a.b is a module)."""
    modules = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        reached = {m for m in imported_rlhf_modules(path) if m in modules}
        # `from rlhf.x import y` names both rlhf.x and rlhf.x.y: keep the package only when y is not a module.
        graph[name] = {m for m in reached if not any(other.startswith(m + ".") for other in reached)} - {name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Each import cycle once, as the path that closes it."""
    found, finished = [], set()

    def visit(module: str, path: list[str]) -> None:
        for target in sorted(graph[module]):
            if target in path:
                found.append(path[path.index(target) :] + [target])
            elif target not in finished:
                visit(target, path + [target])
        finished.add(module)

    for module in sorted(graph):
        if module not in finished:
            visit(module, [module])
    return found


def test_cycles_finds_a_cycle_hidden_in_a_function():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_even_through_imports_inside_functions():
    """A lazy import is for a heavy optional library, never to get around a cycle between our own modules."""
    assert cycles(import_graph()) == []


STAGE_PACKAGES = ("rlhf.sft", "rlhf.rm", "rlhf.ppo", "rlhf.labels", "rlhf.stages")
ORCHESTRATION = ("rlhf.pipeline", "rlhf.report", "rlhf.demo", "rlhf.evaluate")


def test_shared_parts_import_no_stage():
    """config, io, registry, models, data, adaptation, ...: the stages use them, never the other way round."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        name = module_name(path)
        if name.startswith(STAGE_PACKAGES + ORCHESTRATION):
            continue
        reached = {m for m in imported_rlhf_modules(path) if m.startswith(STAGE_PACKAGES + ("rlhf.pipeline",))}
        offenders += [f"{name} -> {m}" for m in sorted(reached)]
    assert offenders == []


def test_only_the_recipes_import_the_recipes():
    offenders = [
        f"{module_name(path)} -> {m}"
        for path in PACKAGE.rglob("*.py")
        if not module_name(path).startswith("rlhf.stages")
        for m in imported_rlhf_modules(path)
        if m.startswith("rlhf.stages")
    ]
    assert offenders == []


def test_the_demo_is_a_plug_in_that_only_the_pipeline_reaches():
    """The demo registers its gold scorer through an entry point; only the pipeline's demo mode starts it."""
    offenders = [
        f"{module_name(path)} -> {m}"
        for path in PACKAGE.rglob("*.py")
        if not module_name(path).startswith(("rlhf.demo", "rlhf.pipeline"))
        for m in imported_rlhf_modules(path)
        if m.startswith("rlhf.demo")
    ]
    assert offenders == []


def test_tests_mirror_the_source_tree():
    """tests/ppo/test_rewards.py tests rlhf/ppo/rewards.py: each test folder is a package of rlhf (or the
    benchmarks), and each test file of a folder is named after a module of that package or what it checks."""
    folders = {path.parent for path in (REPO / "tests").rglob("test_*.py")} - {REPO / "tests"}
    unmatched = [
        str(folder.relative_to(REPO))
        for folder in folders
        if not ((PACKAGE / folder.relative_to(REPO / "tests")).is_dir() or folder.name == "benchmarks")
    ]
    assert unmatched == [] and len(folders) >= 10


def test_the_vllm_engines_process_needs_none_of_rlhf_but_its_protocol():
    """It runs in vLLM's own virtualenv, where rlhf's dependencies (transformers 5.23...) are not installed."""
    assert imported_rlhf_modules(PACKAGE / "rollout" / "vllm_server.py") <= {"rlhf.rollout", "rlhf.rollout.protocol"}


def test_every_module_opens_with_a_docstring():
    missing = [
        module_name(path) for path in PACKAGE.rglob("*.py") if not ast.get_docstring(ast.parse(path.read_text()))
    ]
    assert missing == []


LIBRARIES = ("torch", "transformers", "deepspeed", "accelerate", "numpy", "trl", "peft", "datasets", "tqdm")
# Public names that happen to start with an underscore.
PUBLIC_UNDERSCORED = {"_exit", "_replace", "_asdict", "_fields", "_make"}
# Undocumented attributes with no underscore to give them away.
UNDOCUMENTED = {"ds_persist", "enable_backward_allreduce", "deepspeed_allreduce_buffer"}


def names_defined_in(paths: list[Path]) -> set[str]:
    """Functions, classes, variables and attributes our own code defines: using these is not reaching in."""
    names = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
    return names - UNDOCUMENTED


def private_uses(path: Path, ours: set[str]) -> list[str]:
    """`x._name`, getattr(x, "_name"), `from library._module import`, and the UNDOCUMENTED names, in `path`."""

    def private(name: str) -> bool:
        underscored = name.startswith("_") and not name.startswith("__") and name not in PUBLIC_UNDERSCORED
        return (underscored and name not in ours) or name in UNDOCUMENTED

    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute) and private(node.attr):
            found.append((node.lineno, f".{node.attr}"))
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("getattr", "setattr", "hasattr"):
            name = node.args[1] if len(node.args) > 1 else None
            if isinstance(name, ast.Constant) and isinstance(name.value, str) and private(name.value):
                found.append((node.lineno, repr(name.value)))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in UNDOCUMENTED:
            found.append((node.lineno, repr(node.value)))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in LIBRARIES:
            if any(private(part) for part in node.module.split(".")[1:]):
                found.append((node.lineno, f"from {node.module}"))
    return [f"{path.name}:{line}: {use}" for line, use in sorted(found)]


def test_private_api_finder_sees_each_way_of_reaching_in(tmp_path):
    code = tmp_path / "code.py"
    code.write_text(
        "from numpy._core import multiarray\n"
        "x = torch.distributed._world\n"
        "y = getattr(module, '_buffers')\n"
        "engine.enable_backward_allreduce = False\n"
        "os._exit(0)\n"
        "z = self._ours\n"
    )
    assert private_uses(code, {"_ours"}) == [
        "code.py:1: from numpy._core",
        "code.py:2: ._world",
        "code.py:3: '_buffers'",
        "code.py:4: .enable_backward_allreduce",
    ]


def test_private_apis_of_other_libraries_are_used_only_in_compat():
    """rlhf/_compat.py is the one seam, tested by tests/test_compat.py; the library and the benchmarks use it."""
    paths = sorted(PACKAGE.rglob("*.py")) + sorted((REPO / "benchmarks").rglob("*.py"))
    ours = names_defined_in([path for path in paths if path.name != "_compat.py"])
    assert [use for path in paths if path.name != "_compat.py" for use in private_uses(path, ours)] == []

"""Shared fixtures: tiny models built from a config, never downloaded."""

from __future__ import annotations

import json
import os

import pytest
import torch
from filelock import FileLock

from tests.helpers.ppo_setup import build_models
from tests.helpers.tiny import tiny_llama_config

pytest_plugins = ["pytester"]  # tests/test_suite_isolation.py runs small sessions of its own


def pytest_configure(config):
    """transformers' log handler writes to the stderr of the moment it is made. Made inside a test that captures
    stderr (capsys), it would write to that test's closed stream in every later test, which then reads a logging
    traceback: make it now, on the session's stderr."""
    from transformers.utils import logging

    logging.get_logger("transformers")


def _restore_environment_afterwards():
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


# Stages run in-process set RANK, LOCAL_RANK, MASTER_PORT... for a world of one; later tests, and the subprocesses
# they start, must not inherit them. A module fixture sets them too (a PPO run shared by a file's tests), and its
# world of one keeps listening on MASTER_PORT until the session ends: a pipeline started by a later file on the same
# worker inherited that port and failed with EADDRINUSE. So the environment is restored after each test and after
# each module; autouse fixtures of a scope are set up before the others of that scope.
@pytest.fixture(autouse=True)
def _environment_restored():
    yield from _restore_environment_afterwards()


@pytest.fixture(autouse=True, scope="module")
def _module_environment_restored():
    yield from _restore_environment_afterwards()


@pytest.fixture
def tiny_causal_lm():
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(tiny_llama_config())


@pytest.fixture
def tiny_reward_model():
    from transformers import LlamaForSequenceClassification

    torch.manual_seed(0)
    return LlamaForSequenceClassification(tiny_llama_config(num_labels=1))


@pytest.fixture(scope="session")
def models(tmp_path_factory, worker_id) -> dict:
    """The tiny policy, reward model, prompts and demonstrations that PPO tests read and never write
    (tests/helpers/ppo_setup.py, build_models): built once per test session, whatever the number of workers."""
    return built_once(tmp_path_factory, worker_id, "tiny_models", build_models)


@pytest.fixture(scope="session")
def models_64(tmp_path_factory, worker_id) -> dict:
    """The same with hidden size 64: head_dim 32, the smallest vLLM's CPU attention runs."""
    return built_once(tmp_path_factory, worker_id, "tiny_models_64", lambda root: build_models(root, hidden_size=64))


def built_once(tmp_path_factory, worker_id: str, name: str, build) -> dict:
    """build(root) -> paths, once per session: under xdist the workers share the session's base directory, and the
    first to arrive builds while the others wait on the lock."""
    if worker_id == "master":
        return build(tmp_path_factory.mktemp(name))
    root = tmp_path_factory.getbasetemp().parent / name
    with FileLock(f"{root}.lock"):
        if not (root / "paths.json").exists():
            paths = build(root)
            (root / "paths.json").write_text(json.dumps(paths))
    return json.loads((root / "paths.json").read_text())

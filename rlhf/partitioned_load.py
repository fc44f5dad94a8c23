"""Load a safetensors checkpoint into a ZeRO-3-partitioned model one module at a time, so that no rank, rank 0
included, ever holds the whole checkpoint.

transformers' own ZeRO-3 `from_pretrained` builds the model partitioned (`zero.Init`) but then reads every
checkpoint file whole into one state dict on rank 0 before scattering it: for a 70B model, the whole checkpoint
in one process's host memory. Inside `streamed_zero3_loading()`, `from_pretrained` keeps everything else it does
(config, dtype, construction under `zero.Init`, initialising missing weights such as a new reward head, tying,
the loading report) and only the reading changes: for each module, every rank gathers that module's own
parameters and rank 0 copies each tensor into them from the checkpoint, read one tensor at a time
(`safe_open(...).get_tensor`, with `pread` where safetensors has it, so that no file stays mapped). Persistent
buffers are small and not partitioned: every rank reads its own.

Checkpoints whose keys do not map 1:1 onto the model's (transformers 5 weight conversions such as fused MoE
experts, legacy renames) and .bin checkpoints go through transformers' own path, with one line saying why.

Peak on rank 0: one module's parameters gathered, plus one tensor read from the checkpoint.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Iterator

import torch
from torch import nn

from rlhf import _compat, distributed


def model_key_for(checkpoint_key: str, model_keys: set[str] | dict, base_model_prefix: str) -> str | None:
    """The model's key that a checkpoint key fills, or None when the model has no such weight.

    The same key, or the key with the base model's prefix added or removed: a base-model checkpoint ("layers.0...")
    loads into a model with a head ("model.layers.0..."), and a checkpoint of a model with a head into another
    head on the same body (a causal LM's body under a reward model's score head).
    """
    if checkpoint_key in model_keys:
        return checkpoint_key
    if not base_model_prefix:
        return None
    with_prefix = f"{base_model_prefix}.{checkpoint_key}"
    if with_prefix in model_keys:
        return with_prefix
    without_prefix = checkpoint_key.removeprefix(f"{base_model_prefix}.")
    if without_prefix != checkpoint_key and without_prefix in model_keys:
        return without_prefix
    return None


class AmbiguousCheckpoint(ValueError):
    """Two checkpoint keys would fill the same weight of the model."""


def checkpoint_sources(
    checkpoint_keys: Iterable[str], model_keys: set[str] | dict, base_model_prefix: str
) -> dict[str, str]:
    """{model key: checkpoint key} for every checkpoint key that fills one of the model's weights. Checkpoint
    keys the model has no place for (a causal LM's lm_head under a reward model) are left out, as transformers
    leaves them unused; model keys no checkpoint key fills are what transformers initialises or ties."""
    sources: dict[str, str] = {}
    for checkpoint_key in checkpoint_keys:
        model_key = model_key_for(checkpoint_key, model_keys, base_model_prefix)
        if model_key is None:
            continue
        if model_key in sources:
            raise AmbiguousCheckpoint(f"both '{sources[model_key]}' and '{checkpoint_key}' would fill '{model_key}'")
        sources[model_key] = checkpoint_key
    return sources


def local_tensors(model: nn.Module) -> Iterator[tuple[nn.Module, str, str, bool]]:
    """(module, local name, model key, is_parameter) for each module's own parameters and persistent buffers, in
    the order state_dict lists them. A module reachable under two names is visited under both, as transformers
    does: a key of either name can be the one the checkpoint has."""

    def visit(module: nn.Module, prefix: str):
        parameters, buffers, children = _compat.own_tensors_and_children(module)
        for name, parameter in parameters.items():
            if parameter is not None:
                yield module, name, prefix + name, True
        for name, buffer in buffers.items():
            if buffer is not None:
                yield module, name, prefix + name, False
        for child_name, child in children.items():
            if child is not None:
                yield from visit(child, f"{prefix}{child_name}.")

    yield from visit(model, "")


class CheckpointReader:
    """Reads single tensors of a (possibly sharded) safetensors checkpoint by key, never a whole file."""

    def __init__(self, checkpoint_files: list[str]):
        from safetensors import safe_open

        self._files = []
        self._file_of: dict[str, object] = {}
        for path in checkpoint_files:
            try:  # pread reads the tensor's bytes only; a memory map would keep every page read resident
                handle = safe_open(path, framework="pt", backend="pread")
            except TypeError:  # safetensors before 0.8 has no backend
                handle = safe_open(path, framework="pt")
            self._files.append(handle)
            for key in handle.keys():
                self._file_of[key] = handle

    def keys(self) -> list[str]:
        return list(self._file_of)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._file_of[key].get_slice(key).get_shape())

    def tensor(self, key: str) -> torch.Tensor:
        return self._file_of[key].get_tensor(key)


def load_module_by_module(
    model: nn.Module, checkpoint_files: list[str], mark_loaded: Callable[[torch.Tensor], None]
) -> tuple[set[str], list[str]]:
    """Fill the ZeRO-3 model's weights from the checkpoint, one module at a time; every rank calls it.

    Returns (missing keys, error messages) as transformers' loading expects them: the model keys no checkpoint
    tensor filled, and one message per shape mismatch. `mark_loaded` flags each filled tensor, so that
    transformers does not initialise it again. Raises AmbiguousCheckpoint before any weight is touched.
    """
    import deepspeed

    reader = CheckpointReader(checkpoint_files)
    listed = list(local_tensors(model))
    model_keys = {key: None for _, _, key, _ in listed}
    sources = checkpoint_sources(reader.keys(), model_keys, getattr(model, "base_model_prefix", "") or "")
    missing = set(model.state_dict().keys())
    errors: list[str] = []
    writes_here = distributed.global_rank() == 0
    filled: set[int] = set()

    by_module: dict[int, list] = {}
    modules: dict[int, nn.Module] = {}
    for module, name, key, is_parameter in listed:
        by_module.setdefault(id(module), []).append((name, key, is_parameter))
        modules[id(module)] = module
    for module_id, entries in by_module.items():
        module = modules[module_id]
        parameters, buffers = [], []
        for name, key, is_parameter in entries:
            tensor = getattr(module, name)
            if key not in sources or id(tensor) in filled:
                continue
            expected = tuple(getattr(tensor, "ds_shape", tensor.shape))
            if reader.shape(sources[key]) != expected:
                errors.append(
                    f"size mismatch for {key}: copying a param with shape {reader.shape(sources[key])} "
                    f"from checkpoint, the shape in current model is {expected}."
                )
                continue
            (parameters if is_parameter else buffers).append((key, tensor))
            filled.add(id(tensor))
        partitioned = [tensor for _, tensor in parameters if hasattr(tensor, "ds_id")]
        with torch.no_grad(), deepspeed.zero.GatheredParameters(partitioned, modifier_rank=0):
            for key, tensor in parameters:
                # A partitioned parameter is written by rank 0 and scattered when the block ends.
                if writes_here or not hasattr(tensor, "ds_id"):
                    tensor.data.copy_(reader.tensor(sources[key]))
        with torch.no_grad():
            for key, buffer in buffers:
                buffer.copy_(reader.tensor(sources[key]))
        for key, tensor in parameters + buffers:
            mark_loaded(tensor)
            missing.discard(key)
    return missing, errors


def why_not_streamed(
    checkpoint_files: list[str] | None,
    weight_mapping_changes_keys: Callable[[list[str]], bool],
) -> str | None:
    """Why a ZeRO-3 load has to go through transformers' own path (None: it can be streamed)."""
    if not checkpoint_files:
        return "no checkpoint files (a state dict was passed)"
    if not all(str(path).endswith(".safetensors") for path in checkpoint_files):
        return f"'{os.path.basename(str(checkpoint_files[0]))}' is not a safetensors file"
    reader = CheckpointReader(checkpoint_files)
    if weight_mapping_changes_keys(reader.keys()):
        return "its keys need transformers' weight conversions (renamed or fused weights)"
    return None


@contextlib.contextmanager
def streamed_zero3_loading() -> Iterator[None]:
    """Inside the block, a ZeRO-3 `from_pretrained` reads its checkpoint module by module (see the module
    docstring); every other load is transformers' own."""
    from rlhf import _compat

    def load(model, checkpoint_files, load_config, transformers_load):
        if not _compat.zero3_load_can_be_replaced(load_config):
            return transformers_load()
        reason = why_not_streamed(checkpoint_files, lambda keys: _compat.weight_mapping_changes_keys(load_config, keys))
        if reason is None:
            try:
                missing, errors = load_module_by_module(model, checkpoint_files, _compat.mark_as_loaded)
            except AmbiguousCheckpoint as error:
                reason = str(error)
            else:
                return _compat.loading_info(model, missing, errors)
        if distributed.is_main_process():
            print(
                f"loading {load_config.pretrained_model_name_or_path} through transformers' ZeRO-3 path (rank 0 "
                f"reads the whole checkpoint): {reason}",
                flush=True,
            )
        return transformers_load()

    with _compat.pretrained_loading_replaced(load):
        yield

"""Save a ZeRO-3-partitioned model without any rank ever holding all of it.

`save_adapted` needs every weight whole in one process. Under ZeRO-3 this module instead walks the model one
module at a time: every rank gathers that module's own parameters (a collective, so all ranks call it),
rank 0 copies them to CPU, and full shards stream to safetensors files as they fill. The directory is the one
`save_adapted` writes for the same method (a Hugging Face model, sharded with an index when large; LoRA merged
into it; Houlsby adapters in their own file), staged and renamed into place in one step.

Peak memory of the save: one module gathered on every rank, plus its CPU copy on rank 0 (shards go to disk
tensor by tensor).
Unmerged peft adapters are small, so only their trainable parameters are gathered and peft writes them.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import struct
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from rlhf import distributed
from rlhf.adaptation import houlsby
from rlhf.adaptation.apply import is_peft_model
from rlhf.adaptation.checkpoint import (
    ADAPTATION_FILE,
    ADAPTER_WEIGHTS_FILE,
    check_model_matches,
    description_of,
    houlsby_description,
    plain_lora_key,
    save_adapted,
)
from rlhf.adaptation.config import PEFT_METHODS, AdaptationConfig
from rlhf.io import atomic_directory

SAFE_WEIGHTS = "model.safetensors"
SAFE_WEIGHTS_INDEX = "model.safetensors.index.json"
DEFAULT_SHARD_BYTES = 1 << 30
SAFETENSORS_DTYPES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


def save_adapted_partitioned(
    model: nn.Module,
    tokenizer,
    out_dir: str | os.PathLike,
    config: AdaptationConfig,
    *,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
) -> None:
    """What `save_adapted(model, tokenizer, out_dir, config)` writes, for a ZeRO-3 model. Every rank calls it;
    rank 0 writes."""
    import deepspeed

    method = config.adaptation_method
    check_model_matches(model, method)
    main = distributed.is_main_process()
    if method in PEFT_METHODS and not (method == "lora" and config.merge_lora_on_save):
        adapter = [p for p in model.parameters() if p.requires_grad]
        with deepspeed.zero.GatheredParameters(adapter, modifier_rank=None):
            if main:
                save_adapted(model, tokenizer, out_dir, config)
        return

    plain = model.get_base_model() if is_peft_model(model) else model
    description = description_of(config, merged_lora=method == "lora")
    with atomic_directory(out_dir) if main else contextlib.nullcontext() as staging:
        weights = ShardWriter(staging, max_shard_bytes) if main else None
        adapter_weights: dict[str, torch.Tensor] = {}
        wrapped = list(houlsby.adapted_modules(model)) if method == "adapter" else []
        for key, tensor in gathered_state(model, method):
            if tensor is None:
                continue
            owner = next((name for name in wrapped if key.startswith(f"{name}.")), None)
            if owner is None:
                weights.add(key, tensor)
            elif key.startswith(f"{owner}.adapter."):
                adapter_weights[key] = tensor
            else:  # the wrapped base module, saved under its own name as `adapters_removed` has it
                weights.add(f"{owner}." + key[len(f"{owner}.base_layer.") :], tensor)
        if main:
            weights.finish()
            plain.config.architectures = [type(plain).__name__]
            plain.config.save_pretrained(staging)
            if getattr(plain, "generation_config", None) is not None and plain.can_generate():
                plain.generation_config.save_pretrained(staging)
            if method == "adapter":
                from safetensors.torch import save_file

                save_file(adapter_weights, str(staging / ADAPTER_WEIGHTS_FILE), metadata={"format": "pt"})
                description.update(houlsby_description(model))
            if tokenizer is not None:
                tokenizer.save_pretrained(staging)
            (staging / ADAPTATION_FILE).write_text(json.dumps(description, indent=2) + "\n")
    distributed.barrier()


def gathered_state(
    model: nn.Module, method: str, *, every_rank: bool = False
) -> Iterator[tuple[str, torch.Tensor | None]]:
    """(key, CPU tensor) of every saved weight, one module gathered at a time; the tensor is None off rank 0.

    Keys are those of the saved plain model: for LoRA merged, `W + (alpha/r) B A` under the base layer's name.
    Tied weights come once, under their first name, as `save_pretrained` writes them.
    With `every_rank` (each rank's own vLLM engine takes them) every rank gets the tensors, where they are and
    uncopied: each is valid only until the next is drawn, when its module's gather ends.
    """
    import deepspeed

    main = every_rank or distributed.is_main_process()
    taken = _uncopied if every_rank else _cpu_copy
    adapter = model.active_adapter if is_peft_model(model) else None
    root = model.get_base_model() if is_peft_model(model) else model
    saved_keys = set(root.state_dict(keep_vars=True))  # persistent buffers only; ZeRO-3 keeps it cheap
    seen: set[int] = set()
    lora_layers = _lora_layers(root) if method == "lora" else {}
    inside_lora = tuple(f"{name}." for name in lora_layers)
    for name, module in root.named_modules():
        if name.startswith(inside_lora):
            continue  # saved with its LoRA layer
        whole_layer = name in lora_layers
        own = list(module.parameters(recurse=whole_layer))
        with deepspeed.zero.GatheredParameters(own, modifier_rank=None):
            if whole_layer:
                yield from _merged_lora_layer(name, module, adapter, main, seen, taken)
                continue
            entries = [
                *module.named_parameters(prefix=name, recurse=False),
                *module.named_buffers(prefix=name, recurse=False),
            ]
            for key, tensor in entries:
                if key not in saved_keys or id(tensor) in seen:
                    continue
                seen.add(id(tensor))
                saved_key = plain_lora_key(key, adapter) if adapter is not None else key
                if saved_key is not None:
                    yield saved_key, taken(tensor) if main else None


def _merged_lora_layer(name: str, layer, adapter: str, main: bool, seen: set[int], taken):
    base_layer = layer.get_base_layer()
    weight = base_layer.weight
    seen.add(id(weight))
    merged = None
    if main:
        with torch.no_grad():
            merged = (
                weight + layer.get_delta_weight(adapter).to(weight.dtype)
                if adapter in layer.lora_A or adapter in layer.lora_embedding_A
                else weight
            )
    yield f"{name}.weight", taken(merged) if main else None
    for local, tensor in base_layer.named_parameters(recurse=False):
        if local != "weight" and id(tensor) not in seen:
            seen.add(id(tensor))
            yield f"{name}.{local}", taken(tensor) if main else None


def _lora_layers(root: nn.Module) -> dict[str, nn.Module]:
    from peft.tuners.lora import LoraLayer

    return {name: module for name, module in root.named_modules() if isinstance(module, LoraLayer)}


def _uncopied(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach()


def _cpu_copy(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().to("cpu", copy=True).contiguous()


class ShardWriter:
    """safetensors files of at most `max_bytes` each (one larger tensor gets a file of its own), named and indexed
    as `save_pretrained` names them once the last is written.

    Each tensor's bytes go to disk when it is added, so rank 0 holds one module's tensors, never a shard's: the
    open shard's data is appended to a side file, and when the shard closes its header (which needs every
    offset) is written and the data copied after it in chunks. safetensors' own `save_file` would hold the whole
    shard and a bytes copy of each tensor (benchmarks/RESULTS.md, section 4b).
    """

    COPY_CHUNK = 16 << 20

    def __init__(self, directory: Path, max_bytes: int):
        self.directory, self.max_bytes = Path(directory), max_bytes
        self.entries: dict[str, dict] = {}  # the open shard's header entries
        self.data = None  # the open shard's side file
        self.pending_bytes = 0
        self.files: list[tuple[str, list[str]]] = []  # (temporary name, keys)
        self.total_bytes = 0

    def add(self, key: str, tensor: torch.Tensor) -> None:
        tensor = tensor.detach().to("cpu").contiguous()
        size = tensor.numel() * tensor.element_size()
        if self.entries and self.pending_bytes + size > self.max_bytes:
            self._flush()
        if self.data is None:
            self.data = open(self.directory / f"shard-{len(self.files):05d}.data", "wb")
        self.entries[key] = {
            "dtype": SAFETENSORS_DTYPES[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [self.pending_bytes, self.pending_bytes + size],
        }
        if size:
            self.data.write(tensor.reshape(-1).view(torch.uint8).numpy().data)
        self.pending_bytes += size
        self.total_bytes += size

    def _flush(self) -> None:

        name = f"shard-{len(self.files):05d}.tmp"
        header = json.dumps({"__metadata__": {"format": "pt"}, **self.entries}, separators=(",", ":")).encode()
        header += b" " * (-len(header) % 8)  # the data starts 8-byte aligned, as safetensors writes it
        data_path = Path(self.data.name) if self.data is not None else None
        if self.data is not None:
            self.data.close()
        with open(self.directory / name, "wb") as out:
            out.write(struct.pack("<Q", len(header)))
            out.write(header)
            if data_path is not None:
                with open(data_path, "rb") as data:
                    shutil.copyfileobj(data, out, self.COPY_CHUNK)
        if data_path is not None:
            data_path.unlink()
        self.files.append((name, list(self.entries)))
        self.entries, self.data, self.pending_bytes = {}, None, 0

    def finish(self) -> None:
        if self.entries or not self.files:
            self._flush()
        if len(self.files) == 1:
            os.replace(self.directory / self.files[0][0], self.directory / SAFE_WEIGHTS)
            return
        weight_map = {}
        for number, (temporary, keys) in enumerate(self.files, start=1):
            final = f"model-{number:05d}-of-{len(self.files):05d}.safetensors"
            os.replace(self.directory / temporary, self.directory / final)
            weight_map.update({key: final for key in keys})
        index = {"metadata": {"total_size": self.total_bytes}, "weight_map": weight_map}
        (self.directory / SAFE_WEIGHTS_INDEX).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")

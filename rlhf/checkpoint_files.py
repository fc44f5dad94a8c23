"""Whether a checkpoint directory is whole, and whether it is safe to load.

A kill or a full disk during a save leaves files cut short; a checkpoint copied from elsewhere may hold a pickle
that runs code when loaded. Before a resume, each file is checked by what it claims to be, without loading it:

    *.json               parses, read up to a cap (bounded_json.read_small_json)
    *.safetensors        its header parses and its tensors end exactly where the file does
    *.pt, *.pth, *.bin   a whole zip archive (torch.save's format) whose pickle names only allowed types

and every load then runs with `weights_only=True` forced (`weights_only_loading`), DeepSpeed's own loads
included: DeepSpeed passes `weights_only=False`, and torch's TORCH_FORCE_WEIGHTS_ONLY_LOAD overrides it.
"""

from __future__ import annotations

import contextlib
import os
import struct
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from rlhf import _compat, bounded_json
from rlhf.errors import DataError, RLHFError
from rlhf.io import disk_full_detail

# Written by the Trainer for people to read back by hand; the Trainer never loads it, nor do we.
NEVER_LOADED = {"training_args.bin"}
TORCH_SUFFIXES = {".pt", ".pth", ".bin"}
# safetensors refuses a header over 100 MB (its MAX_HEADER_SIZE); we do too, before reading one.
SAFETENSORS_MAX_HEADER_BYTES = 100_000_000


class UnsafeCheckpointError(RLHFError):
    """A checkpoint file pickles a type that weights and optimiser states never hold."""


def allowed_types() -> list[type]:
    """The non-tensor types that the states of the Trainer and of DeepSpeed hold, and nothing else.

    numpy's come from the Trainer's RNG state (the same list transformers allows); DeepSpeed's from its ZeRO
    optimiser states (the loss scaler, the stage, the fragment addresses of ZeRO-1/2).
    """
    import numpy as np

    types = [_compat.numpy_array_reconstructor(), np.ndarray, np.dtype, type(np.dtype(np.uint32))]
    with contextlib.suppress(ImportError):
        from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
        from deepspeed.runtime.zero.config import ZeroStageEnum
        from deepspeed.utils.tensor_fragment import fragment_address

        types += [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]
    return types


def _qualified_names(types: Iterable) -> set[str]:
    return {f"{kind.__module__}.{kind.__qualname__}" for kind in types}


def file_problem(path: Path) -> str | None:
    """Why `path` is not a whole file of its kind (truncated, empty, random), or None when it is. A JSON file is
    read up to a cap and its nesting bounded (a config.json linked to /dev/zero, or nested 10^5 deep)."""
    try:
        if path.suffix == ".json":
            bounded_json.read_small_json(path)
        elif path.suffix == ".safetensors":
            return safetensors_problem(path)
        elif path.suffix in TORCH_SUFFIXES and path.name not in NEVER_LOADED:
            return _zip_problem(path)
    except DataError as error:
        return error.reason
    except (OSError, ValueError) as error:
        return f"unreadable ({' '.join(str(error).split())})"
    return None


def check_model_directory(directory: Path) -> None:
    """Refuse, in one line naming the file, a model directory whose weights or configs are cut short,
    empty or not what their names say: safetensors would otherwise fail deep inside from_pretrained."""
    for path in sorted(directory.glob("*.safetensors")) + sorted(directory.glob("*.json")):
        problem = file_problem(path)
        if problem:
            raise ModelFileError(f"{path}: {problem}")


class ModelFileError(RLHFError):
    """A file of a model directory is damaged."""


def safetensors_problem(path: Path) -> str | None:
    """A safetensors file is an 8-byte header length, a JSON header, then the tensors' bytes to the end."""
    size = path.stat().st_size
    if size < 8:
        return f"not a safetensors file ({size} bytes)"
    with open(path, "rb") as file:
        (header_length,) = struct.unpack("<Q", file.read(8))
        if header_length > size - 8:
            return "not a safetensors file, or cut short (its header runs past the end)"
        if header_length > SAFETENSORS_MAX_HEADER_BYTES:
            return f"not a safetensors file (a header of {header_length} bytes, over safetensors' own limit)"
        try:
            header = bounded_json.loads(file.read(header_length).decode("utf-8"))
        except ValueError:  # not UTF-8, not JSON, or nested too deep
            return "not a safetensors file (its header is not JSON)"
    if not isinstance(header, dict):
        return "not a safetensors file (its header is not a mapping)"
    ends = [
        entry["data_offsets"][1]
        for key, entry in header.items()
        if key != "__metadata__" and isinstance(entry, dict) and len(entry.get("data_offsets", ())) == 2
    ]
    expected = 8 + header_length + max(ends, default=0)
    if expected != size:
        return f"cut short or padded: {size} bytes where its header describes {expected}"
    return None


def _zip_problem(path: Path) -> str | None:
    size = path.stat().st_size
    try:
        with zipfile.ZipFile(path) as archive:
            for member in archive.infolist():
                if member.header_offset + member.compress_size > size:
                    return "cut short (a member runs past the end of the file)"
    except zipfile.BadZipFile:
        return f"cut short or not written by torch.save ({size} bytes, not a whole zip archive)"
    return None


def directory_problem(directory: Path, required: Iterable[str] = ()) -> str | None:
    """The first reason `directory` is not a whole checkpoint ("<file>: <why>"), or None."""
    for name in required:
        if not (directory / name).exists():
            return f"{directory / name}: missing"
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        problem = file_problem(path)
        if problem:
            return f"{path}: {problem}"
    return None


def check_safe_to_load(directory: Path) -> None:
    """Refuse a checkpoint any of whose torch files pickles a type outside `allowed_types` (read, never run)."""
    import torch

    allowed = _qualified_names(allowed_types())
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        if path.suffix not in TORCH_SUFFIXES or path.name in NEVER_LOADED:
            continue
        try:
            found = set(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
        except (RuntimeError, OSError, ValueError) as error:
            raise UnsafeCheckpointError(
                f"{path}: cannot be read as a torch checkpoint ({' '.join(str(error).split())[:200]})"
            ) from None
        refused = sorted(found - allowed)
        if refused:
            raise UnsafeCheckpointError(
                f"{path}: refusing to load it: it pickles {', '.join(refused)}, which weights and optimiser states "
                f"never hold (checkpoints load with weights_only=True; a file like this can run code)"
            )


@contextlib.contextmanager
def weights_only_loading() -> Iterator[None]:
    """Every torch.load in the block with weights_only=True, the allowed types added, whatever its caller asked."""
    import torch

    saved = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        with torch.serialization.safe_globals(allowed_types()):
            yield
    finally:
        if saved is None:
            os.environ.pop("TORCH_FORCE_WEIGHTS_ONLY_LOAD", None)
        else:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = saved


def newest_whole(candidates: Iterable[tuple[int, Path]], required: Iterable[str] = ()) -> tuple[Path | None, list[str]]:
    """The whole checkpoint with the highest step among (step, directory) pairs, and why each newer one is not.

    The chosen one is also checked for unsafe pickles (`check_safe_to_load`), which is an error, not a fallback:
    a checkpoint that was tampered with is something to tell the user about, not to step over.
    """
    required = list(required)
    passed_over: list[str] = []
    for _, directory in sorted(candidates, reverse=True):
        problem = directory_problem(directory, required)
        if problem is None:
            check_safe_to_load(directory)
            return directory, passed_over
        passed_over.append(problem)
    return None, passed_over


def fallback_message(chosen: Path | None, passed_over: list[str]) -> str:
    """What to tell the user when damaged checkpoints were stepped over ("" when none was)."""
    if not passed_over:
        return ""
    damaged = "; ".join(passed_over)
    target = f"resuming from {chosen}" if chosen is not None else "no whole checkpoint is left, starting afresh"
    return f"skipping damaged checkpoint(s) ({damaged}): {target}"


def disk_full_message(
    where: Path,
    error: BaseException,
    removed: Iterable[Path],
    last_whole: Path | None,
    left_for_next_run: Iterable[Path] = (),
) -> str:
    removed = [str(path) for path in removed]
    left = [str(path) for path in left_for_next_run]
    return (
        f"no space left on device writing {where} ({disk_full_detail(error)}); "
        + (f"removed the partial {', '.join(removed)}; " if removed else "")
        + (
            f"left the partial {', '.join(left)}, as other ranks may still have been writing into it "
            f"(--resume steps over it); "
            if left
            else ""
        )
        + f"the last whole checkpoint is {last_whole or 'none'}: free space and re-run with --resume"
    )

"""Every use of another library's private API, in one place (checked on the versions in constraints.txt).

A version bump that drops one of these fails tests/test_compat.py by name, instead of breaking a stage at run
time. Each function says what it reaches into and why no public API does the job.

| what                                              | library      | checked on |
|---------------------------------------------------|--------------|------------|
| `ArgumentParser._actions`                         | argparse     | Python 3.10 to 3.13 |
| `integrations.deepspeed._hf_deepspeed_config_weak_ref` | transformers | 5.23.0 |
| `PretrainedConfig._attn_implementation`           | transformers | 5.23.0 |
| `PreTrainedModel._load_pretrained_model`, `LoadStateDictInfo`         | transformers | 5.23.0 |
| `core_model_loading.rename_source_key`            | transformers | 5.23.0 |
| `._is_hf_initialized`, `._weight_conversions` (parameters, modules) | transformers | 5.23.0 |
| `Trainer._prepare_inputs`                         | transformers | 5.23.0 |
| `PartialState._prepare_backend`                   | accelerate   | 1.15.0 |
| `DeepSpeedZeRoOffload._remove_module_hooks`, `.forward_hooks`, `.backward_hooks` | deepspeed | 0.19.8 |
| `parameter_offload.FWD_MODULE_STACK`              | deepspeed    | 0.19.8 |
| `DeepSpeedZeroOptimizer_Stage3.fp32_partitioned_groups_flat`, `.fp16_partitioned_groups_flat` | deepspeed | 0.19.8 |
| `SFTTrainer.padding_free` (set in `__init__`, undocumented) | trl  | 1.16.0 |
| `SFTTrainer._total_train_tokens`                  | trl          | 1.16.0 |
| `tqdm._instances`                                 | tqdm         | 4.70.1 |
| `distributed_c10d._world.pg_names`                | torch        | 2.13.0 |
| `Module._parameters`, `._buffers`, `._modules`, `._non_persistent_buffers_set` | torch | 2.13.0 |
| `numpy._core.multiarray._reconstruct` (`numpy.core` before 2.0) | numpy | 2.x |
| `DeepSpeedEngine.enable_backward_allreduce`, `Parameter.ds_persist` (undocumented) | deepspeed | 0.19.8 |
| the `/dev/shm` file name of DeepSpeed's CPU all-reduce buffer | deepspeed | 0.19.8 |

Imports nothing heavy at module level: each function imports its library when called.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Any


def parser_actions(parser) -> list:
    """argparse keeps its actions in a private list; HfArgumentParser gives no other way to retype one."""
    return parser._actions


@contextlib.contextmanager
def zero3_init_disabled() -> Iterator[None]:
    """Load models whole on this rank alone, even while a ZeRO-3 run has `from_pretrained` load partitions.

    transformers decides through a module-level weak reference to the Trainer's DeepSpeed config; there is no
    public switch to turn partitioned loading off for one load.
    """
    from transformers.integrations import deepspeed as hf_deepspeed

    saved = hf_deepspeed._hf_deepspeed_config_weak_ref
    hf_deepspeed._hf_deepspeed_config_weak_ref = None
    try:
        yield
    finally:
        hf_deepspeed._hf_deepspeed_config_weak_ref = saved


@contextlib.contextmanager
def zero3_init_from(ds_config: dict[str, Any]) -> Iterator[None]:
    """Inside the block, `from_pretrained` builds every parameter partitioned over the ranks (DeepSpeed's
    `zero.Init` with `ds_config`) and rank 0 streams the checkpoint in one module at a time, as the Trainer has it
    for the SFT and RM stages; after it, loading is as it was before.

    transformers reads the config through the same module-level weak reference as `zero3_init_disabled`; its
    public `HfDeepSpeedConfig` sets it but offers no way back to the previous one (the Trainer's, if any).
    """
    from transformers.integrations import HfDeepSpeedConfig
    from transformers.integrations import deepspeed as hf_deepspeed

    saved = hf_deepspeed._hf_deepspeed_config_weak_ref
    held = HfDeepSpeedConfig(ds_config)  # referenced here: the weak reference dies with it
    try:
        yield
    finally:
        del held
        hf_deepspeed._hf_deepspeed_config_weak_ref = saved


@contextlib.contextmanager
def pretrained_loading_replaced(load) -> Iterator[None]:
    """Inside the block, `from_pretrained` reads its checkpoint files through
    `load(model, checkpoint_files, load_config, transformers_load)`, which returns what transformers'
    `_load_pretrained_model` returns ((LoadStateDictInfo, disk offload index)); `transformers_load()` runs
    transformers' own reading. Everything before (config, dtype, construction) and after (initialising missing
    weights, tying, the report) stays transformers'.

    Reading is the only step of `from_pretrained` with no public hook: its ZeRO-3 branch reads every checkpoint
    file whole into one state dict on rank 0 (rlhf.partitioned_load streams it instead).
    """
    from transformers.modeling_utils import PreTrainedModel

    saved = PreTrainedModel.__dict__["_load_pretrained_model"]
    original = saved.__func__

    def replaced(model, state_dict, checkpoint_files, load_config, expected_keys=None):
        def transformers_load():
            return original(model, state_dict, checkpoint_files, load_config, expected_keys)

        if state_dict is not None or expected_keys is not None:
            return transformers_load()
        return load(model, checkpoint_files, load_config, transformers_load)

    PreTrainedModel._load_pretrained_model = staticmethod(replaced)
    try:
        yield
    finally:
        PreTrainedModel._load_pretrained_model = saved


def zero3_load_can_be_replaced(load_config) -> bool:
    """Whether transformers takes its ZeRO-3 branch for this load (its own test)."""
    from transformers.integrations import is_deepspeed_zero3_enabled

    return is_deepspeed_zero3_enabled() and not load_config.is_quantized


def weight_mapping_changes_keys(load_config, checkpoint_keys) -> bool:
    """Whether transformers' weight conversions for this model (renamings, fused or split tensors) would rename
    or convert any of the checkpoint's keys; the base model's prefix is left out (rlhf.partitioned_load maps it)."""
    from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key

    mapping = load_config.weight_mapping or []
    renamings = [entry for entry in mapping if isinstance(entry, WeightRenaming)]
    converters = [entry for entry in mapping if isinstance(entry, WeightConverter)]
    for key in checkpoint_keys:
        renamed, converter_pattern = rename_source_key(key, renamings, converters)
        if renamed != key or converter_pattern is not None:
            return True
    return False


def mark_as_loaded(tensor) -> None:
    """Flag a parameter or buffer filled from the checkpoint, so that from_pretrained does not initialise it."""
    tensor._is_hf_initialized = True


def loading_info(model, missing_keys: set[str], error_msgs: list[str]):
    """What `_load_pretrained_model` returns for a load that used no weight conversion (like its ZeRO-3 branch,
    it reports no unexpected keys)."""
    from transformers.utils.loading_report import LoadStateDictInfo

    model._weight_conversions = []  # none was used, so save_pretrained has none to revert
    return LoadStateDictInfo(
        missing_keys=missing_keys,
        unexpected_keys=set(),
        mismatched_keys=set(),
        error_msgs=error_msgs,
        conversion_errors={},
        skipped_pp_keys=set(),
    ), None


def attention_implementation(model_config) -> str | None:
    """The attention a loaded model runs ('sdpa', 'eager', 'flash_attention_2', ...); transformers keeps it private."""
    return getattr(model_config, "_attn_implementation", None)


def prepare_trainer_inputs(trainer, inputs: dict[str, Any]) -> dict[str, Any]:
    """Move a batch to the Trainer's device as its own steps do; an overridden `prediction_step` has to call it."""
    return trainer._prepare_inputs(inputs)


def sft_trainer_is_padding_free(trainer) -> bool:
    """Whether TRL's SFTTrainer flattens each batch into one row (its packing), an attribute it does not document."""
    return bool(getattr(trainer, "padding_free", False))


def restore_sft_token_count(trainer, count: int | None) -> None:
    """Give a resumed SFTTrainer the training tokens counted before its checkpoint. TRL counts them (its logged
    `num_tokens`) in a private attribute that its checkpoints do not keep, so a resumed run would count from 0."""
    if count is not None and hasattr(trainer, "_total_train_tokens"):
        trainer._total_train_tokens = count


def close_progress_bars() -> None:
    """Close every progress bar still open (the Trainer's, when a run stops part-way), so that none redraws itself
    below the command's last line when the interpreter exits. tqdm lists its open bars only in a private set; a
    process that never imported tqdm has none."""

    tqdm = sys.modules.get("tqdm")
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", ())):
        bar.close()


def let_accelerate_see_cpu_ranks() -> None:
    """Make the Trainer count every rank when the `deepspeed` launcher runs it on CPUs.

    accelerate picks a process-group backend only for accelerators or an explicit CPU run; under the
    `deepspeed` launcher with no GPU it picks none and reports a world of one process, so DeepSpeed's
    batch-size check fails (16 != 16 * 1 * 2) and every rank would see the whole data set. Asking its private
    `_prepare_backend` for the CPU backend (gloo) keeps everything else DeepSpeed's. Harmless where a GPU is.
    """
    if "LOCAL_RANK" not in os.environ:
        return
    import torch

    if torch.cuda.is_available():
        return
    from accelerate.state import PartialState

    original = PartialState._prepare_backend
    if getattr(original, "counts_cpu_ranks", False):
        return

    def prepare_backend(self, cpu: bool = False, sagemaker_dp: bool = False, backend: str | None = None):
        return original(self, True, sagemaker_dp, backend)

    prepare_backend.counts_cpu_ranks = True
    PartialState._prepare_backend = prepare_backend


def zero3_offload_of(engine):
    """The ZeRO-3 parameter coordinator of a DeepSpeed engine (where its module hooks live), or None."""
    return getattr(engine.optimizer, "parameter_offload", None) or getattr(engine, "parameter_offload", None)


def can_remove_zero3_hooks(offload) -> bool:
    return all(hasattr(offload, name) for name in ("_remove_module_hooks", "setup_zero_stage3_hooks"))


@contextlib.contextmanager
def zero3_hooks_removed(offload) -> Iterator[None]:
    """ZeRO-3's module hooks taken off for the block and put back after.

    DeepSpeed has no public way to run a gathered module without its hooks (DeepSpeed-Chat's hybrid engine
    does the same from inside DeepSpeed). `_remove_module_hooks` removes the hooks but keeps their dead handles
    in `forward_hooks` and `backward_hooks`, to which `setup_zero_stage3_hooks` then appends the new ones; the
    lists are emptied here, so that they stay one model's worth long across rollouts. Putting the hooks back
    pushes the module on DeepSpeed's forward stack a second time, so the stack is kept level.
    """
    from deepspeed.runtime.zero import parameter_offload

    offload._remove_module_hooks()
    offload.forward_hooks.clear()
    offload.backward_hooks.clear()
    try:
        yield
    finally:
        depth = len(parameter_offload.FWD_MODULE_STACK)
        offload.setup_zero_stage3_hooks()
        del parameter_offload.FWD_MODULE_STACK[depth:]


def share_fp32_master_weights(engine) -> int:
    """Under ZeRO-3 with float32 parameters, let the optimiser update the parameter partitions themselves instead
    of a float32 copy of them; returns the number of elements no longer copied.

    DeepSpeed means to share them when the partitions are already float32 on the optimiser's device (its branch
    for torch autocast), but it compares a `torch.device` with a device-name string, which is never equal, so
    every float32 run keeps a second float32 copy of its partition: 4 more bytes per parameter and process than
    ZeRO's 4 (parameter) + 4 (gradient) + 8 (Adam) for float32. Pointing the master tensors at the partitions keeps
    the tensor objects the optimiser and its state know; DeepSpeed's copies between the two become self-copies.
    Nothing changes where the master weights differ in dtype (bf16) or place (optimiser offload).
    """
    optimizer = getattr(engine, "optimizer", None)
    masters = getattr(optimizer, "fp32_partitioned_groups_flat", None)
    partitions = getattr(optimizer, "fp16_partitioned_groups_flat", None)
    if not masters or partitions is None or getattr(optimizer, "offload_optimizer", False):
        return 0
    shared = 0
    for master, partition in zip(masters, partitions):
        if (
            partition is None
            or master.dtype != partition.dtype
            or master.device != partition.device
            or master.numel() != partition.numel()
            or master.data_ptr() == partition.data_ptr()
        ):
            continue
        master.data = partition.data
        shared += partition.numel()
    return shared


def process_groups_in_creation_order() -> list:
    """Every process group this rank belongs to, the default group first. torch registers groups as they are made
    in a private list; there is no public way to enumerate them."""
    from torch.distributed import distributed_c10d

    return list(distributed_c10d._world.pg_names)


def unlink_deepspeed_cpu_all_reduce_buffer() -> None:
    """Remove this rank's `/dev/shm` file of DeepSpeed's CPU all-reduce buffer, which DeepSpeed maps and never
    unlinks; the file name is its private convention. The mappings of ranks still running stay valid."""
    name = (
        f"deepspeed_allreduce_buffer_{os.getuid()}_{os.environ.get('MASTER_ADDR', '')}_"
        f"{os.environ.get('MASTER_PORT', '')}_{os.environ.get('RANK', '0')}"
    )
    with contextlib.suppress(OSError):
        os.unlink(os.path.join("/dev/shm", name))


def own_tensors_and_children(module) -> tuple[dict, dict, dict]:
    """(parameters, persistent buffers, children) a module holds itself, by local name, as `state_dict` walks them.
    `named_parameters` and friends deduplicate shared tensors and modules, which loading by key must not."""
    buffers = {
        name: buffer for name, buffer in module._buffers.items() if name not in module._non_persistent_buffers_set
    }
    return module._parameters, buffers, module._modules


def numpy_array_reconstructor():
    """The function numpy pickles arrays through (`numpy._core.multiarray._reconstruct`; `numpy.core` before 2.0),
    which an unpickler's allow-list must name."""
    import numpy as np

    numpy_core = np._core if hasattr(np, "_core") else np.core
    return numpy_core.multiarray._reconstruct


def skip_backward_all_reduce(engine) -> None:
    """Stop a DeepSpeed engine all-reducing gradients after each backward. Its engine has the switch as a plain
    attribute and no public setter."""
    engine.enable_backward_allreduce = False


@contextlib.contextmanager
def zero3_parameters_persistent(parameters) -> Iterator[None]:
    """Inside the block, ZeRO-3 keeps `parameters` gathered between forwards (its undocumented `ds_persist` flag,
    which it sets itself for small parameters); after it, each flag is as it was."""
    saved = [getattr(parameter, "ds_persist", False) for parameter in parameters]
    for parameter in parameters:
        parameter.ds_persist = True
    try:
        yield
    finally:
        for parameter, flag in zip(parameters, saved):
            parameter.ds_persist = flag

"""Run by tests/test_partitioned_load.py on every rank of a 2-process `deepspeed` launch (gloo on CPU).

    python -m deepspeed.launcher.runner --num_gpus 2 tests/helpers/partitioned_load_probe.py CASES_JSON OUT_DIR

Each case loads one checkpoint under ZeRO-3 twice, seeded alike: through `load_adapted` (the project's path,
streamed module by module) and through transformers' own `from_pretrained` with the same arguments. Rank 0 writes
both models' gathered weights to OUT_DIR/<case>/{streamed,transformers}.safetensors; every rank writes
OUT_DIR/rank<r>.json with whether the streamed loader ran, whether tied weights are still tied, and, for the
memory case, the peak RSS increase of each load (VmHWM reset just before it).
"""

from __future__ import annotations

import gc
import json
import sys
from pathlib import Path

import torch

from tests.helpers.ppo_setup import REPO

ZERO3 = {
    "train_micro_batch_size_per_gpu": 1,
    "train_batch_size": 2,
    "steps_per_print": 1000000,
    "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
}


def transformers_load(path: str, task: str, dtype):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    model_class, extra = (
        (AutoModelForSequenceClassification, {"num_labels": 1}) if task == "reward" else (AutoModelForCausalLM, {})
    )
    return model_class.from_pretrained(path, dtype=dtype, use_safetensors=True, attn_implementation="sdpa", **extra)


def gathered_weights(model) -> dict[str, torch.Tensor]:
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None):
        return {key: tensor.detach().clone() for key, tensor in model.state_dict().items()}


def tied(model) -> bool | None:
    output, embedding = model.get_output_embeddings(), model.get_input_embeddings()
    return None if output is None else output.weight is embedding.weight


def peak_increase_mb(load):
    """(model, rank's peak RSS increase in MB while `load()` ran)."""
    from benchmarks.memory_phases import malloc_trim, reset_high_water_mark, status_mb

    gc.collect()
    malloc_trim()
    reset_high_water_mark()
    start = status_mb("VmRSS")
    model = load()
    return model, status_mb("VmHWM") - start


class WithBuffer(torch.nn.Module):
    """No family the tests build has a persistent buffer or a parameter shared by two modules; this has both."""

    def __init__(self):
        super().__init__()
        self.body = torch.nn.Linear(4, 3)
        self.head = torch.nn.Linear(4, 3, bias=False)
        self.head.weight = self.body.weight  # shared: filled once
        self.extra = torch.nn.Linear(3, 2)  # not in the checkpoint: reported missing
        self.register_buffer("scale", torch.zeros(3))


def load_plain_module(checkpoint: str, out: Path, rank: int) -> dict:
    """`load_module_by_module` itself, on a module built under zero.Init: what rank 0 wrote, and what it reports."""
    import deepspeed
    from safetensors.torch import save_file

    from rlhf.partitioned_load import load_module_by_module

    marked = []
    with deepspeed.zero.Init(config_dict_or_path=ZERO3):
        module = WithBuffer()
    missing, errors = load_module_by_module(module, [checkpoint], marked.append)
    weights = gathered_weights(module)
    if rank == 0:
        del weights["head.weight"]  # body.weight, under its second name
        save_file(weights, str(out / "plain.safetensors"))
    return {
        "missing": sorted(missing),
        "errors": errors,
        "marked": len(marked),
        "shared": module.head.weight is module.body.weight,
    }


def main(cases_path: str, out_dir: str) -> None:
    from safetensors.torch import save_file

    from rlhf import distributed, host_memory, partitioned_load
    from rlhf.adaptation.checkpoint import load_adapted
    from rlhf.models import partitioned_loading
    from rlhf.ppo.engines import init_distributed

    cases = json.loads(Path(cases_path).read_text())
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    init_distributed()
    host_memory.return_freed_blocks_to_os()  # as every stage does before loading
    rank = distributed.global_rank()
    streamed_calls = []
    original = partitioned_load.load_module_by_module

    def counted(*args, **kwargs):
        streamed_calls.append(1)
        return original(*args, **kwargs)

    partitioned_load.load_module_by_module = counted
    report = {}
    plain_case = cases.pop("plain_module", None)
    for name, case in cases.items():
        dtype = getattr(torch, case["dtype"]) if case.get("dtype") else None
        loads = {
            "streamed": lambda case=case, dtype=dtype: load_adapted(case["path"], task=case["task"], torch_dtype=dtype),
            "transformers": lambda case=case, dtype=dtype: transformers_load(case["path"], case["task"], dtype),
        }
        record = {}
        for how, load in loads.items():  # streamed first: it inherits no heap the other load freed
            before = len(streamed_calls)
            torch.manual_seed(0)  # a new head is initialised from the same draws both ways
            ds_config = {**ZERO3, "bf16": {"enabled": True}} if case.get("bf16") else ZERO3
            with partitioned_loading(ds_config):
                model, increase_mb = peak_increase_mb(load)
            record[how] = {
                "streamed": len(streamed_calls) > before,
                "tied": tied(model),
                "peak_increase_mb": increase_mb,
                "dtype": str(next(model.parameters()).dtype),
            }
            if not case.get("memory_only"):
                weights = gathered_weights(model)
                if rank == 0:
                    (out / name).mkdir(parents=True, exist_ok=True)
                    save_file(weights, str(out / name / f"{how}.safetensors"))
                del weights
            del model
            distributed.barrier()
        report[name] = record
    if plain_case is not None:
        report["plain_module"] = load_plain_module(plain_case["path"], out, rank)
    (out / f"rank{rank}.json").write_text(json.dumps(report, indent=2))
    # As the stages end (rlhf.stages.prologue): queued ZeRO-3 work finished, then out without the interpreter's
    # teardown, which aborts a rank now and then while gloo's threads still run.
    distributed.finish_pending_work()
    distributed.shutdown()
    distributed.exit_after_success()


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main(*[argument for argument in sys.argv[1:] if not argument.startswith("--local_rank")])

"""Each private API that rlhf._compat reaches into still exists in the installed versions.

A failure here names the library and the attribute: update rlhf/_compat.py (and its table) for the new version.
"""

from __future__ import annotations

import argparse
import inspect

from rlhf import _compat


def test_argparse_keeps_its_actions_in_a_list():
    parser = argparse.ArgumentParser()
    parser.add_argument("--x")
    assert [action.dest for action in _compat.parser_actions(parser)] == ["help", "x"]


def test_transformers_decides_zero3_loading_through_a_module_weak_reference():
    from transformers.integrations import deepspeed as hf_deepspeed

    assert hasattr(hf_deepspeed, "_hf_deepspeed_config_weak_ref")
    with _compat.zero3_init_disabled():
        assert not hf_deepspeed.is_deepspeed_zero3_enabled()
    before = hf_deepspeed._hf_deepspeed_config_weak_ref
    with _compat.zero3_init_from({"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 3}}):
        assert hf_deepspeed.is_deepspeed_zero3_enabled()
        assert hf_deepspeed.deepspeed_config()["zero_optimization"]["stage"] == 3
    assert hf_deepspeed._hf_deepspeed_config_weak_ref is before


def test_transformers_configs_record_their_attention_implementation():
    from transformers import LlamaConfig

    config = LlamaConfig(vocab_size=8, hidden_size=8, intermediate_size=8, num_hidden_layers=1, num_attention_heads=1)
    config._attn_implementation = "sdpa"
    assert _compat.attention_implementation(config) == "sdpa"


def test_the_trainer_moves_batches_with_prepare_inputs():
    from transformers import Trainer

    assert "inputs" in inspect.signature(Trainer._prepare_inputs).parameters


def test_trl_sft_trainer_sets_padding_free():
    from trl import SFTTrainer

    assert "self.padding_free" in inspect.getsource(SFTTrainer.__init__)


def test_trl_sft_trainer_counts_training_tokens_in_total_train_tokens():
    from trl import SFTTrainer

    assert "self._total_train_tokens = 0" in inspect.getsource(SFTTrainer)
    assert 'self._metrics[mode]["num_tokens"] = [self._total_train_tokens]' in inspect.getsource(SFTTrainer)


def test_accelerate_picks_its_backend_in_prepare_backend():
    from accelerate.state import PartialState

    assert list(inspect.signature(PartialState._prepare_backend).parameters)[:4] == [
        "self",
        "cpu",
        "sagemaker_dp",
        "backend",
    ]


def test_deepspeed_zero3_hooks_can_be_taken_off_and_put_back():
    from deepspeed.runtime.zero import parameter_offload

    offload_class = parameter_offload.DeepSpeedZeRoOffload
    assert _compat.can_remove_zero3_hooks(offload_class)
    assert isinstance(parameter_offload.FWD_MODULE_STACK, list)


def test_from_pretrained_reads_checkpoints_through_load_pretrained_model(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM, modeling_utils

    config = LlamaConfig(vocab_size=8, hidden_size=8, intermediate_size=8, num_hidden_layers=1, num_attention_heads=1)
    LlamaForCausalLM(config).save_pretrained(tmp_path)
    seen = []

    def load(model, checkpoint_files, load_config, transformers_load):
        seen.append((checkpoint_files, load_config.pretrained_model_name_or_path, load_config.is_quantized))
        assert _compat.loading_info(model, set(), [])[0].missing_keys == set()
        return transformers_load()

    original = modeling_utils.PreTrainedModel.__dict__["_load_pretrained_model"]
    with _compat.pretrained_loading_replaced(load):
        model = LlamaForCausalLM.from_pretrained(str(tmp_path))
    assert modeling_utils.PreTrainedModel.__dict__["_load_pretrained_model"] is original
    assert seen == [([str(tmp_path / "model.safetensors")], str(tmp_path), False)]
    assert model.model.norm.weight.shape == (8,)
    # What marks a weight as loaded, so that it is not initialised again.
    assert "_is_hf_initialized" in inspect.getsource(modeling_utils.PreTrainedModel._initialize_missing_keys)
    assert not _compat.zero3_load_can_be_replaced(modeling_utils.LoadStateDictConfig())


def test_transformers_weight_conversions_rename_legacy_keys():
    from transformers.conversion_mapping import get_checkpoint_conversion_mapping
    from transformers.modeling_utils import LoadStateDictConfig

    load_config = LoadStateDictConfig(weight_mapping=get_checkpoint_conversion_mapping("legacy"))
    assert _compat.weight_mapping_changes_keys(load_config, ["encoder.LayerNorm.gamma"])
    assert not _compat.weight_mapping_changes_keys(load_config, ["model.norm.weight", "lm_head.weight"])


def test_tqdm_lists_its_open_bars_in_instances():
    import io

    from tqdm import tqdm

    bar = tqdm(total=2, file=io.StringIO())
    assert bar in tqdm._instances
    _compat.close_progress_bars()
    assert bar not in tqdm._instances


def test_torch_lists_process_groups_in_world_pg_names():
    from torch.distributed import distributed_c10d

    assert isinstance(distributed_c10d._world.pg_names, dict)


def test_deepspeed_names_its_cpu_all_reduce_buffer_as_we_unlink_it():
    from pathlib import Path

    import deepspeed

    source = (Path(deepspeed.__file__).parent / "ops" / "csrc" / "cpu" / "comm" / "shm.cpp").read_text()
    assert '#define SHM_BUFFER_NAME "deepspeed_allreduce_buffer"' in source
    assert '"%s_%d_%s_%s",\n             SHM_BUFFER_NAME,\n             getuid(),' in source  # then address, port


def test_modules_hold_their_own_tensors_and_children_in_private_dicts():
    import torch
    from torch import nn

    module = nn.Linear(2, 3)
    module.register_buffer("kept", torch.zeros(1))
    module.register_buffer("scratch", torch.zeros(1), persistent=False)
    module.child = nn.Identity()
    parameters, buffers, children = _compat.own_tensors_and_children(module)
    assert list(parameters) == ["weight", "bias"] and list(buffers) == ["kept"] and list(children) == ["child"]
    assert list(module.state_dict()) == ["weight", "bias", "kept"]


def test_numpy_pickles_arrays_through_the_reconstructor_we_allow():
    import numpy as np

    assert np.zeros(2).__reduce__()[0] is _compat.numpy_array_reconstructor()


def test_deepspeed_engines_switch_backward_all_reduce_with_a_plain_attribute():
    from deepspeed.runtime.engine import DeepSpeedEngine

    source = inspect.getsource(DeepSpeedEngine)
    assert "self.enable_backward_allreduce = True" in source and "if self.enable_backward_allreduce" in source


def test_zero3_keeps_parameters_gathered_by_their_ds_persist_flag():
    import torch
    from deepspeed.runtime.zero import partitioned_param_coordinator

    assert "ds_persist" in inspect.getsource(partitioned_param_coordinator)
    parameters = [torch.nn.Parameter(torch.zeros(1)) for _ in range(2)]
    parameters[1].ds_persist = True
    with _compat.zero3_parameters_persistent(parameters):
        assert all(parameter.ds_persist for parameter in parameters)
    assert [parameter.ds_persist for parameter in parameters] == [False, True]

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

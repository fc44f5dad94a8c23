"""rlhf.attention: every loading path and stage runs the attention implementation asked for, and one that cannot run is
one line before any work."""

from __future__ import annotations

import pytest

from tests.helpers.ppo_setup import engines_for, stage_arguments


def test_every_loading_path_runs_the_attention_asked_for(models, tmp_path):
    from rlhf import _compat
    from rlhf.adaptation.apply import apply_adaptation
    from rlhf.adaptation.checkpoint import load_adapted, save_adapted
    from rlhf.adaptation.config import AdaptationConfig
    from rlhf.models import load_tokenizer
    from rlhf.rm.model import load_reward_model

    tokenizer = load_tokenizer(models["policy"])
    saved = {}
    for method, extra in (("lora", dict(merge_lora_on_save=False)), ("adapter", dict(adapter_bottleneck=4))):
        adaptation = AdaptationConfig(adaptation_method=method, **extra)
        model = apply_adaptation(load_adapted(models["policy"], task="causal_lm"), adaptation, task="causal_lm")
        save_adapted(model, tokenizer, tmp_path / method, adaptation)
        saved[method] = str(tmp_path / method)
    for attention in ("eager", "sdpa"):
        loaded = [
            load_adapted(models["policy"], task="causal_lm", attn_implementation=attention),
            load_reward_model(models["reward"], attn_implementation=attention)[0],
            *(load_adapted(path, task="causal_lm", attn_implementation=attention) for path in saved.values()),
        ]
        assert [_compat.attention_implementation(model.config) for model in loaded] == [attention] * 4
    # sdpa unless asked otherwise, as transformers picks where a model supports it.
    assert _compat.attention_implementation(load_adapted(saved["lora"], task="causal_lm").config) == "sdpa"


def test_the_ppo_stage_runs_all_four_models_with_the_configured_attention(models, tmp_path):
    from rlhf import _compat

    _, _, engines = engines_for(models, tmp_path, attn_implementation="eager")
    inner = [engines.actor.module, engines.critic.module.model, engines.reference.module, engines.reward.module]
    assert [_compat.attention_implementation(model.config) for model in inner] == ["eager"] * 4


def test_the_sft_and_rm_stages_load_with_the_configured_attention(models, tmp_path):
    from types import SimpleNamespace

    from rlhf import _compat
    from rlhf.config import parse_config
    from rlhf.models import load_tokenizer
    from rlhf.rm.config import RMStageConfig
    from rlhf.sft.config import SFTStageConfig
    from rlhf.stages.prologue import load_trainable

    inputs = SimpleNamespace(model_path=models["policy"], tokenizer=load_tokenizer(models["policy"]))
    for config_class, task in ((SFTStageConfig, "causal_lm"), (RMStageConfig, "reward")):
        config = parse_config(
            config_class,
            ["--output_dir", str(tmp_path / "out"), "--report_to", "none", "--attn_implementation", "eager"],
        )
        assert _compat.attention_implementation(load_trainable(inputs, config, task).config) == "eager"


@pytest.mark.parametrize("attention", ["flash_attention_2", "flash_attention_3"])
def test_a_flash_attention_that_is_not_installed_is_one_line_before_any_work(models, tmp_path, attention):
    from transformers import utils

    from rlhf.attention import FLASH_ATTENTION
    from rlhf.config import parse_config
    from rlhf.errors import ConfigError
    from rlhf.rm.config import RMStageConfig
    from rlhf.sft.config import SFTStageConfig
    from rlhf.stages.ppo import PPOStageConfig

    assert not getattr(utils, FLASH_ATTENTION[attention])()  # this machine has no flash-attn
    ppo = stage_arguments(models, tmp_path / "run", tmp_path / "registry", attn_implementation=attention)
    sft = ["--output_dir", str(tmp_path / "out"), "--attn_implementation", attention]
    for config_class, argv in ((PPOStageConfig, ppo), (SFTStageConfig, sft), (RMStageConfig, sft)):
        with pytest.raises(ConfigError) as error:
            parse_config(config_class, argv)
        assert str(error.value) == (
            f"attn_implementation '{attention}' needs the flash-attn package, which is not "
            "installed here (pip install flash-attn on a CUDA machine); use 'sdpa'"
        )


def test_an_attention_the_model_does_not_implement_is_one_line(models):
    from rlhf.adaptation.checkpoint import load_adapted
    from rlhf.errors import ConfigError

    with pytest.raises(ConfigError, match="attn_implementation 'bogus'") as error:
        load_adapted(models["policy"], task="causal_lm", attn_implementation="bogus")
    assert "\n" not in str(error.value)

import json
from dataclasses import dataclass, field

import pytest

from rlhf.config import parse_config
from rlhf.errors import ConfigError
from tests.helpers import REPO


@dataclass
class Example:
    learning_rate: float = field(default=1e-3)
    name: str = "x"
    layers: list[int] = field(default_factory=lambda: [1])
    flag: bool = False


def test_yaml_fills_and_command_line_overrides(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("learning_rate: 3.0e-5\nname: from-yaml\nlayers: [2, 3]\nflag: true\n")
    parsed = parse_config(Example, ["--config", str(config), "--name", "from-cli"])
    assert parsed == Example(learning_rate=3e-5, name="from-cli", layers=[2, 3], flag=True)


def test_unknown_yaml_key_is_named(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("learning_rat: 1\n")
    with pytest.raises(ConfigError, match=r"c.yaml: unknown key 'learning_rat'"):
        parse_config(Example, ["--config", str(config)])


def test_unknown_flag_and_wrong_type_are_named(tmp_path):
    with pytest.raises(ConfigError, match="unknown argument '--nme' \\(not a field of Example\\)"):
        parse_config(Example, ["--nme", "x"])
    config = tmp_path / "c.yaml"
    config.write_text("learning_rate: fast\n")
    with pytest.raises(ConfigError, match="argument --learning_rate/--learning-rate: invalid float value: 'fast'"):
        parse_config(Example, ["--config", str(config)])


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        parse_config(Example, ["--config", str(tmp_path / "nope.yaml")])


def billion_laughs(levels: int = 9) -> str:
    """About 300 bytes of YAML that stand for 10**levels strings once every alias is written out."""
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for level in range(1, levels):
        previous, name = chr(ord("a") + level - 1), chr(ord("a") + level)
        lines.append(f"{name}: &{name} [{', '.join([f'*{previous}'] * 10)}]")
    return "\n".join(lines) + "\n"


def test_a_yaml_alias_bomb_is_refused_in_one_line_naming_the_file(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(billion_laughs())
    with pytest.raises(ConfigError) as raised:
        parse_config(Example, ["--config", str(config)])
    assert str(raised.value) == (
        f"{config}: line 2: YAML aliases (*a) are refused in configs, since a few nested "
        f"ones expand without bound; write the value out"
    )


@pytest.mark.parametrize("path", sorted((REPO / "configs").rglob("*.yaml")), ids=lambda p: str(p.relative_to(REPO)))
def test_every_shipped_config_is_a_mapping_without_aliases(path):
    from rlhf.config import load_yaml

    assert load_yaml(path)


@pytest.mark.parametrize("path", sorted((REPO / "deepspeed_configs").glob("*.json")), ids=lambda p: p.name)
def test_deepspeed_configs_are_valid(path):
    config = json.loads(path.read_text())
    stage = config["zero_optimization"]["stage"]
    assert stage in (0, 2, 3)
    if stage == 3 and "inference" not in path.name:
        # Without this a ZeRO-3 run would save shards, not a from_pretrained directory.
        assert config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True


def test_an_abbreviated_argument_is_an_error_not_a_guess():
    from rlhf.stages.rm import RMStageConfig

    with pytest.raises(ConfigError, match="learning_rat"):
        parse_config(RMStageConfig, ["--output_dir", "x", "--learning_rat", "1e-3"])


@dataclass
class EitherWordOrFlag:
    count_tokens: str | bool = "no"


@pytest.mark.parametrize("value, expected", [("non_padding", "non_padding"), ("true", True), ("No", False)])
def test_a_str_or_bool_field_takes_words_as_well_as_booleans(value, expected):
    # HfArgumentParser alone would refuse "non_padding" (TrainingArguments.include_num_input_tokens_seen).
    assert parse_config(EitherWordOrFlag, ["--count_tokens", value]).count_tokens == expected


def test_training_arguments_count_non_padding_tokens_from_the_command_line():
    from rlhf.stages.sft import SFTStageConfig

    config = parse_config(SFTStageConfig, ["--output_dir", "x", "--include_num_input_tokens_seen", "non_padding"])
    assert config.include_num_input_tokens_seen == "non_padding"


@pytest.mark.parametrize("path", sorted((REPO / "configs").rglob("*.yaml")), ids=lambda p: str(p.relative_to(REPO)))
def test_every_bundled_config_is_a_valid_stage_or_pipeline_config(path):
    """Each file parses with its own dataclass (named by the file: sft, rm, ppo, or the pipeline's)."""
    from rlhf.pipeline import PipelineConfig
    from rlhf.ppo.config import PPOStageConfig
    from rlhf.rm.config import RMStageConfig
    from rlhf.sft.config import SFTStageConfig

    config_class = {"sft": SFTStageConfig, "rm": RMStageConfig, "ppo": PPOStageConfig}.get(path.stem, PipelineConfig)
    config = parse_config(config_class, ["--config", str(path)])
    if config_class is PipelineConfig:
        for stage in ("sft", "rm", "ppo"):
            assert (REPO / getattr(config, f"{stage}_config")).is_file()

"""rlhf/data/chat_template.py: a chat template's failures are one line naming its file."""

from __future__ import annotations

import json

import pytest

from rlhf.errors import DataError

MESSAGES = [{"role": "user", "content": "sort: b a"}]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from rlhf.demo.task import corpus_words
    from rlhf.demo.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("chat") / "model", corpus_words(), hidden_size=16, num_layers=1)


def tokenizer_with_template(model_dir, template: str):
    from rlhf.models import load_tokenizer

    tokenizer = load_tokenizer(str(model_dir))
    tokenizer.chat_template = template
    return tokenizer


@pytest.mark.parametrize(
    "template, reason",
    [
        (
            "{{ ''.__class__.__mro__[1].__subclasses__() }}",
            "the chat template tried to leave Jinja's sandbox and was stopped "
            "(access to attribute '__class__' of 'str' object is unsafe.); use a model whose template you trust",
        ),
        (
            "{{ raise_exception('Conversation roles must alternate user/assistant') }}",
            "the chat template failed: Conversation roles must alternate user/assistant",
        ),
    ],
)
def test_a_failing_chat_template_is_one_line_naming_its_file(model_dir, template, reason):
    from rlhf.data.formatting import demonstration_ids, prompt_text

    tokenizer = tokenizer_with_template(model_dir, template)
    want = f"{model_dir / 'chat_template.jinja'}: {reason}"
    with pytest.raises(DataError) as raised:
        prompt_text(tokenizer, MESSAGES)
    assert str(raised.value) == want
    with pytest.raises(DataError) as raised:
        demonstration_ids(tokenizer, MESSAGES, [{"role": "assistant", "content": "a b"}])
    assert str(raised.value) == want


def test_a_template_in_tokenizer_config_json_is_named_there(model_dir, tmp_path):
    import shutil

    from rlhf.data.chat_template import template_file

    moved = tmp_path / "model"
    shutil.copytree(model_dir, moved)
    template = (moved / "chat_template.jinja").read_text()
    (moved / "chat_template.jinja").unlink()
    settings = json.loads((moved / "tokenizer_config.json").read_text())
    (moved / "tokenizer_config.json").write_text(json.dumps({**settings, "chat_template": template}))
    assert template_file(tokenizer_with_template(moved, template)) == str(moved / "tokenizer_config.json")

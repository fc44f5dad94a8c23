"""A tokenizer's chat template applied with its failures named by file.

The template comes with the model, and transformers renders it in Jinja's sandbox. The sandbox holds when a template
reaches for Python's internals, but its SecurityError, like any other failure of the template (its own
raise_exception, a syntax error), is one line naming the file the template came from, not a traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rlhf.errors import DataError

# Where transformers reads a model directory's chat template from, first found first.
TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json", "tokenizer_config.json")


class ChatTemplateError(DataError):
    """A chat template that failed on a conversation (named by its file); a stage that knows which record the
    conversation came from says so too."""


def apply_chat_template(tokenizer, conversation: list[dict[str, Any]], **kwargs) -> Any:
    """`tokenizer.apply_chat_template(conversation, **kwargs)`; a failure of the template is a DataError naming
    its file."""
    from jinja2 import TemplateError
    from jinja2.exceptions import SecurityError

    try:
        return tokenizer.apply_chat_template(conversation, **kwargs)
    except SecurityError as error:
        raise ChatTemplateError(
            f"the chat template tried to leave Jinja's sandbox and was stopped ({error}); use a model "
            f"whose template you trust",
            file=template_file(tokenizer),
        ) from None
    except TemplateError as error:
        raise ChatTemplateError(f"the chat template failed: {error}", file=template_file(tokenizer)) from None


def template_file(tokenizer) -> str:
    """The file the tokenizer's chat template was read from, or the model's name when it is not a directory."""
    directory = Path(tokenizer.name_or_path)
    found = next((directory / name for name in TEMPLATE_FILES if (directory / name).is_file()), None)
    return str(found) if found else f"{tokenizer.name_or_path} (its chat template)"

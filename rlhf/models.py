"""Loading tokenizers and model configs from a local directory or a hub id, and loading that refuses in one line.

Models load through rlhf.adaptation.checkpoint; registry references resolve to directories in rlhf.registry.

Weights load from safetensors only, and model code from the hub runs only when the config sets
`trust_remote_code`.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator
from typing import Any

from rlhf import _compat, distributed
from rlhf.errors import ConfigError


def _load(loader, path: str, what: str, **kwargs) -> Any:
    try:
        return loader(path, **kwargs)
    except (OSError, ValueError) as error:
        raise load_refused(what, path, error) from None


def needs_remote_code(error: BaseException) -> bool:
    """Whether transformers refused to load something because it would have to run code shipped with it (an
    `auto_map` naming a class transformers does not have) while trust_remote_code is off."""
    return isinstance(error, ValueError) and "trust_remote_code" in str(error)


def load_refused(what: str, path: str, error: BaseException) -> ConfigError:
    """transformers' refusal to load `what` (a tokenizer, a model, its config) from `path`, as one line."""
    if needs_remote_code(error):  # transformers' own message says what to set only on its third line
        return ConfigError(
            f"cannot load {what} from '{path}': it needs code shipped with the model (its auto_map), "
            f"which runs only with trust_remote_code: true; set that only if you trust its author"
        )
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return ConfigError(f"cannot load {what} from '{path}': {first_line}")


def load_model_config(path: str, trust_remote_code: bool = False):
    """A model's transformers config, read without any weight: a model that needs its own code is refused here,
    before anything loads."""
    from transformers import AutoConfig

    return _load(AutoConfig.from_pretrained, path, "model config", trust_remote_code=trust_remote_code)


class _WithoutLengthNotice:
    """A logging filter for transformers' "Token indices sequence length is longer than the specified maximum"
    notice: the stages tokenize whole examples to measure them, and their `overlong` policy says, once, what it
    did with those over the limit; the notice would only warn of indexing errors that cannot happen."""

    def filter(self, record) -> bool:
        return not record.getMessage().startswith("Token indices sequence length is longer")


class _NewHeadExplained:
    """A logging filter for the load report transformers prints when a causal LM becomes a reward model: a table
    whose only rows are the new scalar head (missing) and the language-model head left behind (unexpected). Such
    a report becomes one line; a report with anything else in it is kept as it is."""

    NEW_HEADS = ("score.", "classifier.")  # missing: the reward head
    LEFT_BEHIND = ("lm_head.",)  # unexpected: the language-model head a reward model has no use for
    ANSI = re.compile(r"\x1b\[[0-9;]*m")

    def filter(self, record) -> bool:
        message = self.ANSI.sub("", record.getMessage())
        if "LOAD REPORT" not in message:
            return True
        rows = [line.split("|") for line in message.split("Notes:")[0].splitlines() if "|" in line]
        keys = [(cells[0].strip(), cells[1].strip()) for cells in rows if len(cells) > 1]
        keys = [(key, status) for key, status in keys if status in ("MISSING", "UNEXPECTED")]
        expected = {"MISSING": self.NEW_HEADS, "UNEXPECTED": self.LEFT_BEHIND}
        if not keys or not all(key.startswith(expected[status]) for key, status in keys):
            return True

        if distributed.is_main_process():
            new = ", ".join(key for key, status in keys if status == "MISSING")
            print(f"reward model: a new scalar head ({new}) on the loaded body, trained from scratch", flush=True)
        return False


@contextlib.contextmanager
def new_reward_head_explained() -> Iterator[None]:
    """For the block, transformers' load report of a new reward head is one line instead of a table."""
    report = logging.getLogger("transformers.modeling_utils")
    explained = _NewHeadExplained()
    report.addFilter(explained)
    try:
        yield
    finally:
        report.removeFilter(explained)


def load_tokenizer(path: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    notices = logging.getLogger("transformers.tokenization_utils_base")
    if not any(isinstance(f, _WithoutLengthNotice) for f in notices.filters):
        notices.addFilter(_WithoutLengthNotice())

    tokenizer = _load(AutoTokenizer.from_pretrained, path, "tokenizer", trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None and tokenizer.eos_token is None:
        # Responses end at EOS and batches pad with pad (or EOS): with neither, no stage can run.
        raise ConfigError(
            f"{path}: the tokenizer has neither a pad nor an EOS token; set eos_token (the token that "
            f"ends a response) in its tokenizer_config.json"
        )
    if tokenizer.pad_token is None:
        # Many causal LMs ship without a pad token; EOS is the usual stand-in (masks keep it out of losses).
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


# Text that shows how a tokenizer treats specials, digits, accents and whitespace, and whether it adds a BOS.
TOKENIZATION_PROBE = "Hello, World! 123 \u00fcn\u00efc\u00f6d\u00e9\n  two  spaces."


def same_tokenization(first, second) -> bool:
    """True when two tokenizers give the same ids for the same text and the same conversation: same vocabulary,
    same special tokens, same chat template, and the same ids for a probe text (which catches a BOS that only
    one of them prepends, as OPT's does, or another normaliser). A shared vocabulary alone is not enough."""
    if first is second:
        return True
    return (
        first.get_vocab() == second.get_vocab()
        and _special_tokens(first) == _special_tokens(second)
        and getattr(first, "chat_template", None) == getattr(second, "chat_template", None)
        and first(TOKENIZATION_PROBE).input_ids == second(TOKENIZATION_PROBE).input_ids
    )


def _special_tokens(tokenizer) -> tuple:
    return (
        tokenizer.bos_token_id,
        tokenizer.eos_token_id,
        tokenizer.pad_token_id,
        tokenizer.unk_token_id,
        sorted(tokenizer.all_special_ids),
    )


def max_positions(path: str, trust_remote_code: bool = False) -> int:
    """The longest sequence a model reads (its config's max_position_embeddings, or n_positions)."""
    from transformers import AutoConfig

    config = _load(AutoConfig.from_pretrained, path, "model config", trust_remote_code=trust_remote_code)
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        if isinstance(getattr(text_config, name, None), int):
            return getattr(text_config, name)
    raise ConfigError(f"{path}: its config names no maximum length (max_position_embeddings); pass --max_prompt_length")


def partitioned_loading(ds_config: dict[str, Any]):
    """A block in which models load as the DeepSpeed engine `ds_config` describes will hold them: under ZeRO-3
    each rank builds and keeps only its partition of every parameter (no rank ever holds the whole model), under
    ZeRO-0/1/2 every rank loads the whole model."""
    from rlhf.config import is_zero3

    if is_zero3(ds_config):
        return _compat.zero3_init_from(ds_config)
    return _compat.zero3_init_disabled()

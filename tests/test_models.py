"""Notices from transformers that a user cannot act on become one line, and only those (rlhf.models)."""

from __future__ import annotations

import logging

from rlhf.models import new_reward_head_explained

TABLE = (
    "\x1b[1mLlamaForSequenceClassification LOAD REPORT\x1b[0m from: sft\nKey | Status | \n----+----\n"
    "{rows}\nNotes:\n- MISSING:\tthose params were newly initialized because missing from the checkpoint."
)


def reported(rows: str, capsys) -> tuple[list[str], str]:
    """What transformers' logger lets through, and what we printed, for a load report with these rows."""
    seen = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    logger = logging.getLogger("transformers.modeling_utils")
    logger.addHandler(handler)
    try:
        with new_reward_head_explained():
            logger.warning(TABLE.format(rows=rows))
    finally:
        logger.removeHandler(handler)
    return seen, capsys.readouterr().out


def test_a_new_reward_head_is_one_line_and_anything_else_keeps_its_table(capsys):
    seen, said = reported("score.weight | \x1b[31mMISSING\x1b[0m | \nlm_head.weight | UNEXPECTED | ", capsys)
    assert (
        seen == []
        and said == "reward model: a new scalar head (score.weight) on the loaded body, trained from scratch\n"
    )
    # A causal LM missing its language-model head, or a body weight missing: the table stays.
    for rows in ("lm_head.weight | MISSING | ", "score.weight | MISSING | \nmodel.norm.weight | MISSING | "):
        seen, said = reported(rows, capsys)
        assert len(seen) == 1 and "LOAD REPORT" in seen[0] and said == ""

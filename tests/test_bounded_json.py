"""Nesting depth checked on the text before parsing; small JSON files read up to a cap."""

from __future__ import annotations

import json
import os

import pytest

from rlhf.bounded_json import MAX_NESTING, NestedTooDeep, loads, nested_deeper_than, read_small_json
from rlhf.errors import DataError


def nested(levels: int, inner: str = "1") -> str:
    return (
        '{"a": ' * (levels // 2)
        + "[" * (levels - levels // 2)
        + inner
        + "]" * (levels - levels // 2)
        + "}" * (levels // 2)
    )


def test_depth_is_counted_exactly_at_the_bound():
    assert json.loads(nested(MAX_NESTING)) and loads(nested(MAX_NESTING)) == json.loads(nested(MAX_NESTING))
    assert not nested_deeper_than(nested(100), 100) and nested_deeper_than(nested(101), 100)
    assert not nested_deeper_than("[" * 5 + "]" * 5 + "[]" * 500, 10)  # many brackets, none deep


def test_brackets_inside_strings_are_text():
    assert not nested_deeper_than(json.dumps(["[" * 500, "{" * 500, 'say "[[[[" \\ ' * 200]), 10)
    assert nested_deeper_than('["\\"' + "[" * 20 + '"' + "[" * 11 + "]" * 11 + "]", 10)  # an escaped quote ends nothing


def test_text_cut_short_counts_as_deep_as_it_goes():
    # json.loads would recurse through all the openings before it found the end missing
    assert nested_deeper_than("[" * 10**5, 100)


def test_a_record_nested_ten_to_the_five_deep_is_refused_without_recursion():
    with pytest.raises(NestedTooDeep, match=f"nested deeper than {MAX_NESTING} levels"):
        loads("[" * 10**5 + "]" * 10**5)


def test_a_small_json_file_that_links_to_dev_zero_is_refused_after_the_cap(tmp_path):
    os.symlink("/dev/zero", tmp_path / "config.json")
    with pytest.raises(DataError) as raised:
        read_small_json(tmp_path / "config.json", max_bytes=2**20)
    assert str(raised.value) == (
        f"{tmp_path / 'config.json'}: is over 1 MiB, far more than a JSON file of its kind "
        "holds: refused unread (a link to a device, or a damaged file?)"
    )


@pytest.mark.parametrize(
    "content, reason",
    [
        ("[" * 10**5 + "]" * 10**5, "nested deeper than 100 levels"),
        ('{"a": 1,', "is not valid JSON (Expecting property name enclosed in double quotes at line 1)"),
        (b"\xff\xfe{}", "is not UTF-8 text"),
    ],
)
def test_a_small_json_file_that_is_not_json_is_one_line_naming_it(tmp_path, content, reason):
    path = tmp_path / "tokenizer_config.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(DataError) as raised:
        read_small_json(path)
    assert str(raised.value) == f"{path}: {reason}"

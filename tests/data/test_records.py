"""Reading data files in bounded memory: gzip bombs, endless lines, big documents, deep nesting, odd bytes."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pytest

from rlhf.data import records
from rlhf.data.demonstrations import load_demonstrations
from rlhf.data.prompts import load_prompts
from rlhf.data.rankings import read_rankings
from rlhf.data.records import read_records
from rlhf.errors import DataError

DEEP = "[" * 10**5 + "]" * 10**5
RANKING = {"id": "r1", "prompt": "Name a colour.", "completions": ["Blue.", "Seven."], "ranks": [1, 2]}


def gzip_bomb(path: Path, member: bytes, copies: int) -> Path:
    """`copies` gzip members of `member` one after another, which gzip reads as one stream: a file of a few MB that
    inflates to GB is written in a moment."""
    compressed = gzip.compress(member, compresslevel=9)
    with open(path, "wb") as file:
        for _ in range(copies):
            file.write(compressed)
    return path


def with_a_deep_field(record: dict) -> str:
    return json.dumps({**record, "meta": None}).replace('"meta": null', f'"meta": {DEEP}')


def error_of(path) -> str:
    with pytest.raises(DataError) as raised:
        list(read_records(path))
    return str(raised.value)


def test_a_4_mb_gzip_bomb_of_one_endless_line_fails_fast(tmp_path):
    bomb = gzip_bomb(tmp_path / "prompts.jsonl.gz", b"x" * 2**26, 64)  # 4 MB that inflate to 4 GiB
    assert bomb.stat().st_size < 5 * 10**6
    with pytest.raises(DataError) as raised:
        load_prompts(str(bomb))
    assert str(raised.value) == (
        f"{bomb}: inflates to over 100 times its compressed size, as a decompression bomb "
        "does: refused before it inflates further"
    )


def test_a_gzip_bomb_of_short_lines_is_refused_as_it_inflates(tmp_path):
    line = json.dumps({"prompt": "Say hi. " * 100}).encode() + b"\n"
    bomb = gzip_bomb(tmp_path / "prompts.jsonl.gz", line * 2**14, 40)  # 500 MiB of lines of 800 bytes
    assert error_of(bomb) == (
        f"{bomb}: inflates to over 100 times its compressed size, as a decompression bomb "
        "does: refused before it inflates further"
    )


def test_a_gzip_bomb_of_empty_lines_is_refused_as_it_inflates(tmp_path, monkeypatch):
    monkeypatch.setattr(records, "GZIP_RATIO_CHECKED_AFTER_BYTES", 2**20)  # a million lines, not eight
    bomb = gzip_bomb(tmp_path / "prompts.jsonl.gz", b"\n" * 2**26, 64)  # 4 GiB of empty lines
    assert error_of(bomb).endswith("as a decompression bomb does: refused before it inflates further")


def test_an_ordinary_gzip_file_larger_than_one_record_streams_through(tmp_path, monkeypatch):
    monkeypatch.setattr(records, "MAX_RECORD_BYTES", 2**16)
    lines = [json.dumps({"prompt": f"Prompt {n}: " + os.urandom(24).hex()}) for n in range(4000)]
    path = tmp_path / "prompts.jsonl.gz"
    path.write_bytes(gzip.compress("\n".join(lines).encode()))  # 400 KB of text at about 2 to 1
    assert len(load_prompts(str(path))) == 4000


def test_a_file_of_one_endless_line_is_refused_unread(tmp_path):
    endless = tmp_path / "train.jsonl"
    os.symlink("/dev/zero", endless)  # read whole, it would never end
    assert error_of(endless) == (
        f"{endless}: record 1: is over 64 MiB, the most one record may be: refused unread "
        "(one endless line, or a decompression bomb?)"
    )


def test_a_line_over_the_record_bound_is_refused_naming_its_record(tmp_path, monkeypatch):
    monkeypatch.setattr(records, "MAX_RECORD_BYTES", 2**20)
    path = tmp_path / "rankings.jsonl"
    huge = {**RANKING, "prompt": "x" * 2**20}
    path.write_text("\n".join(json.dumps(row) for row in (RANKING, RANKING, huge, RANKING)) + "\n")
    with pytest.raises(DataError, match=f"^{path}: record 3: is over 1 MiB, the most one record may be"):
        read_rankings(path)


def test_a_json_document_over_the_document_bound_says_to_write_json_lines(tmp_path, monkeypatch):
    monkeypatch.setattr(records, "MAX_DOCUMENT_BYTES", 2**16)
    path = tmp_path / "export.json"
    path.write_text(json.dumps([RANKING] * 1000, indent=2))
    assert error_of(path) == (
        f"{path}: is one JSON document over 65536 bytes, too big to parse whole: write its "
        "records as JSON Lines, one a line (for a list: jq -c '.[]' FILE > FILE.jsonl)"
    )


def test_json_lines_named_json_and_one_line_documents_are_told_apart(tmp_path):
    lines, compact, pretty = tmp_path / "train.json", tmp_path / "compact.json", tmp_path / "pretty.json"
    lines.write_text(f"{json.dumps(RANKING)}\n\n{json.dumps(RANKING)}\n")  # Stanford SHP's train.json
    compact.write_text(json.dumps([RANKING, RANKING]) + "\n")
    pretty.write_text(json.dumps({"items": [RANKING, RANKING]}, indent=2))
    assert [(raw.number, raw.value) for raw in read_records(lines)] == [(1, RANKING), (3, RANKING)]
    assert [(raw.number, raw.value) for raw in read_records(compact)] == [(1, RANKING), (2, RANKING)]
    assert [(raw.number, raw.value) for raw in read_records(pretty)] == [(1, RANKING), (2, RANKING)]


@pytest.mark.parametrize(
    "name, text",
    [
        ("lines.jsonl", f"{json.dumps(RANKING)}\n{DEEP}\n\n{json.dumps(RANKING)}\n"),
        ("list.json", f"[{json.dumps(RANKING)}, {DEEP}, {json.dumps(RANKING)}]"),
        ("rest.json", json.dumps({"total": 3, "items": [RANKING, None, RANKING]}).replace("null", DEEP)),
    ],
)
def test_a_record_nested_too_deep_is_yielded_with_its_error_and_the_others_read(tmp_path, name, text):
    (tmp_path / name).write_text(text)
    read = [(raw.number, raw.value, raw.error) for raw in read_records(tmp_path / name)]
    last = 4 if name == "lines.jsonl" else 3  # a line number, or a place in the list
    assert read == [(1, RANKING, None), (2, None, "nested deeper than 100 levels"), (last, RANKING, None)]


def test_a_document_nested_too_deep_that_is_no_list_of_records_is_one_line(tmp_path):
    (tmp_path / "one.json").write_text('{"record": ' + DEEP + "}")
    assert error_of(tmp_path / "one.json") == f"{tmp_path / 'one.json'}: nested deeper than 100 levels"


STRICT_READERS = {
    "rankings": (read_rankings, RANKING),
    "demonstrations": (load_demonstrations, {"prompt": "Say hi.", "completion": " Hi."}),
    "prompts": (load_prompts, {"prompt": "Say hi."}),
}


@pytest.mark.parametrize("reader", list(STRICT_READERS))
def test_a_deep_record_is_one_line_naming_it_in_every_strict_reader(tmp_path, reader):
    load, good = STRICT_READERS[reader]
    path = tmp_path / "data.jsonl"
    path.write_text(f"{json.dumps(good)}\n{with_a_deep_field(good)}\n")
    with pytest.raises(DataError) as raised:
        load(str(path))
    assert str(raised.value) == f"{path}: record 2: nested deeper than 100 levels"


def test_a_line_that_is_not_utf8_is_named_by_its_record(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_bytes(b'{"prompt": "Say hi."}\n{"prompt": "caf\xe9"}\n')  # latin-1, not UTF-8
    with pytest.raises(DataError) as raised:
        load_prompts(str(path))
    assert str(raised.value) == f"{path}: record 2: not UTF-8 text"


def test_a_csv_cell_over_the_record_bound_is_refused_naming_its_row(tmp_path, monkeypatch):
    monkeypatch.setattr(records, "MAX_RECORD_BYTES", 2**16)
    path = tmp_path / "prompts.csv"
    path.write_text('prompt,id\n"Say hi.",1\n"' + "multi\nline " * 10**4 + '",2\n')
    assert error_of(path).startswith(f"{path}: record 2: not valid CSV (field larger than field limit (65536))")
    path.write_text("prompt,id\n" + "x" * 2**17 + ",1\n")
    assert error_of(path) == (
        f"{path}: record 1: is over 65536 bytes, the most one record may be: refused unread "
        "(one endless line, or a decompression bomb?)"
    )

import json

import pytest

from rlhf.data.demonstrations import load_demonstrations
from rlhf.errors import DataError


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def test_prompt_completion_and_messages(tmp_path):
    path = write_jsonl(
        tmp_path / "d.jsonl",
        [
            {"prompt": "p1", "completion": " c1"},
            {
                "messages": [
                    {"role": "system", "content": "s"},
                    {"role": "user", "content": "u"},
                    {"role": "assistant", "content": "a"},
                ]
            },
        ],
    )
    plain, chat = load_demonstrations(path)
    assert plain == {"prompt": "p1", "completion": " c1"}
    # The last assistant reply is the completion; everything before it is the prompt.
    assert chat == {
        "prompt": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}],
        "completion": [{"role": "assistant", "content": "a"}],
    }


def test_csv_and_datasets_directory(tmp_path):
    import datasets

    (tmp_path / "d.csv").write_text('prompt,completion\nhello," world"\n')
    assert load_demonstrations(str(tmp_path / "d.csv")) == [{"prompt": "hello", "completion": " world"}]
    datasets.Dataset.from_list([{"prompt": "a", "completion": " b"}]).save_to_disk(str(tmp_path / "ds"))
    assert load_demonstrations(str(tmp_path / "ds")) == [{"prompt": "a", "completion": " b"}]


@pytest.mark.parametrize(
    "records, message",
    [
        ([{"prompt": "p"}], "d.jsonl: record 1: field 'completion': missing"),
        (
            [{"prompt": "p", "completion": "c"}, {"question": "p", "answer": "c"}],
            "d.jsonl: record 2: field 'prompt': missing (expected 'prompt' and 'completion', or 'messages'",
        ),
        ([{"prompt": 3, "completion": "c"}], "record 1: field 'prompt': must be a string, not int"),
        ([{"prompt": "p", "completion": "  "}], "record 1: field 'completion': is empty"),
        ([{"messages": [{"role": "user", "content": "u"}]}], "record 1: field 'messages': the last message must be"),
        (
            [{"messages": [{"role": "bot", "content": "u"}, {"role": "assistant", "content": "a"}]}],
            "record 1: field 'messages': message 0 has role 'bot'",
        ),
    ],
)
def test_bad_records_name_file_record_and_field(tmp_path, records, message):
    path = write_jsonl(tmp_path / "d.jsonl", records)
    with pytest.raises(DataError) as error:
        load_demonstrations(path)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_bad_files(tmp_path):
    with pytest.raises(DataError, match="missing.jsonl: no such file or directory"):
        load_demonstrations(str(tmp_path / "missing.jsonl"))
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DataError, match="empty.jsonl: file is empty"):
        load_demonstrations(str(tmp_path / "empty.jsonl"))
    (tmp_path / "broken.jsonl").write_text('{"prompt": "a", "completion": "b"}\n{"prompt": \n')
    with pytest.raises(DataError, match=r"broken.jsonl: record 2: not valid JSON"):
        load_demonstrations(str(tmp_path / "broken.jsonl"))

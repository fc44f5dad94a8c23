"""The canonical ranking format: validation, reading (ours, TRL, `datasets`), atomic writing, merges, pairs."""

from __future__ import annotations

import json
import os

import pytest

from rlhf.data.rankings import (
    Ranking,
    dense_ranks,
    merge_annotators,
    merge_duplicate_completions,
    ordered_pairs,
    ranking_from_record,
    ranks_from_scores,
    read_rankings,
    write_rankings,
)
from rlhf.errors import DataError

GOOD = {
    "id": "q1",
    "prompt": "Name a colour.",
    "completions": ["Blue", "Seven", "Red"],
    "ranks": [1, 3, 1],
    "annotator": "alice",
}


def with_(**changes):
    return {**GOOD, **changes}


def write_lines(path, rows):
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


# -- validation ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "record, field, reason",
    [
        ({k: v for k, v in GOOD.items() if k != "ranks"}, "ranks", "is missing"),
        ({k: v for k, v in GOOD.items() if k != "prompt"}, "prompt", "is missing"),
        (with_(completions=["only one"], ranks=[1]), "completions", "needs at least 2 completions (K >= 2)"),
        (with_(ranks=["1", "2", "3"]), "ranks", "must be integers"),
        (with_(ranks=[1.0, 2.5, 3.0]), "ranks", "must be integers"),
        (with_(ranks=[float("nan"), 2, 3]), "ranks", "must be integers"),
        (with_(ranks=[True, False, True]), "ranks", "must be integers"),
        (with_(ranks=[0, 1, 2]), "ranks", "must be places from 1 (best) to 3, got 0, 1, 2"),
        (with_(ranks=[1, 10**30, 3]), "ranks", "must be places from 1 (best) to 3, got 1, 100...(31 digits), 3"),
        (with_(ranks=[1, 2, 4]), "ranks", "must be places from 1 (best) to 3, got 1, 2, 4"),
        (with_(ranks=[1, 2]), "ranks", "has 2 entries for 3 completions"),
        (with_(completions=["Blue", "  ", "Red"]), "completions", "completion 2 of 3 is empty"),
        (with_(completions=["Blue", 7, "Red"]), "completions", "must be a list of strings"),
        (with_(ranks=[2, 2, 2]), "ranks", "all completions are tied: no preference pair"),
        (with_(prompt=""), "prompt", "must be a non-empty string or a list of chat messages {role, content}"),
        (
            with_(prompt=[{"role": "user"}]),
            "prompt",
            "must be a non-empty string or a list of chat messages {role, content}",
        ),
        (with_(id=""), "id", "must be a non-empty string"),
        (with_(annotator=7), "annotator", "must be a string or null"),
        (
            with_(completions=["Blue", "Gr\ud800een", "Red"]),
            "completions",
            "holds a lone surrogate (text that is not Unicode, cannot be written as UTF-8)",
        ),
        (
            with_(prompt=[{"role": "user", "content": "\udfff"}]),
            "prompt",
            "holds a lone surrogate (text that is not Unicode, cannot be written as UTF-8)",
        ),
    ],
)
def test_invalid_records_name_the_field_and_reason(record, field, reason):
    with pytest.raises(DataError) as caught:
        ranking_from_record(record)
    assert (caught.value.field, caught.value.reason) == (field, reason)


def test_valid_ranking_keeps_ties_and_gaps_and_chat_prompts():
    ranking = ranking_from_record(with_(ranks=[1, 3, 1]))  # two tie for first, so the third is third
    assert ranking.ranks == (1, 3, 1) and ranking.k == 3 and ranking.annotator == "alice"
    # whole-number floats, as a pandas round trip writes ranks, are the same ranks
    from_pandas = ranking_from_record(with_(ranks=[1.0, 3.0, 1.0]))
    assert from_pandas.ranks == (1, 3, 1) and all(type(rank) is int for rank in from_pandas.ranks)
    chat = ranking_from_record(
        with_(
            prompt=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "A colour?"}],
            annotator=None,
        )
    )
    assert chat.prompt[1]["content"] == "A colour?" and chat.annotator is None
    assert ranking_from_record({k: v for k, v in GOOD.items() if k != "annotator"}).annotator is None


# -- reading ------------------------------------------------------------------------------------------------------


def test_read_rankings_names_file_record_and_field_of_the_first_bad_line(tmp_path):
    path = write_lines(tmp_path / "f.jsonl", [GOOD, GOOD, with_(ranks=["1", "2", "3"])])
    with pytest.raises(DataError) as caught:
        read_rankings(path)
    assert str(caught.value) == f"{path}: record 3: field 'ranks': must be integers"


def test_read_rankings_reports_broken_json_with_its_line(tmp_path):
    path = write_lines(tmp_path / "f.jsonl", [GOOD, "", '{"id": "cut off'])
    with pytest.raises(DataError, match=r"f\.jsonl: record 3: not valid JSON"):
        read_rankings(path)


def test_read_rankings_reads_trl_standard_and_conversational_pairs(tmp_path):
    conversation = [{"role": "user", "content": "What color is the sky?"}]
    path = write_lines(
        tmp_path / "trl.jsonl",
        [
            {"prompt": "The sky is", "chosen": " blue.", "rejected": " green."},
            {
                "prompt": conversation,
                "chosen": [{"role": "assistant", "content": "Blue."}],
                "rejected": [{"role": "assistant", "content": "Green."}],
            },
            {
                "chosen": conversation + [{"role": "assistant", "content": "It is blue."}],
                "rejected": conversation + [{"role": "assistant", "content": "It is green."}],
            },
        ],
    )
    standard, explicit, implicit = read_rankings(path)
    assert (standard.prompt, standard.completions, standard.ranks) == ("The sky is", (" blue.", " green."), (1, 2))
    assert standard.id == "trl.jsonl:1"
    assert (explicit.prompt, explicit.completions) == (conversation, ("Blue.", "Green."))
    assert (implicit.prompt, implicit.completions) == (conversation, ("It is blue.", "It is green."))


def test_trl_text_pair_without_prompt_points_to_hh_importer(tmp_path):
    path = write_lines(
        tmp_path / "hh.jsonl",
        [{"chosen": "\n\nHuman: hi\n\nAssistant: hello", "rejected": "\n\nHuman: hi\n\nAssistant: go away"}],
    )
    with pytest.raises(DataError, match="field 'prompt': is missing .*--format hh_rlhf"):
        read_rankings(path)


def test_read_rankings_reads_a_datasets_directory(tmp_path):
    from datasets import Dataset

    Dataset.from_list(
        [{"prompt": "2 + 2 =", "chosen": "4", "rejected": "5"}, {"prompt": "3 + 3 =", "chosen": "6", "rejected": "33"}]
    ).save_to_disk(str(tmp_path / "ds"))
    rankings = read_rankings(tmp_path / "ds")
    assert [r.completions for r in rankings] == [("4", "5"), ("6", "33")]
    assert [r.id for r in rankings] == ["ds:1", "ds:2"]


def test_missing_and_empty_files_are_one_line_errors(tmp_path):
    with pytest.raises(DataError, match="no such file or directory"):
        read_rankings(tmp_path / "absent.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DataError, match="file is empty"):
        read_rankings(tmp_path / "empty.jsonl")


# -- writing ------------------------------------------------------------------------------------------------------


def test_write_then_read_round_trips(tmp_path):
    rankings = [ranking_from_record(GOOD), ranking_from_record(with_(id="q2", ranks=[2, 1, 3], annotator=None))]
    assert write_rankings(tmp_path / "out.jsonl", rankings) == 2
    assert read_rankings(tmp_path / "out.jsonl") == rankings
    first_line = json.loads((tmp_path / "out.jsonl").read_text().splitlines()[0])
    assert first_line == GOOD


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_text("old content\n")

    def rankings_then_failure():
        yield ranking_from_record(GOOD)
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_rankings(path, rankings_then_failure())
    assert path.read_text() == "old content\n"
    assert os.listdir(tmp_path) == ["out.jsonl"]


def test_writing_into_a_missing_directory_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="output directory does not exist"):
        write_rankings(tmp_path / "nope" / "out.jsonl", [ranking_from_record(GOOD)])


# -- rank arithmetic ----------------------------------------------------------------------------------------------


def test_dense_ranks_and_ranks_from_scores():
    assert dense_ranks([1, 4, 4, 9]) == (1, 2, 2, 3)
    assert dense_ranks([3, 1, 2]) == (3, 1, 2)
    assert ranks_from_scores([7.5, 9, 7.5]) == (2, 1, 2)


@pytest.mark.parametrize("score", [float("nan"), float("inf"), float("-inf"), True, "3"])
def test_ranks_from_scores_refuses_what_is_not_a_finite_number_naming_the_field(score):
    # NaN compares false with everything: (3, nan, 1) used to rank the NaN-rated reply first
    with pytest.raises(DataError) as raised:
        ranks_from_scores((3, score, 1), field="rating_b")
    assert str(raised.value) == f"field 'rating_b': must be a finite number, not {score!r}"


@pytest.mark.parametrize(
    "ranks, pairs",
    [
        ([1, 2], [(0, 1)]),
        ([2, 1], [(1, 0)]),
        ([2, 1, 2], [(1, 0), (1, 2)]),  # tie between 0 and 2: no pair
        ([1, 2, 3], [(0, 1), (0, 2), (1, 2)]),
        ([1, 3], [(0, 1)]),  # gaps are fine
        ([1, 0, 2, 0], [(0, 2)]),  # 0 is padding
        ([3, 3, 3], []),
        ([], []),
    ],
)
def test_ordered_pairs_by_hand(ranks, pairs):
    assert ordered_pairs(ranks) == pairs


def test_ordered_pairs_accepts_a_tensor_row():
    import torch

    assert ordered_pairs(torch.tensor([2, 1, 0])) == [(1, 0)]


def test_merge_duplicate_completions_keeps_the_best_rank_and_redensifies():
    ranking = Ranking("d", "p", ("a", "b", "a", "c"), (4, 2, 1, 3))
    merged = merge_duplicate_completions(ranking)
    assert (merged.completions, merged.ranks) == (("a", "b", "c"), (1, 2, 3))
    tied = merge_duplicate_completions(Ranking("t", "p", ("a", "b", "b", "c"), (1, 4, 2, 4)))
    assert (tied.completions, tied.ranks) == (("a", "b", "c"), (1, 2, 3))
    unchanged = Ranking("u", "p", ("a", "b"), (2, 1))
    assert merge_duplicate_completions(unchanged) is unchanged


def test_merge_duplicate_completions_refuses_to_leave_no_pair():
    with pytest.raises(DataError, match="all completions are identical"):
        merge_duplicate_completions(Ranking("d", "p", ("same", "same"), (1, 2)))
    with pytest.raises(DataError, match="all completions are tied"):
        merge_duplicate_completions(Ranking("d", "p", ("a", "b", "a"), (2, 1, 1)))


def test_merge_annotators_averages_dense_ranks_and_ties_equal_means():
    alice = Ranking("q:alice", "p", ("x", "y", "z"), (1, 2, 3), "alice")
    bob = Ranking("q:bob", "p", ("z", "y", "x"), (1, 2, 3), "bob")  # z, y, x
    carol = Ranking("q:carol", "p", ("y", "x", "z"), (1, 3, 3), "carol")  # dense (1, 2, 2)
    other = Ranking("other", "p", ("x", "w"), (1, 2), "alice")  # another completion set: untouched
    merged, cancelled = merge_annotators([alice, other, bob, carol])
    assert cancelled == []
    assert merged[1] is other
    # means: x (1 + 3 + 2) / 3 = 2, y (2 + 2 + 1) / 3 = 5/3, z (3 + 1 + 2) / 3 = 2 -> y best, x and z tie
    assert (merged[0].id, merged[0].completions, merged[0].ranks) == ("q:alice", ("x", "y", "z"), (2, 1, 2))
    assert merged[0].annotator == "alice+bob+carol"


def test_merge_annotators_returns_groups_that_cancel_out():
    left = Ranking("a", "p", ("x", "y"), (1, 2), "alice")
    right = Ranking("b", "p", ("y", "x"), (1, 2), "bob")
    merged, cancelled = merge_annotators([left, right])
    assert merged == [] and cancelled == [[left, right]]


def test_merge_annotators_keeps_different_prompts_apart():
    first = Ranking("a", "p1", ("x", "y"), (1, 2), "alice")
    second = Ranking("b", "p2", ("x", "y"), (2, 1), "bob")
    assert merge_annotators([first, second]) == ([first, second], [])

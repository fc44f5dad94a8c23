"""Each importer on its real-shaped sample in tests/data/labels, the quarantine, and the `rlhf.labels` CLI."""

from __future__ import annotations

import errno
import gzip
import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from rlhf.data.rankings import read_rankings
from rlhf.errors import ConfigError, DataError
from rlhf.labels.cli import main, quarantine_path
from rlhf.labels.importers import import_rankings
from rlhf.labels.importers.argilla import NO_STATUS, RATINGS_UNMAPPED, UNRATED_FIELDS
from rlhf.labels.importers.base import DUPLICATE_RECORD, RENAMED_ID
from rlhf.labels.importers.label_studio import NO_RESULT_COLUMN, UNRANKED, UNTOUCHED
from rlhf.labels.importers.label_studio_ratings import UNRATED_RESPONSES
from rlhf.labels.importers.ultrafeedback import EMPTY, UNRATED, rating
from tests.helpers.full_disk_hook import writes_fail

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "labels"


def sample(name: str) -> str:
    return str(SAMPLES / name)


def by_id(report):
    return {ranking.id: ranking for ranking in report.rankings}


def reasons_by_record(report):
    return sorted((entry["record"], entry["reason"]) for entry in report.quarantine)


# -- Label Studio -------------------------------------------------------------------------------------------------


def test_label_studio_rlhf_pairwise_template():
    report = import_rankings("label_studio", [sample("label_studio_rlhf_pairwise.json")])
    rankings = by_id(report)
    assert report.records_read == 6 and sorted(rankings) == ["1:101", "1:102"]
    canberra, sydney = "Canberra is the capital of Australia.", "Sydney is the capital of Australia."
    # every annotator's judgement is its own ranking: user id 1 chose left, bea (a completed_by object) right
    assert (rankings["1:101"].completions, rankings["1:101"].ranks, rankings["1:101"].annotator) == (
        (canberra, sydney),
        (1, 2),
        "1",
    )
    assert (rankings["1:102"].ranks, rankings["1:102"].annotator) == ((2, 1), "bea@example.com")
    assert reasons_by_record(report) == [
        (2, "cancelled (skipped) annotation"),
        (3, "empty result (submitted without a choice)"),
        (4, "draft, never submitted"),
        (5, "task not annotated"),  # predictions are a model's, not imported
        (6, "field 'completions': all completions are identical"),
    ]
    kinds = {entry["reason"]: entry["kind"] for entry in report.quarantine}
    assert kinds["cancelled (skipped) annotation"] == "skipped"
    assert kinds["field 'completions': all completions are identical"] == "invalid"


RANKER_CONFIG = sample("label_studio_ranker.config.xml")


def test_label_studio_ranker_rank_mode_flat_list_buckets_and_untouched():
    report = import_rankings("label_studio", [sample("label_studio_ranker.json")], config=RANKER_CONFIG)
    rankings = by_id(report)
    fire, wars, nobody = (
        "A fire during Caesar's siege in 48 BC, then centuries of decline.",
        "Wars led to the library's ruin.",
        "Nobody knows.",
    )
    assert rankings["10:201"].completions == (fire, wars, nobody) and rankings["10:201"].ranks == (1, 2, 3)
    assert rankings["12:203"].completions == (nobody, fire, wars)  # older flat-list value {"ranker": [ids]}
    # buckets are tie groups in the config's <Bucket> order; the item left in "_" was not judged
    buckets = rankings["13:204"]
    assert buckets.completions == (
        "It depends on the definition of wet.",
        "Yes: it wets what it touches.",
        "Water is H2O.",
    )
    assert buckets.ranks == (1, 1, 2)
    # two items with the same body: merged, keeping the better place
    assert (rankings["14:205"].completions, rankings["14:205"].ranks) == ((fire, nobody), (1, 2))
    assert report.duplicates_merged == 1
    # submitted without dragging anything: kept, counted and flagged; the unjudged "_" item counted and flagged
    assert report.flagged == {UNTOUCHED: ["11:202"], UNRANKED: ["13:204"]} and "11:202" in rankings
    assert report.skipped == {}


def jsonb_ordered(value):
    """A JSON value with object keys as PostgreSQL's jsonb stores them: shorter keys first, then bytewise."""
    if isinstance(value, dict):
        return {key: jsonb_ordered(value[key]) for key in sorted(value, key=lambda k: (len(k.encode()), k.encode()))}
    return [jsonb_ordered(item) for item in value] if isinstance(value, list) else value


def test_label_studio_buckets_from_a_jsonb_server_are_read_in_the_config_order(tmp_path):
    tasks = jsonb_ordered(json.loads(Path(sample("label_studio_ranker.json")).read_text()))
    ranker = next(t for t in tasks if t["id"] == 13)["annotations"][0]["result"][0]["value"]["ranker"]
    assert list(ranker) == ["_", "biased_results", "relevant_results"]  # "bad" before "good" in the export
    (tmp_path / "export.json").write_text(json.dumps(tasks))
    report = import_rankings("label_studio", [str(tmp_path / "export.json")], config=RANKER_CONFIG)
    buckets = by_id(report)["13:204"]
    assert buckets.completions[-1] == "Water is H2O." and buckets.ranks == (1, 1, 2)


def test_label_studio_bucket_results_without_a_config_are_refused():
    with pytest.raises(DataError) as refused:
        import_rankings("label_studio", [sample("label_studio_ranker.json")])
    assert str(refused.value).startswith(
        f"{sample('label_studio_ranker.json')}: record 4: field 'rank': bucket results, but no labeling config"
    )


def test_label_studio_bucket_not_in_the_config_is_quarantined(tmp_path):
    config = Path(RANKER_CONFIG).read_text().replace("biased_results", "off_topic")
    (tmp_path / "config.xml").write_text(config)
    report = import_rankings("label_studio", [sample("label_studio_ranker.json")], config=str(tmp_path / "config.xml"))
    assert reasons_by_record(report) == [
        (4, "field 'biased_results': ranker has buckets the labeling config does not name")
    ]
    assert "13:204" not in by_id(report) and len(report.rankings) == 4


def test_label_studio_bucket_order_option():
    report = import_rankings(
        "label_studio", [sample("label_studio_ranker.json")], bucket_order="biased_results,relevant_results"
    )
    assert by_id(report)["13:204"].completions[0] == "Water is H2O."
    assert by_id(report)["13:204"].ranks == (1, 2, 2)


def test_label_studio_json_min_export():
    report = import_rankings("label_studio", [sample("label_studio_min.json")])
    rankings = by_id(report)
    assert sorted(rankings) == ["10:201", "1:101", "1:102"]
    assert [rankings["1:101"].annotator, rankings["1:102"].annotator] == ["1", "7"]
    assert rankings["10:201"].k == 3 and report.flagged == {UNTOUCHED: ["10:201"]}
    assert reasons_by_record(report) == [(3, "task not annotated")]


def test_label_studio_csv_export_keeps_multiline_cells():
    report = import_rankings("label_studio", [sample("label_studio.csv")])
    rankings = by_id(report)
    assert report.records_read == 3 and sorted(rankings) == ["1:101", "2:107", "4:108"]
    haiku = rankings["2:107"]
    assert haiku.prompt == "Write a haiku about rain,\nin English."
    assert haiku.completions[0].count("\n") == 2 and haiku.annotator == "bea@example.com"
    assert rankings["4:108"].ranks == (2, 1)


def test_label_studio_csv_decodes_only_annotation_cells(tmp_path):
    text = Path(sample("label_studio.csv")).read_text()
    text = text.replace('"What is the capital of Australia?"', '"[1, 2, 3]"').replace('"Hola"', '"{not json"')
    (tmp_path / "export.csv").write_text(text)
    rankings = by_id(import_rankings("label_studio", [str(tmp_path / "export.csv")]))
    assert rankings["1:101"].prompt == "[1, 2, 3]" and rankings["1:101"].ranks == (1, 2)
    assert rankings["4:108"].completions == ("Bonjour", "{not json")


def test_label_studio_pairwise_with_custom_fields(tmp_path):
    task = {
        "id": 1,
        "data": {"question": "Q?", "left_reply": "A", "right_reply": "B"},
        "annotations": [
            {
                "id": 5,
                "completed_by": 2,
                "was_cancelled": False,
                "result": [{"from_name": "pw", "to_name": "pw", "type": "pairwise", "value": {"selected": "right"}}],
            }
        ],
    }
    (tmp_path / "export.json").write_text(json.dumps([task]))
    unknown = import_rankings("label_studio", [str(tmp_path / "export.json")], prompt_field="question")
    assert unknown.rankings == [] and unknown.skipped == {
        "cannot tell which task fields the Pairwise compared (set pair_fields=left,right)": 1
    }
    report = import_rankings(
        "label_studio", [str(tmp_path / "export.json")], prompt_field="question", pair_fields="left_reply,right_reply"
    )
    assert [(r.prompt, r.completions, r.ranks) for r in report.rankings] == [("Q?", ("A", "B"), (2, 1))]


RATINGS_CONFIG = sample("label_studio_ratings.config.xml")
BOIL = ("100 degrees Celsius.", "It depends on the kettle.", "212 degrees Fahrenheit, which is 100 degrees Celsius.")


@pytest.mark.parametrize("name", ["label_studio_ratings.json", "label_studio_ratings_min.json"])
def test_label_studio_rating_per_response_becomes_a_ranking_with_ties(name):
    report = import_rankings("label_studio", [sample(name)], config=RATINGS_CONFIG)
    rankings = by_id(report)
    assert (rankings["20:301"].completions, rankings["20:301"].ranks) == (BOIL, (2, 3, 1))  # ratings 4, 1, 5
    moon = rankings["21:302"]  # ratings 5, 5, 2: the two 5s tie
    assert moon.ranks == (1, 1, 2) and moon.annotator == "bea@example.com"
    # response b left unrated: left out, the ranking flagged
    assert (rankings["22:303"].completions, rankings["22:303"].ranks) == ((BOIL[0], BOIL[2]), (2, 1))
    assert report.flagged == {UNRATED_RESPONSES: ["22:303"]}
    skipped = [(4, "field 'ranks': all completions are tied: no preference pair")]
    if name.endswith("ratings.json"):  # JSON-MIN has already dropped the cancelled annotation
        skipped.append((5, "cancelled (skipped) annotation"))
    assert reasons_by_record(report) == skipped


def test_label_studio_ratings_without_the_config_name_the_missing_config():
    full = import_rankings("label_studio", [sample("label_studio_ratings.json")])
    assert full.rankings == [] and set(full.skipped) == {
        "field 'rating_a': the rated object is not a task data key (pass the labeling config with --option "
        "config=CONFIG.xml)",
        "cancelled (skipped) annotation",
    }
    minimal = import_rankings("label_studio", [sample("label_studio_ratings_min.json")])
    assert minimal.rankings == [] and set(minimal.skipped) == {
        "field 'rating_a': a Rating result names no response (JSON-MIN and CSV exports drop to_name): pass the "
        "labeling config with --option config=CONFIG.xml"
    }


def test_label_studio_ratings_whose_to_name_is_the_data_key_need_no_config(tmp_path):
    tasks = json.loads(Path(sample("label_studio_ratings.json")).read_text())
    for task in tasks:
        for annotation in task["annotations"]:
            for result in annotation["result"]:  # <Text name="answer1" value="$answer1"/>, as many configs have it
                result["to_name"] = {"response_a": "answer1", "response_b": "answer2", "response_c": "answer3"}[
                    result["to_name"]
                ]
    (tmp_path / "export.json").write_text(json.dumps(tasks))
    report = import_rankings("label_studio", [str(tmp_path / "export.json")])
    assert (by_id(report)["20:301"].completions, by_id(report)["20:301"].ranks) == (BOIL, (2, 3, 1))
    assert report.flagged == {}  # without a config, which responses went unrated is unknown


CHOICES_CONFIG = sample("label_studio_choices.config.xml")
CANBERRA = ("Sydney is the capital of Australia.", "Canberra is the capital of Australia.")


@pytest.mark.parametrize("name", ["label_studio_choices.json", "label_studio_choices_min.json"])
def test_label_studio_a_b_tie_choices_are_pairwise_preferences(name):
    report = import_rankings("label_studio", [sample(name)], config=CHOICES_CONFIG)
    rankings = by_id(report)
    # "B" prefers answer2; the prompt's topic Choices beside it is not a preference and is ignored
    assert (rankings["30:401"].completions, rankings["30:401"].ranks) == (CANBERRA, (2, 1))
    assert rankings["30:402"].ranks == (1, 2) and rankings["31:403"].ranks == (1, 2)
    assert sorted(rankings) == ["30:401", "30:402", "31:403"]
    first = 3 if name.endswith("choices.json") else 4  # JSON-MIN has a record per annotation, task 30 has two
    assert reasons_by_record(report) == [
        (first, "tie chosen: no preference pair"),
        (first + 1, "no Pairwise, Ranker, Rating or preference Choices result"),
    ]
    if name.endswith("_min.json"):  # without the config, "preference": "A" cannot be told from task data
        unread = import_rankings("label_studio", [sample(name)])
        assert unread.rankings == [] and unread.skipped == {NO_RESULT_COLUMN: 5}


def test_label_studio_preference_choices_option_names_other_choice_values(tmp_path):
    tasks = json.loads(Path(sample("label_studio_choices.json")).read_text())
    names = {"A": "Response 1 is better", "B": "Response 2 is better", "Tie": "About the same"}
    for task in tasks:
        for annotation in task["annotations"]:
            for result in annotation["result"]:
                result["value"]["choices"] = [names.get(c, c) for c in result["value"]["choices"]]
    (tmp_path / "export.json").write_text(json.dumps(tasks))
    unread = import_rankings("label_studio", [str(tmp_path / "export.json")])
    assert unread.rankings == [] and set(unread.skipped) == {"no Pairwise, Ranker, Rating or preference Choices result"}
    report = import_rankings(
        "label_studio",
        [str(tmp_path / "export.json")],
        preference_choices="Response 1 is better,Response 2 is better,About the same",
    )
    assert {r.id: r.ranks for r in report.rankings} == {"30:401": (2, 1), "30:402": (1, 2), "31:403": (1, 2)}
    with pytest.raises(DataError, match="preference_choices must name 2 or 3"):
        import_rankings("label_studio", [str(tmp_path / "export.json")], preference_choices="only-one")


def test_label_studio_old_converter_csv_with_python_repr_cells():
    report = import_rankings("label_studio", [sample("label_studio_old_converter.csv")])
    rankings = by_id(report)
    assert report.records_read == 3 and report.skipped == {}
    assert (rankings["1:101"].completions, rankings["1:101"].ranks) == (
        ("Canberra is the capital of Australia.", "Sydney is the capital of Australia."),
        (1, 2),
    )
    ranked = rankings["10:201"]  # repr'd List items (single and double quotes) and repr'd ranker result
    assert ranked.completions == (
        "Wars led to the library's ruin.",
        "A fire during Caesar's siege in 48 BC, then centuries of decline.",
        "Nobody knows.",
    )
    assert ranked.ranks == (1, 2, 3) and report.flagged == {UNTOUCHED: ["10:201"]}
    assert by_id(import_rankings("label_studio", [sample("label_studio.csv")]))["1:101"] == rankings["1:101"]


def test_python_repr_cells_are_parsed_as_literals_never_evaluated(tmp_path):
    text = Path(sample("label_studio_old_converter.csv")).read_text()
    call = "[__import__('os').system('touch pwned')]"
    text = text.replace("What is the capital of Australia?", f'"{call}"', 1)
    (tmp_path / "export.csv").write_text(text)
    rankings = by_id(import_rankings("label_studio", [str(tmp_path / "export.csv")]))
    assert rankings["1:101"].prompt == call and not (tmp_path / "pwned").exists() and not Path("pwned").exists()


def test_a_file_that_is_not_a_label_studio_export_is_one_data_error():
    with pytest.raises(DataError, match=r"hh_rlhf\.jsonl: not a Label Studio export: records have neither"):
        import_rankings("label_studio", [sample("hh_rlhf.jsonl")])


# -- Argilla ------------------------------------------------------------------------------------------------------

ALICE, BOB = "3f5d9a52-1c1e-4d55-9e4c-2b7a0c4e8f10", "b2a7e6c1-0d4f-4a3b-8c9d-7e6f5a4b3c21"


def test_argilla_rest_records_keep_ties_and_unranked_options():
    report = import_rankings("argilla", [sample("argilla_rest.json")])
    rankings = by_id(report)
    tied = rankings[f"p1:{ALICE}"]
    assert (tied.completions, tied.ranks, tied.annotator) == (("Joyful.", "Sad.", "Content."), (1, 2, 1), ALICE)
    assert rankings[f"p3:{BOB}"].completions == ("Whiskers", "Mr. Paws")  # the option with rank null is left out
    assert report.skipped == {
        "draft response, never submitted": 1,
        "discarded response": 1,
        "record has no responses": 1,
    }
    assert report.flagged == {}


@pytest.mark.parametrize("name", ["argilla_to_list.json", "argilla_records_nested.json"])
def test_argilla_sdk_exports_whose_ranks_are_lost_are_refused(name):
    # the SDK writes a RankingQuestion answer as option values in option order (argilla #5712, #5677):
    # reading that order as the ranking would import noise, so the whole file is refused
    with pytest.raises(DataError) as refused:
        import_rankings("argilla", [sample(name)])
    message = str(refused.value)
    assert message.startswith(f"{sample(name)}: record 1: field 'ranking': ranking answers are bare option lists")
    assert "include=responses" in message and "\n" not in message


def test_argilla_to_datasets_directory_is_refused_like_to_list(tmp_path):
    from datasets import Dataset

    rows = json.loads(Path(sample("argilla_to_list.json")).read_text())
    Dataset.from_list(rows).save_to_disk(str(tmp_path / "ds"))
    with pytest.raises(DataError, match="bare option lists"):
        import_rankings("argilla", [str(tmp_path / "ds")])


def test_argilla_nested_records_with_ranks_kept_are_read_and_flagged_without_status(tmp_path):
    records = json.loads(Path(sample("argilla_records_nested.json")).read_text())
    order = records[0]["responses"]["ranking"][0]["value"]  # response-1, response-3, response-2
    records[0]["responses"]["ranking"][0]["value"] = [
        {"value": option, "rank": rank} for option, rank in zip(sorted(order), (1, 3, 1))
    ]
    (tmp_path / "records.json").write_text(json.dumps(records))
    report = import_rankings("argilla", [str(tmp_path / "records.json")])
    assert [(r.completions, r.ranks) for r in report.rankings] == [(("Joyful.", "Sad.", "Content."), (1, 3, 1))]
    assert set(report.flagged) == {NO_STATUS}
    assert report.skipped == {"record has no responses": 1}


def test_cli_refuses_an_argilla_sdk_export_in_one_line_exit_2(tmp_path, capsys):
    output = tmp_path / "rankings.jsonl"
    code, out, err = run_cli(
        ["import", "--format", "argilla", sample("argilla_to_list.json"), "-o", str(output)], capsys
    )
    assert code == 2 and err.count("\n") == 1 and "record 1: field 'ranking'" in err
    assert not output.exists()


V1_FEEDBACK = sample("argilla_v1_feedback.jsonl")  # rows as argilla v1's FeedbackDataset.format_as("datasets")
V1_RATINGS = "rating-1=response-1,rating-2=response-2,rating-3=response-3"


def v1_feedback_as_datasets_directory(tmp_path):
    from datasets import Dataset

    Dataset.from_json(V1_FEEDBACK).save_to_disk(str(tmp_path / "feedback"))
    return str(tmp_path / "feedback")


@pytest.mark.parametrize("shape", ["jsonl", "datasets", "parquet"])
def test_argilla_v1_feedback_dataset_rankings_skip_drafts_and_discarded(tmp_path, shape):
    path = V1_FEEDBACK if shape == "jsonl" else v1_feedback_as_datasets_directory(tmp_path)
    if shape == "parquet":  # as the hub serves a pushed FeedbackDataset
        from datasets import load_from_disk

        load_from_disk(path).to_parquet(str(tmp_path / "train-00000-of-00001.parquet"))
        path = str(tmp_path / "train-00000-of-00001.parquet")
    report = import_rankings("argilla", [path])
    rankings = by_id(report)
    assert sorted(rankings) == [f"p1:{ALICE}", f"p2:{BOB}", f"p4:{BOB}"]
    assert (rankings[f"p1:{ALICE}"].completions, rankings[f"p1:{ALICE}"].ranks) == (
        ("Joyful.", "Sad.", "Content."),
        (1, 2, 1),
    )  # the rank-1 tie is kept
    assert rankings[f"p2:{BOB}"].ranks == (2, 3, 1)
    assert rankings[f"p4:{BOB}"].completions == ("Whiskers", "Mr. Paws")  # response-3 left unranked (rank null)
    assert reasons_by_record(report) == [
        (1, "draft response, never submitted"),
        (2, "discarded response"),
        (3, "record has no responses"),
    ]
    assert report.flagged == {}


def test_argilla_rating_question_per_response_becomes_a_ranking_with_ties():
    report = import_rankings("argilla", [V1_FEEDBACK], rating_fields=V1_RATINGS)
    rankings = by_id(report)
    assert (rankings[f"p1:{ALICE}"].completions, rankings[f"p1:{ALICE}"].ranks) == (
        ("Joyful.", "Sad.", "Content."),
        (1, 2, 1),
    )  # ratings 5, 2, 5
    assert rankings[f"p2:{BOB}"].ranks == (2, 3, 1)  # ratings 3, 1, 4
    cats = rankings[f"p4:{BOB}"]  # ratings 2, 4 and rating-3 unanswered
    assert (cats.completions, cats.ranks) == (("Whiskers", "Mr. Paws"), (2, 1))
    assert report.flagged == {UNRATED_FIELDS: [f"p4:{BOB}"]}
    assert reasons_by_record(report) == [
        (1, "draft response, never submitted"),
        (2, "discarded response"),
        (3, "record has no responses"),
    ]


def test_argilla_ratings_without_rating_fields_are_skipped_with_how_to_map_them(tmp_path):
    record = {
        "id": "r",
        "fields": {"prompt": "P", "a": "A", "b": "B"},
        "responses": [
            {"values": {"rate-a": {"value": 4}, "rate-b": {"value": 2}}, "status": "submitted", "user_id": "u1"}
        ],
    }
    (tmp_path / "records.json").write_text(json.dumps([record]))
    unmapped = import_rankings("argilla", [str(tmp_path / "records.json")])
    assert unmapped.rankings == [] and unmapped.skipped == {RATINGS_UNMAPPED: 1}
    report = import_rankings("argilla", [str(tmp_path / "records.json")], rating_fields="rate-a=a,rate-b=b")
    assert [(r.completions, r.ranks) for r in report.rankings] == [(("A", "B"), (1, 2))]


def test_argilla_option_fields_maps_options_to_fields(tmp_path):
    record = {
        "id": "x",
        "fields": {"prompt": "P", "first": "A", "second": "B"},
        "responses": [
            {
                "values": {"pref": {"value": [{"value": "reply-1", "rank": 2}, {"value": "reply-2", "rank": 1}]}},
                "status": "submitted",
                "user_id": "u1",
            }
        ],
    }
    (tmp_path / "records.json").write_text(json.dumps({"items": [{"record": record, "query_score": None}]}))
    missing = import_rankings("argilla", [str(tmp_path / "records.json")])
    assert missing.quarantine[0]["reason"] == "ranking option names no field (set option_fields)"
    assert missing.quarantine[0]["detail"] == "option 'reply-1'"
    report = import_rankings("argilla", [str(tmp_path / "records.json")], option_fields="reply-1=first,reply-2=second")
    assert [(r.completions, r.ranks) for r in report.rankings] == [(("A", "B"), (2, 1))]


# -- public preference datasets -----------------------------------------------------------------------------------


def test_hh_rlhf_splits_the_shared_prefix_into_a_chat_prompt(tmp_path):
    # the real files are gzipped JSON Lines
    gz = tmp_path / "train.jsonl.gz"
    gz.write_bytes(gzip.compress(Path(sample("hh_rlhf.jsonl")).read_bytes()))
    report = import_rankings("hh_rlhf", [str(gz)])
    first, second = report.rankings
    assert first.prompt == [{"role": "user", "content": "What are some cuss words in english?"}]
    assert first.completions[1] == "Here's an incomplete list: ass, dick, bugger."
    assert [m["role"] for m in second.prompt] == ["user", "assistant", "user"]
    assert second.completions == ("Usually one to two hours, until it has doubled in size.", "Ten minutes.")
    assert reasons_by_record(report) == [
        (3, "chosen and rejected are identical"),
        (4, "chosen and rejected differ before their final assistant turn"),
        (5, "the rejected reply is empty"),
    ]


def test_shp_total_orders_become_rankings_partial_orders_pairs():
    report = import_rankings("shp", [sample("shp.json")])  # JSON Lines under a .json name, as SHP ships
    rankings = by_id(report)
    # qt3nxl: a > b, b > c (closure total); ab12cd: c1 > c2, c1 > c3, c3 > c2
    assert rankings["qt3nxl"].completions[0].startswith("Pectinex") and rankings["qt3nxl"].ranks == (1, 2, 3)
    assert rankings["ab12cd"].completions == (
        "Raw flour can carry E. coli, so heat-treat it first.",
        "Only if you use pasteurised eggs and heat-treated flour.",
        "Yes, always.",
    )
    # zz99yy: o1 beats o2 and o3, but o2 and o3 are never compared -> two pairs
    assert sorted(id for id in rankings if id.startswith("zz99yy")) == ["zz99yy:o1>o2", "zz99yy:o1>o3"]
    assert reasons_by_record(report) == [(8, "'labels' is not 0 or 1")]
    assert all(r.annotator is None for r in report.rankings)


def test_shp_pairs_only_option():
    report = import_rankings("shp", [sample("shp.json")], total_orders="false")
    assert len(report.rankings) == 7 and report.k_histogram() == {2: 7}


def test_oasst_groups_ranked_siblings_and_rebuilds_the_conversation():
    report = import_rankings("oasst", [sample("oasst.jsonl")])
    rankings = by_id(report)
    root = rankings["p1"]  # rank 0.0 is best: a2 beats a1; a3 was never ranked
    assert root.completions[1].startswith("A monad is a monoid") and root.ranks == (2, 1)
    assert root.prompt == [{"role": "user", "content": "Can you explain what a monad is?"}]
    follow_up = rankings["p2"]
    assert [m["role"] for m in follow_up.prompt] == ["user", "assistant", "user"]
    assert follow_up.prompt[1]["content"].startswith("A monad is a design pattern")
    assert follow_up.ranks == (1, 2)
    assert report.skipped == {
        "reply left out of its siblings' ranking": 1,
        "deleted reply": 1,
        "fewer than 2 ranked replies to one prompt": 1,
        "parent chain broken: an ancestor message is not in the file": 1,
    }
    broken = next(e for e in report.quarantine if e["reason"].startswith("parent chain"))
    assert broken["detail"] == "missing message_id missing-prompt" and broken["record"] == 11


def test_oasst_messages_written_without_nulls_read_the_same(tmp_path):
    rows = [json.loads(line) for line in Path(sample("oasst.jsonl")).read_text().splitlines()]
    without_nulls = [strip_nulls(row) for row in rows]
    assert any("parent_id" not in row for row in without_nulls) and any("rank" not in row for row in without_nulls)
    (tmp_path / "exclude_nulls.jsonl").write_text("".join(json.dumps(row) + "\n" for row in without_nulls))
    stripped = import_rankings("oasst", [str(tmp_path / "exclude_nulls.jsonl")])
    full = import_rankings("oasst", [sample("oasst.jsonl")])
    assert stripped.rankings == full.rankings and stripped.skipped == full.skipped and full.rankings


def strip_nulls(value):
    """`value` as oasst-data --exclude-nulls and the Open-Assistant backend write it: no null values."""
    if isinstance(value, dict):
        return {key: strip_nulls(item) for key, item in value.items() if item is not None}
    return [strip_nulls(item) for item in value] if isinstance(value, list) else value


@pytest.mark.parametrize("nulls", [True, False])
def test_oasst_message_trees_read_as_their_messages(tmp_path, nulls):
    path = sample("oasst.trees.jsonl")
    if not nulls:
        trees = [strip_nulls(json.loads(line)) for line in Path(path).read_text().splitlines()]
        path = str(tmp_path / "exclude_nulls.trees.jsonl")
        Path(path).write_text("".join(json.dumps(tree) + "\n" for tree in trees))
    report = import_rankings("oasst", [path])
    flat = by_id(import_rankings("oasst", [sample("oasst.jsonl")]))
    rankings = by_id(report)
    # the same rankings as the flat messages of trees t-1 and t-2, nested replies and all
    assert sorted(rankings) == ["p1", "p2"] and rankings == {key: flat[key] for key in ("p1", "p2")}
    assert [m["role"] for m in rankings["p2"].prompt] == ["user", "assistant", "user"]
    # quarantined entries point to the tree's line
    assert reasons_by_record(report) == [
        (1, "deleted reply"),
        (1, "reply left out of its siblings' ranking"),
        (2, "fewer than 2 ranked replies to one prompt"),
        (3, "prompt without assistant replies"),
        (4, "message tree without a prompt"),
    ]


def test_ultrafeedback_ratings_as_strings_and_na():
    assert [rating(v) for v in ("5", 4, "N/A", "", None, [{"Rating": "4"}, {"Rating": "N/A"}])] == [
        5.0,
        4.0,
        None,
        None,
        None,
        4.0,
    ]
    report = import_rankings("ultrafeedback", [sample("ultrafeedback.jsonl")])
    rankings = by_id(report)
    # means of the aspects present: 5, (4 + 5 + 3) / 3 = 4 (honesty N/A), 2.5, 4 -> a tie for second
    assert rankings["ultrafeedback.jsonl:1"].ranks == (1, 2, 3, 2)
    assert rankings["ultrafeedback.jsonl:2"].k == 2 and report.flagged == {UNRATED: ["ultrafeedback.jsonl:2"]}
    assert rankings["ultrafeedback.jsonl:4"].completions == ("Red, yellow, blue.", "Green.")  # list-of-passes form
    assert report.skipped == {"all completions rated equal": 1, "fewer than 2 rated completions": 1}


def test_ultrafeedback_drops_only_the_empty_completion(tmp_path):
    rows = [json.loads(line) for line in Path(sample("ultrafeedback.jsonl")).read_text().splitlines()]
    rows[0]["completions"][2]["response"] = ""  # rated 2.5, but the model answered nothing
    (tmp_path / "uf.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    report = import_rankings("ultrafeedback", [str(tmp_path / "uf.jsonl")])
    first = by_id(report)["uf.jsonl:1"]
    assert first.k == 3 and first.ranks == (1, 2, 2)  # 5, 4, 4: the rest of the row still ranked
    assert report.flagged[EMPTY] == ["uf.jsonl:1"]
    assert report.skipped == {"all completions rated equal": 1, "fewer than 2 rated completions": 1}


def test_ultrafeedback_overall_score_option():
    report = import_rankings("ultrafeedback", [sample("ultrafeedback.jsonl")], score="overall_score")
    assert by_id(report)["ultrafeedback.jsonl:1"].ranks == (1, 3, 4, 2)  # 9, 7, 4, 7.5
    with pytest.raises(DataError, match="unknown score 'vibes'"):
        import_rankings("ultrafeedback", [sample("ultrafeedback.jsonl")], score="vibes")


RECURSION = (
    "It is when something is defined using a smaller copy of itself, like Russian dolls.",
    "Recursion is recursion.",
)


def test_ultrafeedback_binarized_pairs_with_full_conversations():
    report = import_rankings("ultrafeedback", [sample("ultrafeedback_binarized.jsonl")])
    rankings = by_id(report)
    first = rankings["ultrafeedback_binarized.jsonl:1"]
    assert first.prompt == [{"role": "user", "content": "Explain recursion to a child."}]
    assert (first.completions, first.ranks, first.annotator) == (RECURSION, (1, 2), None)
    assert rankings["ultrafeedback_binarized.jsonl:2"].completions == ("Bonjour.", "Bonne nuit.")
    assert reasons_by_record(report) == [
        (3, "chosen and rejected scored equal: no preference"),
        (4, "field 'rejected': the rejected reply is empty"),
    ]


def test_trl_pairs_of_full_conversations_that_repeat_the_prompt(tmp_path):
    # as TRL reads them: the jsonl format keeps every pair, scores or not
    report = import_rankings("jsonl", [sample("ultrafeedback_binarized.jsonl")])
    first = by_id(report)["ultrafeedback_binarized.jsonl:1"]
    assert first.prompt == [{"role": "user", "content": "Explain recursion to a child."}]
    assert first.completions == RECURSION and len(report.rankings) == 3
    assert report.skipped == {"field 'rejected': the rejected reply is empty": 1}
    # the explicit conversational form whose chosen/rejected repeat a prompt given as messages
    turns = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Tell me a joke."},
    ]
    row = {
        "prompt": turns,
        "chosen": turns + [{"role": "assistant", "content": "A pun."}],
        "rejected": turns + [{"role": "assistant", "content": "No."}],
    }
    (tmp_path / "pairs.jsonl").write_text(json.dumps(row) + "\n")
    (pair,) = import_rankings("jsonl", [str(tmp_path / "pairs.jsonl")]).rankings
    assert (pair.prompt, pair.completions) == (turns, ("A pun.", "No."))


def binarized_rows():
    return [json.loads(line) for line in Path(sample("ultrafeedback_binarized.jsonl")).read_text().splitlines()]


def pairs_of(report):
    return [(r.prompt, r.completions, r.ranks) for r in report.rankings]


def test_a_hub_dataset_name_with_a_split_is_read_offline_from_the_local_cache(tmp_path, monkeypatch):
    import datasets
    import huggingface_hub

    from tests.helpers.hub_cache import cache_hub_dataset

    cache = cache_hub_dataset(tmp_path / "hf", "HuggingFaceH4/ultrafeedback_binarized", "train_prefs", binarized_rows())
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)  # never a network fetch
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    report = import_rankings("ultrafeedback", ["HuggingFaceH4/ultrafeedback_binarized:train_prefs"])
    from_file = import_rankings("ultrafeedback", [sample("ultrafeedback_binarized.jsonl")])
    assert report.records_read == 4 and pairs_of(report) == pairs_of(from_file) and len(report.rankings) == 2
    assert report.skipped == from_file.skipped
    with pytest.raises(DataError) as missing:  # a split the cache does not hold: one line naming the reference
        import_rankings("ultrafeedback", ["HuggingFaceH4/ultrafeedback_binarized:test_prefs"])
    assert str(missing.value).startswith(
        "HuggingFaceH4/ultrafeedback_binarized:test_prefs: no such file, and not loadable as hub dataset"
    ) and "\n" not in str(missing.value)


def hub_snapshot(folder: Path, splits: dict[str, list[dict]], card: bool) -> Path:
    """A folder as huggingface_hub.snapshot_download leaves a parquet dataset: data/<split>-00000-of-00001.parquet,
    and a README.md whose YAML `configs` names the splits' files."""
    import pyarrow as pa
    import pyarrow.parquet as parquet

    (folder / "data").mkdir(parents=True)
    for split, rows in splits.items():
        parquet.write_table(pa.Table.from_pylist(rows), folder / "data" / f"{split}-00000-of-00001.parquet")
    if card:
        files = "".join(f"  - split: {split}\n    path: data/{split}-*\n" for split in splits)
        (folder / "README.md").write_text(f"---\nconfigs:\n- config_name: default\n  data_files:\n{files}---\n")
    return folder


def test_a_hub_snapshot_folder_of_parquet_files_is_read_by_split(tmp_path, monkeypatch, capsys):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")  # nothing left in ~/.cache
    rows = binarized_rows()
    snapshot = hub_snapshot(
        tmp_path / "ultrafeedback_binarized", {"train_prefs": rows[:3], "test_prefs": rows[3:]}, card=True
    )
    train = import_rankings("ultrafeedback", [f"{snapshot}:train_prefs"])
    assert train.records_read == 3 and pairs_of(train) == pairs_of(
        import_rankings("ultrafeedback", [sample("ultrafeedback_binarized.jsonl")])
    )
    with pytest.raises(DataError, match=r"holds splits train_prefs, test_prefs: name one as .*:SPLIT$"):
        import_rankings("ultrafeedback", [str(snapshot)])
    with pytest.raises(DataError, match=r"has no split 'validation' \(splits: train_prefs, test_prefs\)"):
        import_rankings("ultrafeedback", [f"{snapshot}:validation"])
    # one split, no card: the folder alone, and through the CLI
    single = hub_snapshot(tmp_path / "one", {"train": rows}, card=False)
    code, out, _ = run_cli(
        ["import", "--format", "ultrafeedback", str(single), "-o", str(tmp_path / "r.jsonl")], capsys
    )
    assert code == 0 and out.startswith("read 4 records (ultrafeedback)\nwrote 2 rankings")


def test_prodigy_compare_and_choice_answers():
    report = import_rankings("prodigy", [sample("prodigy.jsonl")])
    rankings = by_id(report)
    assert rankings["2001:rlhf_ab-alice"].ranks == (1, 2)  # accept prefers the "accept" output
    assert rankings["2002:rlhf_ab-alice"].completions == ("Sunny weather.", "A rainy day.")
    assert rankings["2002:rlhf_ab-alice"].ranks == (2, 1)  # reject prefers the "reject" output
    # the same choice task by two annotators: selected options beat the rest
    assert rankings["2004:rlhf_ab-alice"].ranks == (1, 2, 1)
    assert rankings["2004:rlhf_ab-bob"].ranks == (1, 2, 2) and rankings["2004:rlhf_ab-bob"].annotator == "rlhf_ab-bob"
    assert reasons_by_record(report) == [
        (3, "answer: ignore"),
        (6, "choice with nothing selected"),
        (7, "choice answered reject (the task, not an option)"),
    ]


def test_jsonl_importer_reads_ours_and_trl_and_quarantines_bad_lines():
    report = import_rankings("jsonl", [sample("rankings_and_trl.jsonl")])
    assert [r.id for r in report.rankings] == ["r1", "r2", "rankings_and_trl.jsonl:4", "rankings_and_trl.jsonl:5"]
    assert reasons_by_record(report) == [
        (3, "field 'ranks': must be integers"),
        (6, "field 'ranks': all completions are tied: no preference pair"),
        (7, "not valid JSON"),
    ]
    assert report.quarantine[-1]["detail"] == "Invalid control character at"
    assert report.k_histogram() == {2: 3, 3: 1}
    assert report.annotators() == {"(none)": 3, "alice": 1}


def test_chat_prompts_that_repeat_a_role_are_merged_and_ones_ending_on_the_assistant_are_left_out(tmp_path):
    """HH-RLHF has a Human speaking twice in a row, which chat templates that insist on alternating roles refuse;
    a conversation that ends on the assistant leaves the completions nothing to answer."""
    rows = [
        {
            "chosen": "\n\nHuman: Hi.\n\nHuman: Still there?\n\nAssistant: Yes.",
            "rejected": "\n\nHuman: Hi.\n\nHuman: Still there?\n\nAssistant: No.",
        },
        {
            "chosen": "\n\nHuman: Hi.\n\nAssistant: Hello.\n\nAssistant: Anyone?",
            "rejected": "\n\nHuman: Hi.\n\nAssistant: Hello.\n\nAssistant: Bye.",
        },
        {
            "chosen": "\n\nHuman: Say Human: hi.\n\nAssistant: I said Assistant: hi.",
            "rejected": "\n\nHuman: Say Human: hi.\n\nAssistant: No.",
        },
    ]
    path = tmp_path / "hh.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    report = import_rankings("hh_rlhf", [str(path)])
    merged, quoted = report.rankings
    assert merged.prompt == [{"role": "user", "content": "Hi.\n\nStill there?"}]
    assert report.flagged == {"turns of one role in a row, merged into one turn": [merged.id]}
    assert reasons_by_record(report) == [
        (2, "field 'prompt': the conversation ends with an assistant turn: no user turn for the completions to answer")
    ]
    # A role name inside a turn is text, not a turn.
    assert quoted.prompt == [{"role": "user", "content": "Say Human: hi."}]
    assert quoted.completions == ("I said Assistant: hi.", "No.")


def test_unknown_format_and_option_are_config_errors():
    with pytest.raises(ConfigError, match="unknown format 'doccano'"):
        import_rankings("doccano", [sample("shp.json")])
    with pytest.raises(ConfigError, match="format 'shp' has no option 'score' \\(options: total_orders\\)"):
        import_rankings("shp", [sample("shp.json")], score="x")


# -- the CLI ------------------------------------------------------------------------------------------------------


def run_cli(args, capsys):
    try:
        code = main(args)
    except SystemExit as exit:
        code = exit.code
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_import_writes_rankings_quarantine_and_summary(tmp_path, capsys):
    output = tmp_path / "rankings.jsonl"
    code, out, err = run_cli(
        [
            "import",
            "--format",
            "label_studio",
            sample("label_studio_rlhf_pairwise.json"),
            sample("label_studio_ranker.json"),
            "--option",
            f"config={RANKER_CONFIG}",
            "-o",
            str(output),
        ],
        capsys,
    )
    assert (code, err) == (0, "")
    lines = [json.loads(line) for line in output.read_text().splitlines()]
    assert len(lines) == 7 and set(lines[0]) == {"id", "prompt", "completions", "ranks", "annotator"}
    quarantine = [json.loads(line) for line in quarantine_path(output).read_text().splitlines()]
    assert [(q["source"], q["record"], q["kind"], q["reason"]) for q in quarantine] == [
        (sample("label_studio_rlhf_pairwise.json"), 2, "skipped", "cancelled (skipped) annotation"),
        (sample("label_studio_rlhf_pairwise.json"), 3, "skipped", "empty result (submitted without a choice)"),
        (sample("label_studio_rlhf_pairwise.json"), 4, "skipped", "draft, never submitted"),
        (sample("label_studio_rlhf_pairwise.json"), 5, "skipped", "task not annotated"),
        (sample("label_studio_rlhf_pairwise.json"), 6, "invalid", "field 'completions': all completions are identical"),
    ]
    assert quarantine[0]["raw"]["annotation"]["was_cancelled"] is True
    summary = out.splitlines()
    assert summary[:4] == [
        "read 11 records (label_studio)",
        f"wrote 7 rankings to {output}",
        "K histogram: K=2: 3, K=3: 4",
        "annotators: 1: 5, bea@example.com: 1, 2: 1",
    ]
    assert f"left out 5 (details in {quarantine_path(output)}):" in summary
    assert "       1  cancelled (skipped) annotation" in summary
    assert f"flagged 1: {UNTOUCHED} (ids: 11:202)" in summary
    assert f"flagged 1: {UNRANKED} (ids: 13:204)" in summary
    assert "merged duplicate completions in 1 rankings" in summary


def test_cli_merge_annotators(tmp_path, capsys):
    output = tmp_path / "merged.jsonl"
    code, out, _ = run_cli(
        [
            "import",
            "--format",
            "label_studio",
            sample("label_studio_min.json"),
            "-o",
            str(output),
            "--merge-annotators",
        ],
        capsys,
    )
    rankings = [json.loads(line) for line in output.read_text().splitlines()]
    assert code == 0 and [r["annotator"] for r in rankings] == ["1+7", "1"]
    assert "merged annotators: 3 rankings -> 2, 0 groups cancelled out" in out
    assert "labeler agreement" not in out  # merged: no two rankings of the same responses are left


def test_cli_summary_shows_labeler_agreement_where_annotators_ranked_the_same_responses(tmp_path, capsys):
    code, out, _ = run_cli(
        ["import", "--format", "label_studio", sample("label_studio_min.json"), "-o", str(tmp_path / "rankings.jsonl")],
        capsys,
    )
    # Annotators 1 and 7 both put Canberra above Sydney: one shared pair, in full agreement.
    assert code == 0 and out.splitlines()[-2:] == [
        "labeler agreement: pairwise 1.000 on 1 response pairs that two annotators both ranked (1 prompts' responses "
        "ranked by several), Krippendorff's alpha (ordinal) 1.000",
        "agreement with the others by annotator (pairs): 1: 1.000 (1), 7: 1.000 (1)",
    ]


def test_cli_wrong_format_is_one_line_exit_2_and_leaves_output_untouched(tmp_path, capsys):
    output = tmp_path / "rankings.jsonl"
    output.write_text("precious\n")
    code, out, err = run_cli(["import", "--format", "argilla", sample("hh_rlhf.jsonl"), "-o", str(output)], capsys)
    assert code == 2 and out == ""
    assert err == (
        f"error: {sample('hh_rlhf.jsonl')}: not an Argilla records export: "
        "records have no 'responses', no '<question>.responses' keys and no v1 "
        "'<question>-suggestion-metadata' columns\n"
    )
    assert output.read_text() == "precious\n" and not quarantine_path(output).exists()


def test_cli_bad_option_and_nothing_imported_are_errors(tmp_path, capsys):
    output = tmp_path / "rankings.jsonl"
    output.write_text("precious\n")
    code, _, err = run_cli(
        ["import", "--format", "shp", sample("shp.json"), "-o", str(output), "--option", "total_orders"], capsys
    )
    assert code == 2 and err.startswith("error: --option 'total_orders' must read KEY=VALUE") and err.count("\n") == 1
    quarantine_path(output).write_text("the quarantine of precious\n")
    code, _, err = run_cli(
        [
            "import",
            "--format",
            "label_studio",
            sample("label_studio_rlhf_pairwise.json"),
            "-o",
            str(output),
            "--merge-annotators",
        ],
        capsys,
    )
    # the two annotators of task 1 cancel out: nothing to write, and the old pair of files is left as it was
    assert (code, err) == (
        2,
        f"error: {output}: no rankings imported from 6 records, so nothing was written; left "
        "out: 1 cancelled (skipped) annotation; 1 empty result (submitted without a choice); "
        "1 draft, never submitted; ...\n",
    )
    assert output.read_text() == "precious\n"
    assert quarantine_path(output).read_text() == "the quarantine of precious\n"


def test_cli_an_export_with_no_records_is_one_line_and_writes_nothing(tmp_path, capsys):
    (tmp_path / "export.json").write_text("[]\n")
    output = tmp_path / "rankings.jsonl"
    code, _, err = run_cli(
        ["import", "--format", "label-studio", str(tmp_path / "export.json"), "-o", str(output)], capsys
    )
    assert (code, err) == (
        2,
        f"error: {output}: no rankings imported from 0 records, so nothing was written; left "
        "out: nothing, the inputs hold no records\n",
    )
    assert sorted(path.name for path in tmp_path.iterdir()) == ["export.json"]


def test_cli_output_into_missing_directory_is_an_error(tmp_path, capsys):
    code, _, err = run_cli(
        ["import", "--format", "shp", sample("shp.json"), "-o", str(tmp_path / "missing" / "out.jsonl")], capsys
    )
    assert code == 2 and "output directory does not exist" in err


def test_cli_an_export_imported_twice_is_kept_once_and_the_copies_counted(tmp_path, capsys):
    shutil.copy(sample("oasst.jsonl"), tmp_path / "a.jsonl")
    shutil.copy(sample("oasst.jsonl"), tmp_path / "b.jsonl")
    output = tmp_path / "out.jsonl"
    code, out, _ = run_cli(
        ["import", "--format", "oasst", str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl"), "-o", str(output)], capsys
    )
    assert code == 0 and out.startswith("read 24 records (oasst)\nwrote 2 rankings")
    assert f"      12  {DUPLICATE_RECORD}" in out.splitlines()
    copies = [
        entry
        for entry in map(json.loads, quarantine_path(output).read_text().splitlines())
        if entry["reason"] == DUPLICATE_RECORD
    ]
    assert [(entry["source"], entry["record"], entry["kind"]) for entry in copies] == [
        (str(tmp_path / "b.jsonl"), number, "skipped") for number in range(1, 13)
    ]
    assert copies[0]["detail"] == f"the same as record 1 of {tmp_path / 'a.jsonl'}"


# -- the importers' contract: every record accounted for, odd bytes and numbers -------------------------------------

SAMPLES_OF_EVERY_FORMAT = [
    ("label_studio", "label_studio_rlhf_pairwise.json", {}),
    ("label_studio", "label_studio_ranker.json", {"config": RANKER_CONFIG}),
    ("label_studio", "label_studio_min.json", {}),
    ("label_studio", "label_studio.csv", {}),
    ("label_studio", "label_studio_old_converter.csv", {}),
    ("label_studio", "label_studio_ratings.json", {"config": RATINGS_CONFIG}),
    ("label_studio", "label_studio_ratings_min.json", {"config": RATINGS_CONFIG}),
    ("label_studio", "label_studio_choices.json", {"config": CHOICES_CONFIG}),
    ("label_studio", "label_studio_choices_min.json", {"config": CHOICES_CONFIG}),
    ("argilla", "argilla_rest.json", {}),
    ("argilla", "argilla_v1_feedback.jsonl", {}),
    ("argilla", "argilla_v1_feedback.jsonl", {"rating_fields": V1_RATINGS}),
    ("hh_rlhf", "hh_rlhf.jsonl", {}),
    ("ultrafeedback", "ultrafeedback.jsonl", {}),
    ("ultrafeedback", "ultrafeedback_binarized.jsonl", {}),
    ("prodigy", "prodigy.jsonl", {}),
    ("jsonl", "rankings_and_trl.jsonl", {}),
    ("shp", "shp.json", {}),
    ("shp", "shp.json", {"total_orders": "false"}),
    ("oasst", "oasst.jsonl", {}),
    ("oasst", "oasst.trees.jsonl", {}),
]


@pytest.mark.parametrize("format, name, options", SAMPLES_OF_EVERY_FORMAT)
def test_every_record_read_is_imported_or_quarantined_with_a_reason(format, name, options):
    from rlhf.labels.importers import IMPORTERS
    from rlhf.labels.importers.base import Imported, RecordsRead, Skipped

    def records_of(event: Imported | Skipped) -> set[int]:
        return {event.record, *event.also}

    events = list(IMPORTERS[format]([sample(name)], **options))
    (read,) = [event.count for event in events if isinstance(event, RecordsRead)]
    imported = set().union(*(records_of(event) for event in events if isinstance(event, Imported)))
    quarantined = set().union(*(records_of(event) for event in events if isinstance(event, Skipped) and event.reason))
    assert imported | quarantined == set(range(1, read + 1))
    # and the report keeps them: each Imported is a ranking, each Skipped a quarantine entry with its records
    report = import_rankings(format, [sample(name)], **options)
    in_quarantine = {n for entry in report.quarantine for n in [entry["record"], *entry.get("also_records", [])]}
    moved = in_quarantine - quarantined  # rankings that collect() quarantined (all completions identical)
    assert report.records_read == read > 0 and quarantined <= in_quarantine
    assert len(report.rankings) + len(moved) == sum(isinstance(event, Imported) for event in events)


def test_a_byte_order_mark_is_accepted_in_csv_and_json(tmp_path):
    csv_with_bom = tmp_path / "excel.csv"
    csv_with_bom.write_bytes(b"\xef\xbb\xbf" + Path(sample("label_studio.csv")).read_bytes())
    json_with_bom = tmp_path / "export.json"
    json_with_bom.write_bytes(b"\xef\xbb\xbf" + Path(sample("label_studio_min.json")).read_bytes())
    assert by_id(import_rankings("label_studio", [str(csv_with_bom)])) == by_id(
        import_rankings("label_studio", [sample("label_studio.csv")])
    )
    assert by_id(import_rankings("label_studio", [str(json_with_bom)])) == by_id(
        import_rankings("label_studio", [sample("label_studio_min.json")])
    )


def test_a_truncated_gzip_is_one_line_exit_2(tmp_path, capsys):
    whole = gzip.compress(Path(sample("hh_rlhf.jsonl")).read_bytes())
    cut = tmp_path / "train.jsonl.gz"
    cut.write_bytes(whole[: len(whole) // 2])
    code, out, err = run_cli(["import", "--format", "hh_rlhf", str(cut), "-o", str(tmp_path / "r.jsonl")], capsys)
    assert code == 2 and err == f"error: {cut}: gzip file is truncated (it ends before its end-of-stream marker)\n"
    assert not (tmp_path / "r.jsonl").exists()


def test_a_lone_surrogate_is_quarantined_with_its_record_and_the_rest_written(tmp_path, capsys):
    tasks = json.loads(Path(sample("label_studio_ranker.json")).read_text())
    tasks[0]["data"]["items"][2]["body"] = "Nobody \ud800 knows."  # "\ud800" in the file: valid JSON, not Unicode
    broken = tmp_path / "export.json"
    broken.write_text(json.dumps(tasks))  # ensure_ascii: the file holds the escape, as a buggy exporter writes it
    output = tmp_path / "rankings.jsonl"
    code, out, err = run_cli(
        ["import", "--format", "label_studio", str(broken), "--option", f"config={RANKER_CONFIG}", "-o", str(output)],
        capsys,
    )
    assert (code, err) == (0, "")
    quarantine = [json.loads(line) for line in quarantine_path(output).read_text(encoding="utf-8").splitlines()]
    assert [(q["record"], q["reason"]) for q in quarantine] == [
        (1, "field 'completions': holds a lone surrogate (text that is not Unicode, cannot be written as UTF-8)")
    ]
    assert quarantine[0]["raw"]["task"] == 10
    written = [json.loads(line)["id"] for line in output.read_text(encoding="utf-8").splitlines()]
    assert written == ["11:202", "12:203", "13:204", "14:205"]


def test_ranks_written_as_whole_floats_are_accepted(tmp_path):
    rows = [{"id": "f1", "prompt": "P", "completions": ["a", "b", "c"], "ranks": [2.0, 1.0, 3.0], "annotator": None}]
    (tmp_path / "pandas.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    report = import_rankings("jsonl", [str(tmp_path / "pandas.jsonl")])
    assert [r.ranks for r in report.rankings] == [(2, 1, 3)] and report.skipped == {}


def test_a_lone_surrogate_in_a_quarantined_record_is_kept_as_escaped_text(tmp_path, capsys):
    (tmp_path / "r.jsonl").write_text(
        '{"id": "a", "prompt": "P", "completions": ["x\\udc80", "y"], "ranks": [1, 2]}\n'
        '{"id": "b", "prompt": "P", "completions": ["x", "y"], "ranks": [1, 2]}\n'
    )
    output = tmp_path / "out.jsonl"
    code, out, err = run_cli(["import", "--format", "jsonl", str(tmp_path / "r.jsonl"), "-o", str(output)], capsys)
    assert (code, err) == (0, "")
    (entry,) = [json.loads(line) for line in quarantine_path(output).read_text(encoding="utf-8").splitlines()]
    assert entry["record"] == 1 and entry["raw"]["completions"] == ["x\\udc80", "y"]
    assert [json.loads(line)["id"] for line in output.read_text(encoding="utf-8").splitlines()] == ["b"]


# -- hostile inputs: deep nesting, bombs ----------------------------------------------------------------------------

DEEP = "[" * 10**5 + "]" * 10**5


def with_a_deep_record_last(name: str, tmp_path) -> tuple[str, int]:
    """A copy of the sample `name` with one more record, nested 10^5 levels deep; and that record's number."""
    text = Path(sample(name)).read_text()
    copy = tmp_path / name
    try:
        document = json.loads(text)
    except json.JSONDecodeError:  # JSON Lines
        copy.write_text(text.rstrip("\n") + "\n" + DEEP + "\n")
        return str(copy), len(text.rstrip("\n").splitlines()) + 1
    records = document["items"] if isinstance(document, dict) else document  # a list, or {"items": [...]}
    records.append("the deep record")
    copy.write_text(json.dumps(document).replace('"the deep record"', DEEP))
    return str(copy), len(records)


@pytest.mark.parametrize(
    "format, name, options", [case for case in SAMPLES_OF_EVERY_FORMAT if not case[1].endswith(".csv")]
)
def test_every_importer_quarantines_a_record_nested_too_deep_and_imports_the_rest(format, name, options, tmp_path):
    deep, number = with_a_deep_record_last(name, tmp_path)
    before = import_rankings(format, [sample(name)], **options)
    after = import_rankings(format, [deep], **options)
    assert [r.to_dict() for r in after.rankings] == [r.to_dict() for r in before.rankings]
    assert reasons_by_record(after) == sorted(reasons_by_record(before) + [(number, "nested deeper than 100 levels")])


def test_cli_a_gzip_bomb_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys):
    bomb = tmp_path / "train.jsonl.gz"  # real rows, then 4 MB of gzip members that inflate to one 4 GiB line
    bomb.write_bytes(gzip.compress(Path(sample("hh_rlhf.jsonl")).read_bytes()) + gzip.compress(b"x" * 2**26) * 64)
    output = tmp_path / "rankings.jsonl"
    code, out, err = run_cli(["import", "--format", "hh_rlhf", str(bomb), "-o", str(output)], capsys)
    assert (code, out) == (2, "") and err == (
        f"error: {bomb}: inflates to over 100 times its compressed size, as a "
        "decompression bomb does: refused before it inflates further\n"
    )
    assert not output.exists() and not quarantine_path(output).exists()


# -- hostile inputs: NaN and infinite ratings, scores and ranks -----------------------------------------------------

NOT_FINITE = [float("nan"), float("inf"), float("-inf")]


def rewritten(tmp_path, name: str, edit) -> str:
    """A copy of the sample `name` (a JSON document, or JSON Lines) with `edit(records)` applied; json.dumps writes
    NaN and Infinity as the bare tokens that json.loads reads back."""
    text = Path(sample(name)).read_text()
    copy = tmp_path / name
    if name.endswith(".jsonl") or name == "shp.json":
        rows = [json.loads(line) for line in text.splitlines()]
        edit(rows)
        copy.write_text("".join(json.dumps(row) + "\n" for row in rows))
    else:
        document = json.loads(text)
        edit(document)
        copy.write_text(json.dumps(document))
    return str(copy)


def set_(path: list, value):
    def edit(document):
        *parents, last = path
        for key in parents:
            document = document[key]
        document[last] = value

    return edit


@pytest.mark.parametrize("value", NOT_FINITE)
def test_label_studio_a_non_finite_rating_quarantines_its_annotation_naming_the_rating(tmp_path, value):
    path = rewritten(
        tmp_path, "label_studio_ratings.json", set_([0, "annotations", 0, "result", 1, "value", "rating"], value)
    )
    before = by_id(import_rankings("label_studio", [sample("label_studio_ratings.json")], config=RATINGS_CONFIG))
    report = import_rankings("label_studio", [path], config=RATINGS_CONFIG)
    assert (1, f"field 'rating_b': rating must be a finite number, not {value}") in reasons_by_record(report)
    assert sorted(by_id(report)) == sorted(set(before) - {"20:301"})


@pytest.mark.parametrize("value", NOT_FINITE)
def test_argilla_a_non_finite_rating_or_rank_is_quarantined_naming_the_question(tmp_path, value):
    rows = set_([0, "rating-2", 0, "value"], value)
    report = import_rankings(
        "argilla", [rewritten(tmp_path, "argilla_v1_feedback.jsonl", rows)], rating_fields=V1_RATINGS
    )
    assert (1, f"field 'rating-2': rating must be a finite number, not {value}") in reasons_by_record(report)
    assert f"p1:{ALICE}" not in by_id(report)
    ranks = set_(["items", 0, "responses", 0, "values", "ranking", "value", 1, "rank"], value)
    report = import_rankings("argilla", [rewritten(tmp_path, "argilla_rest.json", ranks)])
    assert (1, "field 'ranks': must be integers") in reasons_by_record(report)


@pytest.mark.parametrize("written", ["inf", "-inf", "nan", "NaN", float("nan"), float("inf")])
def test_ultrafeedback_a_non_finite_aspect_rating_quarantines_the_row_naming_the_field(tmp_path, written):
    edit = set_([0, "completions", 2, "annotations", "helpfulness", "Rating"], written)
    report = import_rankings("ultrafeedback", [rewritten(tmp_path, "ultrafeedback.jsonl", edit)])
    assert "ultrafeedback.jsonl:1" not in by_id(report)
    (entry,) = [entry for entry in report.quarantine if entry["record"] == 1]
    assert entry["reason"] == f"field 'completions.annotations.helpfulness': must be a finite number, not {written!r}"
    assert entry["detail"] == "completion 3"


def test_ultrafeedback_non_finite_scores_and_a_mean_that_overflows_are_quarantined(tmp_path):
    overall = rewritten(tmp_path, "ultrafeedback.jsonl", set_([0, "completions", 1, "overall_score"], float("nan")))
    report = import_rankings("ultrafeedback", [overall], score="overall_score")
    assert (1, "field 'completions.overall_score': must be a finite number, not nan") in reasons_by_record(report)

    def huge(rows):
        for aspect in ("honesty", "helpfulness"):
            rows[0]["completions"][0]["annotations"][aspect]["Rating"] = "1e308"  # finite, but their sum is not

    report = import_rankings("ultrafeedback", [rewritten(tmp_path, "ultrafeedback.jsonl", huge)])
    assert (1, "field 'completions.mean_aspects': must be a finite number, not inf") in reasons_by_record(report)

    binarized = rewritten(tmp_path, "ultrafeedback_binarized.jsonl", set_([0, "score_chosen"], float("nan")))
    report = import_rankings("ultrafeedback", [binarized])
    assert (1, "field 'score_chosen': must be a finite number, not nan") in reasons_by_record(report)


def test_oasst_an_infinite_rank_is_quarantined_and_nan_reads_as_unranked(tmp_path):
    report = import_rankings("oasst", [rewritten(tmp_path, "oasst.jsonl", set_([1, "rank"], float("inf")))])
    assert (2, "field 'rank': must be a finite number or null, not inf") in reasons_by_record(report)
    assert all(
        "A monad is a design pattern that chains computations with context." not in r.completions
        for r in report.rankings
    )
    report = import_rankings("oasst", [rewritten(tmp_path, "oasst.jsonl", set_([1, "rank"], float("nan")))])
    assert (2, "fewer than 2 ranked replies to one prompt") in reasons_by_record(report)  # NaN: pandas' null


@pytest.mark.parametrize("value", NOT_FINITE)
def test_our_ranks_and_shp_labels_that_are_not_finite_are_quarantined(tmp_path, value):
    ours = tmp_path / "rankings.jsonl"
    ours.write_text(
        json.dumps({"id": "r1", "prompt": "P", "completions": ["a", "b"], "ranks": [value, 1]})
        + "\n"
        + json.dumps({"id": "r2", "prompt": "P", "completions": ["a", "b"], "ranks": [2, 1]})
        + "\n"
    )
    report = import_rankings("jsonl", [str(ours)])
    assert reasons_by_record(report) == [(1, "field 'ranks': must be integers")] and list(by_id(report)) == ["r2"]
    with pytest.raises(DataError, match=f"{ours}: record 1: field 'ranks': must be integers"):
        read_rankings(ours)  # the reward model's train_file
    report = import_rankings("shp", [rewritten(tmp_path, "shp.json", set_([0, "labels"], value))])
    assert (1, "'labels' is not 0 or 1") in reasons_by_record(report)


def test_cli_a_nan_rating_is_left_out_and_said_so(tmp_path, capsys):
    path = rewritten(
        tmp_path, "label_studio_ratings.json", set_([0, "annotations", 0, "result", 1, "value", "rating"], float("nan"))
    )
    output = tmp_path / "rankings.jsonl"
    code, out, err = run_cli(
        ["import", "--format", "label-studio", path, "--option", f"config={RATINGS_CONFIG}", "-o", str(output)], capsys
    )
    assert (code, err) == (0, "") and "left out nothing" not in out
    assert "       1  field 'rating_b': rating must be a finite number, not nan" in out.splitlines()


# -- duplicates: exact copies kept once, shared ids kept and renamed -------------------------------------------------


def with_the_first_record_again(name: str, tmp_path) -> tuple[str, int]:
    """A copy of the sample `name` with its first record repeated at the end; and the copy's record number."""
    text = Path(sample(name)).read_text()
    copy = tmp_path / name
    try:
        document = json.loads(text)
    except json.JSONDecodeError:  # JSON Lines
        lines = text.rstrip("\n").splitlines()
        copy.write_text("\n".join(lines + lines[:1]) + "\n")
        return str(copy), len(lines) + 1
    records = document["items"] if isinstance(document, dict) else document
    records.append(json.loads(json.dumps(records[0])))
    copy.write_text(json.dumps(document, indent=1))
    return str(copy), len(records)


@pytest.mark.parametrize(
    "format, name, options", [case for case in SAMPLES_OF_EVERY_FORMAT if not case[1].endswith(".csv")]
)
def test_every_importer_keeps_an_exact_duplicate_record_once(format, name, options, tmp_path):
    repeated, number = with_the_first_record_again(name, tmp_path)
    before = import_rankings(format, [sample(name)], **options)
    after = import_rankings(format, [repeated], **options)
    assert [r.to_dict() for r in after.rankings] == [r.to_dict() for r in before.rankings]
    assert reasons_by_record(after) == sorted(reasons_by_record(before) + [(number, DUPLICATE_RECORD)])
    (copy,) = [entry for entry in after.quarantine if entry["reason"] == DUPLICATE_RECORD]
    assert (copy["kind"], copy["detail"]) == ("skipped", f"the same as record 1 of {repeated}")


def test_cli_different_records_sharing_an_id_are_kept_renamed_and_flagged(tmp_path, capsys):
    path = tmp_path / "rankings.jsonl"
    rows = [
        {
            "id": "q1",
            "prompt": "Name a colour.",
            "completions": ["Blue.", "Seven."],
            "ranks": [1, 2],
            "annotator": annotator,
        }
        for annotator in ("alice", "bob", "carol")
    ]
    rows.append({**rows[0], "id": "q1#2", "annotator": "dave"})  # an id the renaming must step over
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    output = tmp_path / "out.jsonl"
    code, out, err = run_cli(["import", "--format", "jsonl", str(path), "-o", str(output)], capsys)
    assert (code, err) == (0, "")
    written = [json.loads(line) for line in output.read_text().splitlines()]
    assert [(row["id"], row["annotator"]) for row in written] == [
        ("q1", "alice"),
        ("q1#3", "bob"),
        ("q1#4", "carol"),
        ("q1#2", "dave"),
    ]
    assert f"flagged 2: {RENAMED_ID} (ids: q1#3, q1#4)" in out.splitlines()


def test_oasst_a_message_id_of_an_earlier_different_message_is_quarantined(tmp_path):
    path = rewritten(tmp_path, "oasst.jsonl", lambda rows: rows.append({**rows[1], "text": "Another reply."}))
    report = import_rankings("oasst", [path])
    assert (13, "message_id of an earlier, different message") in reasons_by_record(report)
    assert all("Another reply." not in r.completions for r in report.rankings)


# -- output paths: directories, read-only places, a full disk; the pair written together or not at all ---------------


def old_outputs(tmp_path):
    output = tmp_path / "rankings.jsonl"
    output.write_text("old rankings\n")
    quarantine_path(output).write_text("old quarantine\n")
    return output


def import_args(output):
    return ["import", "--format", "label_studio", sample("label_studio_rlhf_pairwise.json"), "-o", str(output)]


@pytest.mark.parametrize("filling", ["rankings.jsonl.", "rankings.jsonl.quarantine.jsonl"])
def test_cli_a_full_disk_is_one_line_and_leaves_the_old_pair(tmp_path, capsys, monkeypatch, filling):
    output = old_outputs(tmp_path)
    writes_fail(monkeypatch, filling, errno.ENOSPC)
    code, out, err = run_cli(import_args(output), capsys)
    written = output if filling == "rankings.jsonl." else quarantine_path(output)
    assert (code, out) == (2, "") and err.startswith(f"error: no space left on device writing {written} (")
    assert err.count("\n") == 1 and "free space and run again" in err
    assert output.read_text() == "old rankings\n" and quarantine_path(output).read_text() == "old quarantine\n"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["rankings.jsonl", "rankings.jsonl.quarantine.jsonl"]


def test_cli_a_read_only_directory_is_one_line_naming_the_file(tmp_path, capsys, monkeypatch):
    def read_only(*args, **kwargs):  # as mkstemp fails in a read-only directory, also for root (chmod would not)
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    output = tmp_path / "rankings.jsonl"
    code, out, err = run_cli(import_args(output), capsys)
    assert (code, out, err) == (2, "", f"error: {output}: cannot be written (Read-only file system)\n")
    assert list(tmp_path.iterdir()) == []


def test_cli_an_output_path_that_is_a_directory_is_one_line_before_the_import(tmp_path, capsys):
    code, out, err = run_cli(import_args(tmp_path), capsys)
    assert (code, out, err) == (2, "", f"error: {tmp_path}: is a directory; name a file to write\n")
    output = tmp_path / "rankings.jsonl"
    quarantine_path(output).mkdir()
    code, out, err = run_cli(import_args(output), capsys)
    assert (code, err) == (2, f"error: {quarantine_path(output)}: is a directory; name a file to write\n")
    assert not output.exists()


def test_cli_when_the_second_rename_fails_the_first_file_is_put_back(tmp_path, capsys, monkeypatch):
    output = old_outputs(tmp_path)
    real_replace = os.replace

    def replace(source, target):
        if str(target) == str(quarantine_path(output)) and ".new" in str(source):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(source, target)

    monkeypatch.setattr(os, "replace", replace)
    code, _, err = run_cli(import_args(output), capsys)
    assert code == 2 and err.startswith(f"error: no space left on device writing {quarantine_path(output)} (")
    assert output.read_text() == "old rankings\n" and quarantine_path(output).read_text() == "old quarantine\n"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["rankings.jsonl", "rankings.jsonl.quarantine.jsonl"]

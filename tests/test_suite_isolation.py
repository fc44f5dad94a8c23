"""The suite runs in pytest-xdist workers, each taking whole files in an order of its own: nothing one file sets up
may reach the files after it on the same worker."""

from __future__ import annotations

from pathlib import Path

CONFTEST = Path(__file__).with_name("conftest.py")


def test_a_world_of_one_set_up_by_a_module_fixture_does_not_reach_the_next_file(pytester, monkeypatch):
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    pytester.makeconftest(CONFTEST.read_text())
    pytester.makepyfile(
        test_a_sets_up_a_world_of_one="""
            import os
            import pytest

            @pytest.fixture(scope="module")
            def in_process_run():
                # what rlhf.ppo.engines.init_distributed does for a stage run in-process
                os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_PORT="45767")

            def test_first(in_process_run):
                assert os.environ["MASTER_PORT"] == "45767"

            def test_second(in_process_run):
                assert os.environ["MASTER_PORT"] == "45767"
        """,
        test_b_starts_a_pipeline="""
            import os

            def test_inherits_nothing_distributed():
                assert not {key for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_PORT") if key in os.environ}
        """,
    )
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-p", "no:xdist")
    result.assert_outcomes(passed=3)

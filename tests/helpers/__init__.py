"""What the tests share: tiny models and data built from config, numbers worked out by hand, fault injection, and
the scripts that multi-process tests run on every rank."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TESTS = REPO / "tests"

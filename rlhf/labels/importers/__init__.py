"""One importer per labeling tool or public preference dataset, all yielding the events of `base`.

report = import_rankings("label_studio", ["export.json"], merge_annotators=False, prompt_field="prompt")
report.rankings, report.quarantine, report.skipped, report.flagged, ...
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Sequence

from rlhf.errors import ConfigError
from rlhf.labels.importers.argilla import read_argilla
from rlhf.labels.importers.base import Imported, ImportReport, RecordsRead, Skipped, collect
from rlhf.labels.importers.hh_rlhf import read_hh_rlhf
from rlhf.labels.importers.jsonl import read_jsonl
from rlhf.labels.importers.label_studio import read_label_studio
from rlhf.labels.importers.oasst import read_oasst
from rlhf.labels.importers.prodigy import read_prodigy
from rlhf.labels.importers.shp import read_shp
from rlhf.labels.importers.ultrafeedback import read_ultrafeedback

IMPORTERS: dict[str, Callable[..., Iterator]] = {
    "label_studio": read_label_studio,
    "argilla": read_argilla,
    "hh_rlhf": read_hh_rlhf,
    "shp": read_shp,
    "oasst": read_oasst,
    "ultrafeedback": read_ultrafeedback,
    "prodigy": read_prodigy,
    "jsonl": read_jsonl,
}

__all__ = ["IMPORTERS", "ImportReport", "Imported", "RecordsRead", "Skipped", "import_rankings", "importer_options"]


def importer_options(format: str) -> list[str]:
    """The keyword options an importer takes (what `--option KEY=VALUE` may set)."""
    parameters = inspect.signature(_importer(format)).parameters.values()
    return [p.name for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY]


def import_rankings(format: str, paths: Sequence[str], *, merge_annotators: bool = False, **options) -> ImportReport:
    """Read `paths` with the `format` importer into an ImportReport (rankings, quarantine, counts)."""
    reader = _importer(format)
    unknown = sorted(set(options) - set(importer_options(format)))
    if unknown:
        allowed = ", ".join(importer_options(format)) or "none"
        raise ConfigError(f"format '{format}' has no option '{unknown[0]}' (options: {allowed})")
    return collect(reader(list(paths), **options), merge_annotator_rankings=merge_annotators)


def _importer(format: str) -> Callable[..., Iterator]:
    if format not in IMPORTERS:
        raise ConfigError(f"unknown format '{format}' (one of: {', '.join(IMPORTERS)})")
    return IMPORTERS[format]

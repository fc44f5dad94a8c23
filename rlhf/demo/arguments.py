"""The pipeline's settings for the bundled demo, kept apart from its own: where to write the demo's model and data,
at what size, and how its simulated labelers (`labels: simulated`) overlap."""

from __future__ import annotations

from dataclasses import dataclass, field

from rlhf.demo.annotate import OVERLAP
from rlhf.errors import ConfigError


@dataclass
class DemoArguments:
    prepare_demo: str = field(
        default="",
        metadata={
            "help": "Write the bundled demo (model + data) here first, when it is not there yet, and run every "
            "stage on it (its model, demonstrations and prompts, wherever the stage configs point). Empty: bring "
            "your own."
        },
    )
    demo_scale: float = field(default=1.0, metadata={"help": "Scale of the demo's data splits (tests use 0.02)."})
    demo_hidden_size: int = field(default=128, metadata={"help": "Width of the demo's tiny model."})
    label_overlap: float = field(
        default=OVERLAP,
        metadata={
            "help": "With labels: simulated, the share of prompts two of the demo's labelers rank, so that their "
            "agreement shows in the import summary and report."
        },
    )

    def __post_init__(self):
        if not 0 <= self.label_overlap <= 1:
            raise ConfigError(f"label_overlap must be between 0 and 1, got {self.label_overlap}")

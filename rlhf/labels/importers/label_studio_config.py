"""What a Label Studio labeling config says that an export leaves out (labelstud.io/tags).

- <Ranker name=".."> <Bucket name=".."/>...: the bucket columns in order, best first. Export key order is not it.
- Object tags (<Text name="answer1" value="$answer1"/>, <List>, ...): which task data key each name shows. A
  result's `to_name` is the object's name, not the data key, and the two differ in many configs.
- Control tags (<Rating>, <Choices>, <Pairwise>, <Ranker>): name -> (tag, toName). JSON-MIN and CSV exports key
  results by the control's name only and drop `to_name`, and a single <Choice> there is a bare string, so only
  the config tells a Rating's response or a Choices column apart from task data.
"""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, field

from rlhf.errors import DataError

CONTROL_TAGS = ("rating", "choices", "pairwise", "ranker")


@dataclass(frozen=True)
class LabelingConfig:
    buckets: dict[str, list[str]] = field(default_factory=dict)  # Ranker name -> <Bucket> names, best first
    data_keys: dict[str, str] = field(default_factory=dict)  # object tag name -> the task data key it shows
    controls: dict[str, tuple[str, str]] = field(default_factory=dict)  # control name -> (tag, toName)

    def data_key(self, object_name: str) -> str:
        return self.data_keys.get(object_name, object_name)

    def names_of(self, tag: str) -> list[str]:
        return [name for name, (kind, _) in self.controls.items() if kind == tag]


def read_labeling_config(path: str) -> LabelingConfig:
    try:
        root = ElementTree.parse(path).getroot()
    except OSError as error:
        raise DataError(f"cannot read the labeling config: {error.strerror or error}", file=path) from None
    except ElementTree.ParseError as error:
        raise DataError(f"labeling config is not XML: {error}", file=path) from None
    config = LabelingConfig()
    for element in root.iter():
        name, tag = element.get("name"), element.tag.lower()
        if not name:
            continue
        if tag in CONTROL_TAGS:
            config.controls[name] = (tag, element.get("toName", ""))
        elif (element.get("value") or "").startswith("$"):
            config.data_keys[name] = element.get("value")[1:]
        if tag == "ranker":
            config.buckets[name] = [bucket.get("name") for bucket in element.iter("Bucket")]
    return config

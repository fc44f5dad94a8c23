"""A `datasets` cache entry as `load_dataset(name, split=split)` leaves it after a download, built locally from rows,
so that tests read hub data sets offline (HF_HUB_OFFLINE=1) and never fetch anything."""

from __future__ import annotations

from pathlib import Path


def cache_hub_dataset(cache: Path, name: str, split: str, rows: list[dict]) -> Path:
    """Write `rows` as split `split` of hub data set `name` under <cache>/datasets (HF_DATASETS_CACHE):
    <owner>___<name>/default/0.0.0/<hash>/<name>-<split>.arrow. Returns that HF_DATASETS_CACHE directory."""
    import pyarrow as pa
    import pyarrow.parquet as parquet
    from datasets.packaged_modules.parquet.parquet import Parquet

    owner, short = name.split("/")
    source = cache / "source" / f"{split}.parquet"
    source.parent.mkdir(parents=True, exist_ok=True)
    parquet.write_table(pa.Table.from_pylist(rows), source)
    builder = Parquet(
        cache_dir=str(cache / "datasets"),
        dataset_name=f"{owner}___{short}",
        config_name="default",
        hash="0123456789abcdef",
        data_files={split: str(source)},
    )
    builder.download_and_prepare()
    built = Path(builder.cache_dir)  # <dataset dir>/<config dir>/0.0.0/<hash>
    prefix = builder.dataset_name  # the builder snake-cases names ("HuggingFaceH4" -> "hugging_face_h4")
    for file in built.glob(f"{prefix}-*"):
        file.rename(built / file.name.replace(prefix, short))
    built.parents[1].rename(built.parents[2] / "default")
    dataset_dir = built.parents[2]
    if dataset_dir.name != f"{owner}___{short}":
        dataset_dir.rename(dataset_dir.parent / f"{owner}___{short}")
    return cache / "datasets"

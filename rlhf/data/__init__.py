"""Data formats, loading with clear errors, and the labeling-tool importers."""

"""Data formats, loading and importers. Import-light on purpose: nothing here imports torch."""

"""The data formats several stages share: records in any container, prompt and response formatting, rankings,
prompts and demonstrations. Import-light on purpose: nothing here imports torch (tests/test_layout.py)."""

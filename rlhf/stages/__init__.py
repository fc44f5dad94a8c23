"""The three stages, each runnable as `python -m rlhf.stages.<name>` and under the deepspeed launcher."""

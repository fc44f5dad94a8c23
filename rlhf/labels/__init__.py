"""Human labels in and out of the pipeline: sample K responses per prompt for people to rank, write them as
tasks for their labeling tool (exporters), and read the tool's export back as rankings (importers).

    python -m rlhf.labels export ...    (rlhf.labels.cli)
    python -m rlhf.labels import ...

Import-light: nothing here imports torch until a policy is sampled.
"""

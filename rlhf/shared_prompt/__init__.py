"""Shared-prompt forwards: a prompt's K responses in one row behind one copy of the prompt.

A reward model scores K responses to a prompt, and PPO with `samples_per_prompt` > 1 scores and trains on n
responses to each; run one by one, every response pays for every layer of the whole prompt again, which in real
preference data (hundreds of prompt tokens, replies of a few dozen) is most of the work. Packed as
`[prompt | response_1 | ... | response_K]`, with a mask that lets each response see the prompt and itself only and
positions that continue from the prompt's end, every response's outputs are those of its own forward, and the
prompt is computed once.

- `layout`: the row layout, positions, mask and the places to read outputs back (pure functions of tensors);
- `forward`: running a model on that layout, and the start-up check of whether a model honours it.
"""

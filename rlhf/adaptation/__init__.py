"""Adaptation: which parameters a stage trains (full, LoRA, prompt/prefix tuning, IA3, Houlsby adapters,
BitFit, a reward-head probe), and how the adapted model is saved and loaded.

    model = load_adapted(base_path, task="causal_lm", is_trainable=True)    # checkpoint.py
    model = apply_adaptation(model, config, task="causal_lm")              # apply.py
    print(parameter_summary(model))
    ... train ...
    save_adapted(model, tokenizer, out_dir, config)                         # checkpoint.py
    model = load_adapted(out_dir, task="causal_lm")

`config.py` (which every stage config includes) imports neither torch nor peft; peft itself loads only when a peft
method or directory is used.
"""

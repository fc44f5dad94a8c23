"""Evaluations of a run's models after training, each a subcommand of `python -m rlhf.evaluate`.

    python -m rlhf.evaluate best-of-n --policy sft --reward_model rm [--prompts FILE] [--n 1 2 4 ... 64]

`overoptimisation` holds the math (best-of-N's KL and selection, Gao et al. 2022's functional forms) as pure
functions; `best_of_n` samples and scores; `__main__` is the command line. Import-light: nothing here imports
torch until a model is loaded.
"""

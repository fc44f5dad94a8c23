"""The reward model's Trainer on tiny models, for tests of its loss and shared-prompt forwards."""

from rlhf.rm.batches import RankingCollator


def ranking_trainer(model, output_dir, shared_prompt_forward: bool):
    from transformers import TrainingArguments

    from rlhf.rm.trainer import RankingTrainer

    args = TrainingArguments(
        output_dir=str(output_dir), report_to="none", use_cpu=True, remove_unused_columns=False, label_names=["ranks"]
    )
    return RankingTrainer(
        model=model,
        args=args,
        data_collator=RankingCollator(pad_token_id=0),
        shared_prompt_forward=shared_prompt_forward,
    )

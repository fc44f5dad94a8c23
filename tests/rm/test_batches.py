"""rlhf.rm.batches: rankings of any K padded into one batch and their scores scattered back."""

import torch

from rlhf.rm.batches import RankingCollator, scores_on_grid


def test_collator_pads_variable_k_and_scatters_back():
    features = [
        {"input_ids": [[5, 6], [7]], "ranks": [2, 1]},
        {"input_ids": [[8], [9, 10, 11], [12]], "ranks": [1, 3, 2]},
    ]
    batch = RankingCollator(pad_token_id=0)(features)
    assert batch["ranks"].tolist() == [[2, 1, 0], [1, 3, 2]]
    assert batch["input_ids"].tolist() == [[5, 6, 0], [7, 0, 0], [8, 0, 0], [9, 10, 11], [12, 0, 0]]
    assert batch["attention_mask"].sum(1).tolist() == [2, 1, 1, 3, 1]
    assert batch["slot_index"].tolist() == [0, 1, 3, 4, 5]  # row * K + column; slot 2 is the empty one
    flat = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5], requires_grad=True)
    grid = scores_on_grid(flat, batch["slot_index"], batch["ranks"])
    assert torch.allclose(grid, torch.tensor([[0.1, 0.2, 0.0], [0.3, 0.4, 0.5]]))
    grid.sum().backward()
    assert flat.grad.tolist() == [1.0] * 5  # every real completion gets its gradient, once

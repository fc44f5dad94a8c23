"""Rows of packed sequences (rlhf/packed_rows.py): which sequences share a row, worked out by hand."""

from __future__ import annotations

import pytest


def test_rows_are_filled_first_fit_in_the_given_order():
    from rlhf.packed_rows import plan_rows

    assert plan_rows([5, 3, 4, 2], capacity=8) == [[0, 1], [2, 3]]
    # 2 goes back to the first row, which still has room for it; 5 then fills the second.
    assert plan_rows([6, 3, 2, 5], capacity=8) == [[0, 2], [1, 3]]
    assert plan_rows([8, 8], capacity=8) == [[0], [1]]
    with pytest.raises(ValueError, match="9 tokens does not fit a row of 8"):
        plan_rows([9], capacity=8)

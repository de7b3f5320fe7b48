"""One batches class for the training loop: equal batches of rows, columns cut alike."""
import pytest
import torch

from slmkit.data.batches import Batches
from slmkit.errors import SlmError


def test_rows_of_every_column_are_cut_alike_and_the_last_partial_batch_dropped():
    ids = torch.arange(7 * 3).view(7, 3)
    b = Batches({"input_ids": ids, "labels": -ids}, batch_size=2)
    assert len(b) == 3
    assert torch.equal(b[1]["input_ids"], ids[2:4]) and torch.equal(b[1]["labels"], -ids[2:4])
    with pytest.raises(IndexError):
        b[3]


def test_lazy_columns_are_read_for_the_batch_s_rows_only():
    calls = []

    def lazy(lo, hi):
        calls.append((lo, hi))
        return {"t_values": torch.full((hi - lo, 3), float(lo))}

    b = Batches({"input_ids": torch.zeros(8, 3, dtype=torch.long)}, 4, lazy)
    assert float(b[1]["t_values"][0, 0]) == 4.0 and calls == [(4, 8)]


def test_too_few_rows_for_one_batch_is_a_one_line_error():
    with pytest.raises(SlmError, match="fills 3 blocks, fewer than one batch of 4"):
        Batches({"input_ids": torch.zeros(3, 8)}, 4)
    with pytest.raises(ValueError, match="different lengths"):
        Batches({"input_ids": torch.zeros(4, 8), "labels": torch.zeros(3, 8)}, 2)

"""The training loop's dataset: equal-size batches of token blocks.

    batches = Batches({"input_ids": blocks}, batch_size=4)          # blocks: (N, T)
    batches[i]        # {"input_ids": (4, T)}, rows 4i .. 4i+3

Every source of training data ends up as rows of equal length: plain token blocks
(distillation, the loop's tests), packed examples with labels and per-example
position ids (fine-tuning), the teacher's tokens and alignment per block
(cross-tokenizer distillation). Each is a column of N rows, cut the same way. A
``lazy`` source adds columns read on demand for a range of rows (the teacher
cache's top-k logits, from disk). The last partial batch is dropped so every
batch has the same shape; a batch's position in the data is its index, so a resumed
run reads exactly the batches the unbroken run would have read.
"""
from __future__ import annotations

from typing import Callable, Mapping

import torch

from ..errors import SlmError

Lazy = Callable[[int, int], dict]


class Batches:
    """Columns of N rows as a sized, indexable dataset of batches of ``batch_size`` rows.

    Args:
        columns: name -> tensor (N, ...), ``input_ids`` among them.
        batch_size: rows per batch.
        lazy: ``lazy(lo, hi) -> {name: tensor (hi - lo, ...)}``, more columns of rows
            [lo, hi) read when a batch is.
    """

    def __init__(self, columns: Mapping[str, torch.Tensor], batch_size: int,
                 lazy: Lazy | None = None):
        n = len(columns["input_ids"])
        if any(len(v) != n for v in columns.values()):
            raise ValueError(f"columns of different lengths: "
                             f"{ {k: len(v) for k, v in columns.items()} }")
        if n < batch_size:
            raise SlmError(f"the training data fills {n} blocks, fewer than one batch of "
                           f"{batch_size}", "add data, or lower batch_size or seq_len")
        self.columns, self.batch_size, self.lazy = dict(columns), batch_size, lazy

    def __len__(self) -> int:
        return len(self.columns["input_ids"]) // self.batch_size

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < len(self):
            raise IndexError(i)
        lo, hi = i * self.batch_size, (i + 1) * self.batch_size
        batch = {k: v[lo:hi] for k, v in self.columns.items()}
        if self.lazy is not None:
            batch.update(self.lazy(lo, hi))
        return batch

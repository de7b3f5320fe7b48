"""The state one training run shares between the loop and its checkpoints: what is
trained, by whom (rank, world), and how far it got. The loop's helpers take this one
object instead of threading its parts through positional arguments."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .config import TrainConfig


@dataclass
class RunProgress:
    """How far the run got: what a checkpoint records and a resumed run restores."""

    step: int = 0
    position: int = 0         # global micro-batches consumed (all ranks)
    tokens: int = 0
    time_s: float = 0.0
    loss_curve: list = field(default_factory=list)
    eval_curve: list = field(default_factory=list)

    FIELDS = ("step", "position", "tokens", "time_s", "loss_curve", "eval_curve")


@dataclass
class TrainState:
    """One run of :func:`slmkit.tune.loop.train`.

    Attributes:
        model: the module being trained (full weights; under FSDP its storage is shared
            with the sharded copy).
        cfg: the run's settings.
        work_dir: checkpoints go to ``work_dir/checkpoints``.
        params: the trainable parameters by name (this rank's shards under FSDP).
        opt: the optimizer over ``params``.
        forward: ``forward(batch) -> (loss, metrics)``.
        rank, world: this process and the number of ranks.
        sharded: the :class:`slmkit.tune.fsdp.Sharded` copy under FSDP, else None.
        eval_fn: ``eval_fn() -> {name: float}`` or None.
        run: how far the run got.
    """

    model: nn.Module
    cfg: TrainConfig
    work_dir: Path
    params: dict[str, nn.Parameter]
    opt: torch.optim.Optimizer
    forward: Callable[[dict], tuple[torch.Tensor, dict]]
    rank: int = 0
    world: int = 1
    sharded: object | None = None
    eval_fn: Callable[[], dict] | None = None
    run: RunProgress = field(default_factory=RunProgress)

    @property
    def device(self) -> torch.device:
        return next(iter(self.params.values())).device

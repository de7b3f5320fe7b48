"""Settings and report of one run of the training loop (:func:`slmkit.tune.loop.train`)."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ..device import Device

# Below these, compiling (tens of seconds) costs more than it saves (~20% of a step).
COMPILE_MIN_PARAMS = 50_000_000
COMPILE_MIN_STEPS = 20
# Fields that change the loss curve: a checkpoint made with other values cannot be resumed.
_CURVE_FIELDS = ("lr", "warmup_steps", "schedule", "min_lr_ratio", "weight_decay", "batch_size",
                 "grad_accum", "max_grad_norm", "bf16", "bf16_base", "seed", "shuffle",
                 "adam_betas")
PARALLEL_HELP = ("with WORLD_SIZE > 1 (torchrun): ddp keeps a full copy of the weights, "
                 "gradients and optimizer state on every rank; fsdp shards them, so each of K "
                 "ranks holds ~1/K (for models whose training state does not fit one process; "
                 "all weights train, not LoRA)")


class TrainSettings(BaseModel):
    """The training loop's settings, declared once: :class:`TrainConfig` and the configs of
    the steps that train (``FinetuneConfig``, ``DistillConfig``) inherit them, so a recipe
    or the command line sets them by the same flat names, and a step hands them to the
    loop with :meth:`train_config` instead of copying them field by field."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    device: Device = "auto"                # where PyTorch runs (slmkit.device)
    lr: float = Field(2e-4, gt=0, description="peak learning rate")
    warmup_steps: int = Field(10, ge=0)
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="final lr / peak lr")
    weight_decay: float = Field(0.0, ge=0, description="AdamW decay on matrices (not norms/biases)")
    batch_size: int = Field(4, ge=1, description="sequences per micro-batch (used by batch builders)")
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimizer step and rank")
    max_grad_norm: float = Field(1.0, ge=0, description="clip total grad norm; 0 = off")
    bf16: bool = Field(True, description="bf16 autocast (weights stay fp32)")
    bf16_base: bool = Field(True, description="with bf16: hold the frozen weights (embeddings, "
                            "norms, head) in bf16 while training, so hidden states run in "
                            "bf16 as in the checkpoint's own dtype; False = fp32 hidden "
                            "states (only the frozen Linear weights in bf16: plain "
                            "autocast's numbers)")
    grad_checkpointing: bool = Field(False, description="recompute each decoder layer's "
                                     "activations in the backward pass: less memory, "
                                     "more compute")
    compile: bool | None = Field(None, description="torch.compile each decoder layer; None = "
                                 f"when the model has >= {COMPILE_MIN_PARAMS // 10**6}M "
                                 f"parameters and the run >= {COMPILE_MIN_STEPS} steps")
    blocked_attention: bool = Field(True, description="causal attention in query blocks that "
                                    "skip the keys after them (tune/attention.py) while "
                                    "training; False = PyTorch's sdpa kernels")
    shuffle: bool = Field(True, description="reshuffle batch order each epoch (seeded)")
    eval_every: int = Field(0, ge=0, description="steps between evals; 0 = only at the end")
    eval_at_start: bool = Field(True, description="also evaluate before the first step")
    ckpt_every: int = Field(50, ge=0, description="steps between checkpoints; 0 = only at the end")
    log_every: int = Field(1, ge=1, description="steps between progress-bar updates")
    threads: int | None = Field(None, ge=1, description="CPU threads; default $OMP_NUM_THREADS "
                                "or all cores split over this machine's ranks")
    seed: int = 0

    def train_config(self, max_steps: int, **derived) -> "TrainConfig":
        """The loop's config: these settings, ``max_steps``, and the values the step
        derives for this run (``derived``, e.g. a learning rate chosen by method)."""
        values = {k: getattr(self, k) for k in TrainSettings.model_fields}
        return TrainConfig(**{**values, "max_steps": max_steps, **derived})


class TrainConfig(TrainSettings):
    """Settings of one training run (optimizer, schedule, batching, checkpoints)."""

    max_steps: int = Field(100, ge=1, description="optimizer steps")
    adam_betas: tuple[float, float] = (0.9, 0.95)
    parallel: Literal["ddp", "fsdp"] = Field("ddp", description=PARALLEL_HELP)

    def curve_fingerprint(self) -> str:
        d = {k: getattr(self, k) for k in _CURVE_FIELDS}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class TrainReport:
    """What a training run did; ``to_dict()`` goes into ``report.json``."""

    steps: int = 0
    tokens: int = 0                        # input tokens processed, all ranks, whole run
    time_s: float = 0.0                    # wall time of training steps (this process' runs)
    tokens_per_s: float = 0.0              # tokens / time_s of the last (resumed) segment
    loss_curve: list[dict] = field(default_factory=list)   # {step, tokens, loss, lr, ...}
    eval_curve: list[dict] = field(default_factory=list)   # {step, tokens, **eval_fn()}
    resumed_from: int | None = None
    world_size: int = 1
    parallel: str = "none"                 # "ddp" or "fsdp" under torchrun
    state_bytes: int = 0                   # trainable params + grads + optimizer state, one rank

    @property
    def final_loss(self) -> float | None:
        return self.loss_curve[-1]["loss"] if self.loss_curve else None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["final_loss"] = self.final_loss
        return d

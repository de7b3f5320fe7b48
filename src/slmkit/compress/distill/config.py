"""The options of one distillation run (recipe step ``distill``)."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ...device import Device
from ...pipeline_util import OptionError

KD_KINDS = ("forward_kl", "reverse_kl", "jsd")


class DistillConfig(BaseModel):
    """Options of one distillation run (recipe step ``distill``)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    device: Device = "auto"                # where PyTorch runs (slmkit.device)
    teacher: str = Field(..., description="teacher model spec")
    data: str = Field(..., description="training text: file, directory or built-in corpus")
    tokens: int = Field(200_000, ge=1, description="training tokens (all ranks)")
    seq_len: int = Field(256, ge=8)
    batch_size: int = Field(4, ge=1)
    grad_accum: int = Field(1, ge=1)
    lr: float = Field(2e-4, gt=0)
    warmup_steps: int = Field(10, ge=0)
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, ge=0)
    bf16: bool = True
    grad_checkpointing: bool = False
    compile: bool | None = None                # torch.compile student layers; None = auto
    kd: Literal["forward_kl", "reverse_kl", "jsd"] = "forward_kl"
    temperature: float = Field(1.0, gt=0)
    jsd_beta: float = Field(0.5, gt=0, lt=1, description="JSD mixing weight of the teacher")
    w_kl: float = Field(1.0, ge=0)
    w_ce: float = Field(1.0, ge=0, description="KL + CE beat KL alone in bench/distill.py")
    w_hidden: float = Field(0.0, ge=0)
    layer_pairs: list[tuple[int, int]] | None = Field(
        None, description="(student layer, teacher layer) pairs for hidden matching")
    top_k: int | None = Field(None, ge=1, description="teacher logits kept per token "
                              "(None: full distribution live, 64 for a cache)")
    teacher_cache: str | None = Field(None, description="directory of cached teacher top-k logits")
    cross_tokenizer: bool = Field(False, description="teacher and student tokenizers differ: "
                                  "sorted-probability distance at aligned positions")
    val_tokens: int = Field(16_384, ge=0, description="held-out tokens for perplexity")
    eval_every: int = Field(0, ge=0)
    ckpt_every: int = Field(50, ge=0)
    chunk_tokens: int = Field(1024, ge=1)
    fsdp: bool = Field(False, description="under torchrun, shard the student's weights, "
                       "gradients and optimizer state over the K ranks (each holds ~1/K) "
                       "instead of a full copy per rank")
    resume: bool = True
    seed: int = 0

    @model_validator(mode="after")
    def _cross(self):
        if self.cross_tokenizer:
            if self.teacher_cache:
                raise OptionError("teacher_cache", "{cross_tokenizer} needs the live teacher: "
                                  "drop {teacher_cache}")
            if self.w_hidden > 0:
                raise OptionError("w_hidden", "{cross_tokenizer} pairs tokens, not hidden "
                                  "states: set {w_hidden} to 0")
        if self.w_kl + self.w_ce + self.w_hidden == 0:
            raise OptionError("w_kl", "all loss weights are 0: set {w_kl}, {w_ce} or "
                              "{w_hidden} above 0")
        return self

    def cache_top_k(self, vocab: int) -> int:
        return min(self.top_k or 64, vocab)

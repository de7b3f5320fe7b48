"""The options of one distillation run (recipe step ``distill``)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from ...errors import OptionError
from ...tune.config import TrainSettings

KD_KINDS = ("forward_kl", "reverse_kl", "jsd")


class DistillConfig(TrainSettings):
    """Options of one distillation run (recipe step ``distill``): the training loop's
    settings (:class:`slmkit.tune.config.TrainSettings`: lr, batch_size, bf16, ...) and
    what distillation adds."""

    teacher: str = Field(..., description="teacher model spec")
    data: str = Field(..., description="training text: file, directory or built-in corpus")
    tokens: int = Field(200_000, ge=1, description="training tokens (all ranks)")
    seq_len: int = Field(256, ge=8)
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
    chunk_tokens: int = Field(1024, ge=1)
    fsdp: bool = Field(False, description="under torchrun, shard the student's weights, "
                       "gradients and optimizer state over the K ranks (each holds ~1/K) "
                       "instead of a full copy per rank")
    resume: bool = True

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

"""Distillation losses, one small class each (after torchtune's ``kd_losses.py``).

- Divergences between next-token distributions, per token (n,):
  :class:`ForwardKL`, :class:`ReverseKL`, :class:`JSD` (same vocabulary, full or
  top-k teacher logits) and :class:`SortedProbL1` (cross-tokenizer).
- What the teacher gives one batch, as logits for a chunk of student rows:
  :class:`LiveLogits`, :class:`CachedLogits`, :class:`AlignedLogits`.
- Losses of one chunk of the output head (KD term + CE on the data):
  :class:`FusedKLCE` (forward KL, value and gradient in one sweep: the default),
  :class:`LogitKD` (any divergence, full or top-k teacher logits),
  :class:`AlignedKD` (cross-tokenizer), and :class:`HiddenMSE` on hidden states.
- :class:`DistillLoss` puts them together as the training loop's ``loss_fn``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ...tune.losses import (IGNORE_INDEX, backbone_and_head, chunked_head_loss, fused_ce_kl,
                            hidden_states, shift_labels)
from .config import KD_KINDS, DistillConfig


# ---------------------------------------------------------------- divergences

class Divergence:
    """D(p_teacher || q_student) per token (n,) at temperature T (the T^2 factor is the
    caller's).

    With top-k teacher logits (values (n, k), indices (n, k)), p is the teacher's
    softmax renormalised over its k largest logits; ``renorm_student`` says whether q
    is renormalised over the same k tokens too (or taken from the full softmax).
    """

    renorm_student = True

    def __init__(self, temperature: float = 1.0):
        self.temperature = temperature

    def __call__(self, student_logits: torch.Tensor, teacher: torch.Tensor | tuple
                 ) -> torch.Tensor:
        """Args: student_logits (n, V) fp32; teacher (n, V) logits or (values, indices)."""
        T = self.temperature
        if isinstance(teacher, tuple):
            t_vals, t_idx = teacher
            log_p = torch.log_softmax(t_vals.float() / T, dim=-1)
            z = student_logits / T
            zs = z.gather(-1, t_idx)
            log_q = (torch.log_softmax(zs, dim=-1) if self.renorm_student
                     else zs - torch.logsumexp(z, -1, keepdim=True))
        else:
            log_p = torch.log_softmax(teacher.float() / T, dim=-1)
            log_q = torch.log_softmax(student_logits / T, dim=-1)
        return self.between(log_p, log_q)

    def between(self, log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class ForwardKL(Divergence):
    """KL(p || q) = sum p log(p/q): mean-seeking. With top-k teacher logits the student's
    full softmax is compared at those k tokens (mass it puts elsewhere still counts)."""

    renorm_student = False

    def between(self, log_p, log_q):
        return (log_p.exp() * (log_p - log_q)).sum(-1)


class ReverseKL(Divergence):
    """KL(q || p) = sum q log(q/p): mode-seeking."""

    def between(self, log_p, log_q):
        return (log_q.exp() * (log_q - log_p)).sum(-1)


class JSD(Divergence):
    """Generalized JSD(beta) = beta KL(p||m) + (1-beta) KL(q||m), m = beta p + (1-beta) q
    (Agarwal et al., 2024)."""

    def __init__(self, temperature: float = 1.0, beta: float = 0.5):
        super().__init__(temperature)
        self.beta = beta

    def between(self, log_p, log_q):
        b = self.beta
        log_m = torch.logsumexp(torch.stack([log_p + math.log(b), log_q + math.log(1 - b)]),
                                dim=0)
        return (b * (log_p.exp() * (log_p - log_m)).sum(-1)
                + (1 - b) * (log_q.exp() * (log_q - log_m)).sum(-1))


DIVERGENCES: dict[str, type[Divergence]] = {"forward_kl": ForwardKL, "reverse_kl": ReverseKL,
                                            "jsd": JSD}


def make_divergence(kind: str, temperature: float = 1.0, beta: float = 0.5) -> Divergence:
    """The divergence called ``kind`` (one of :data:`KD_KINDS`)."""
    if kind not in DIVERGENCES:
        raise ValueError(f"unknown KD loss '{kind}', use one of {KD_KINDS}")
    return JSD(temperature, beta) if kind == "jsd" else DIVERGENCES[kind](temperature)


def kd_divergence(student_logits: torch.Tensor, teacher: torch.Tensor | tuple, kind: str,
                  temperature: float = 1.0, beta: float = 0.5) -> torch.Tensor:
    """Per-token divergence (n,) between teacher and student next-token distributions.

    Args:
        student_logits: (n, V) fp32.
        teacher: (n, V) logits, or (values (n, k), indices (n, k)) top-k logits.
        kind: ``forward_kl``, ``reverse_kl`` or ``jsd``.
        temperature: softening T (the T^2 factor is applied by the caller).
        beta: JSD weight of the teacher in the mixture m.
    """
    return make_divergence(kind, temperature, beta)(student_logits, teacher)


def sorted_prob_distance(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                         temperature: float = 1.0, k: int = 256) -> torch.Tensor:
    """Per-position L1 distance (n,) between sorted next-token probabilities.

    Student (n, Vs) and teacher (n, Vt) logits may have different vocabularies: the
    ``k`` largest probabilities of each are compared rank by rank, and the rest of
    the mass as one number, so the result is 0 iff the sorted distributions agree
    on their top k and on the remaining mass.
    """
    k = min(k, student_logits.shape[-1], teacher_logits.shape[-1])
    p_s = torch.softmax(student_logits.float() / temperature, dim=-1).topk(k, dim=-1).values
    p_t = torch.softmax(teacher_logits.float() / temperature, dim=-1).topk(k, dim=-1).values
    tail = (1 - p_s.sum(-1)) - (1 - p_t.sum(-1))
    return (p_s - p_t).abs().sum(-1) + tail.abs()


class SortedProbL1:
    """Universal logit distillation distance (Boizard et al., 2024): needs no shared
    vocabulary, 0 when the distributions agree up to a renaming of tokens."""

    def __init__(self, temperature: float = 1.0, k: int = 256):
        self.temperature, self.k = temperature, k

    def __call__(self, student_logits, teacher_logits):
        return sorted_prob_distance(student_logits, teacher_logits, self.temperature, self.k)


# ---------------------------------------------------------------- the teacher's side

class LiveLogits:
    """The live teacher's logits at the student's own positions (same tokenizer)."""

    def __init__(self, teacher, h: torch.Tensor, top_k: int | None = None):
        self.teacher, self.h, self.top_k = teacher, h, top_k          # h: (n, H)

    def at(self, rows: slice):
        z = self.teacher.logits(self.h[rows])                         # (r, V)
        if self.top_k:
            v, i = z.topk(min(self.top_k, z.shape[-1]), dim=-1)
            return v, i
        return z


class CachedLogits:
    """The teacher's cached top-k logits: values (n, k) and indices (n, k)."""

    def __init__(self, values: torch.Tensor, indices: torch.Tensor):
        self.values, self.indices = values, indices

    def at(self, rows: slice):
        return self.values[rows], self.indices[rows]


class AlignedLogits:
    """The teacher reading its own tokens: ``t_row`` (n,) is the teacher's row for each
    student row (-1 where no teacher token ends at the same character)."""

    def __init__(self, teacher, h: torch.Tensor | None, t_row: torch.Tensor):
        self.teacher, self.h, self.t_row = teacher, h, t_row

    def at(self, rows: slice) -> tuple[torch.Tensor, torch.Tensor]:
        """(mask of the aligned rows (r,), the teacher's logits there (a, Vt))."""
        tr = self.t_row[rows]
        sel = tr >= 0
        return sel, self.teacher.logits(self.h[tr[sel]])


@dataclass
class BatchTargets:
    """What the chunks of one batch share: the data targets (n,), the teacher's side,
    the counts each term is divided by, and the running sums reported as metrics."""

    targets: torch.Tensor
    teacher: LiveLogits | CachedLogits | AlignedLogits | None
    n_kd: int
    n_ce: int = field(init=False)
    kd: torch.Tensor = field(default_factory=lambda: torch.zeros(()))
    ce: torch.Tensor = field(default_factory=lambda: torch.zeros(()))

    def __post_init__(self):
        self.n_ce = int((self.targets != IGNORE_INDEX).sum())

    @property
    def n_tok(self) -> int:
        return self.targets.numel()


# ---------------------------------------------------------------- chunk losses

class ChunkLoss:
    """``w_kl * scale * KD / n_kd + w_ce * CE / n_ce`` over one chunk of rows of the
    output head (sums over the chunk; the counts are the batch's)."""

    def __init__(self, w_kl: float, w_ce: float, scale: float = 1.0):
        self.w_kl, self.w_ce, self.scale = w_kl, w_ce, scale

    def kd_sum(self, logits: torch.Tensor, rows: slice, b: BatchTargets) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, logits: torch.Tensor, rows: slice, b: BatchTargets) -> torch.Tensor:
        loss = torch.zeros((), device=logits.device)
        if self.w_kl > 0:
            kd = self.kd_sum(logits, rows, b)
            b.kd += kd.detach()
            loss = loss + self.w_kl * self.scale * kd / b.n_kd
        ce = F.cross_entropy(logits, b.targets[rows], ignore_index=IGNORE_INDEX,
                             reduction="sum")
        b.ce += ce.detach()
        if self.w_ce > 0:
            loss = loss + self.w_ce * ce / max(1, b.n_ce)
        return loss


class LogitKD(ChunkLoss):
    """A divergence to the teacher's logits (live, top-k or cached), scaled by T^2."""

    def __init__(self, divergence: Divergence, w_kl: float, w_ce: float):
        super().__init__(w_kl, w_ce, scale=divergence.temperature ** 2)
        self.divergence = divergence

    def kd_sum(self, logits, rows, b):
        return self.divergence(logits, b.teacher.at(rows)).sum()


class AlignedKD(ChunkLoss):
    """Sorted-probability distance at the positions aligned with the teacher's tokens."""

    def __init__(self, distance: SortedProbL1, w_kl: float, w_ce: float):
        super().__init__(w_kl, w_ce)
        self.distance = distance

    def kd_sum(self, logits, rows, b):
        sel, t_logits = b.teacher.at(rows)
        return self.distance(logits[sel], t_logits).sum()


class FusedKLCE:
    """CE + forward KL to the full live teacher logits, value and gradient in one sweep
    with no autograd graph (``tune.losses.fused_ce_kl``): the default loss, and CE
    alone when there is no teacher term."""

    def __init__(self, w_kl: float, w_ce: float, temperature: float):
        self.w_kl, self.w_ce, self.temperature = w_kl, w_ce, temperature

    def __call__(self, logits, rows, b: BatchTargets):
        t = b.teacher.at(rows) if self.w_kl > 0 and b.teacher is not None else None
        loss, ce, kd = fused_ce_kl(logits, b.targets[rows], w_ce=self.w_ce / max(1, b.n_ce),
                                   teacher_logits=t, w_kl=self.w_kl / b.n_tok,
                                   temperature=self.temperature)
        b.kd += kd
        b.ce += ce
        return loss


class HiddenMSE:
    """Mean over layer pairs of ||P h_s - h_t||^2 / mean(h_t^2): relative MSE, scale-free
    since residual-stream norms grow with depth (``hidden_states[0]`` = embeddings)."""

    def __call__(self, module: nn.Module, s_all, t_all) -> torch.Tensor:
        total = 0.0
        for (s, t), proj in zip(module.pairs, module.proj):
            hs, ht = proj(s_all[s + 1]).float(), t_all[t + 1].float()
            total = total + F.mse_loss(hs, ht) / ht.pow(2).mean().clamp_min(1e-6)
        return total / max(1, len(module.pairs))


# ---------------------------------------------------------------- the loop's loss_fn

class DistillLoss:
    """``loss_fn(module, batch) -> (loss, metrics)`` for the training loop: the student
    and (when needed) the teacher read the batch, the output head runs in chunks with
    the chunk loss that fits the teacher's side, and hidden states are matched.

    ``module`` is a :class:`slmkit.compress.distill.student.DistillModule`; ``teacher``
    a :class:`slmkit.compress.distill.teacher.Teacher` (its model None when training
    from the cache).
    """

    def __init__(self, cfg: DistillConfig, teacher):
        self.cfg, self.teacher = cfg, teacher
        self.need_hidden = cfg.w_hidden > 0
        self.fused = FusedKLCE(cfg.w_kl, cfg.w_ce, cfg.temperature)
        self.logit_kd = LogitKD(make_divergence(cfg.kd, cfg.temperature, cfg.jsd_beta),
                                cfg.w_kl, cfg.w_ce)
        self.aligned_kd = AlignedKD(SortedProbL1(cfg.temperature, cfg.top_k or 256),
                                    cfg.w_kl, cfg.w_ce)
        self.hidden = HiddenMSE()

    def _live(self) -> bool:
        return self.teacher.model is not None and (self.cfg.w_kl > 0 or self.need_hidden)

    def targets(self, batch: dict) -> tuple[BatchTargets, tuple | None]:
        """The batch's targets and teacher side, and the teacher's hidden states (or None)."""
        ids = batch["input_ids"]                                           # (B, T)
        targets = shift_labels({"input_ids": ids}).reshape(-1)              # (B*T,)
        live, t_all = self._live(), None
        if "t_align" in batch:       # the teacher reads its own tokens
            t_ids, align = batch["t_input_ids"], batch["t_align"]
            offset = torch.arange(align.shape[0])[:, None] * t_ids.shape[1]
            t_row = torch.where(align >= 0, offset + align, -1).reshape(-1)
            h_t = None
            if live:
                h_t, t_all = self.teacher.forward(t_ids, False)
                h_t = h_t.reshape(-1, h_t.shape[-1])
            side = AlignedLogits(self.teacher, h_t, t_row)
            return BatchTargets(targets, side, max(1, int((t_row >= 0).sum()))), t_all
        side = None
        if live:
            h_t, t_all = self.teacher.forward(ids, self.need_hidden)
            side = LiveLogits(self.teacher, h_t.reshape(targets.numel(), -1), self.cfg.top_k)
        elif "t_values" in batch:
            side = CachedLogits(batch["t_values"].reshape(targets.numel(), -1),
                                batch["t_indices"].reshape(targets.numel(), -1))
        return BatchTargets(targets, side, targets.numel()), t_all

    def chunk_loss(self, b: BatchTargets):
        if isinstance(b.teacher, AlignedLogits):
            return self.aligned_kd
        if (self.cfg.kd == "forward_kl" and not self.cfg.top_k
                and not isinstance(b.teacher, CachedLogits)):
            return self.fused
        return self.logit_kd

    def __call__(self, module: nn.Module, batch: dict) -> tuple[torch.Tensor, dict]:
        h_s, s_all = hidden_states(module.student, batch["input_ids"],
                                   all_layers=self.need_hidden)
        b, t_all = self.targets(batch)
        chunk = self.chunk_loss(b)
        _, head, cap = backbone_and_head(module.student)
        loss = chunked_head_loss(h_s.reshape(b.n_tok, -1), head,
                                 lambda logits, rows: chunk(logits, rows, b),
                                 self.cfg.chunk_tokens, cap)
        metrics = {"kd": float(b.kd) / b.n_kd, "ce": float(b.ce) / max(1, b.n_ce)}
        if self.need_hidden:
            hid = self.hidden(module, s_all, t_all)
            loss = loss + self.cfg.w_hidden * hid
            metrics["hidden"] = float(hid.detach())
        return loss, metrics


def make_loss_fn(cfg: DistillConfig, teacher) -> DistillLoss:
    """``loss_fn(module, batch) -> (loss, metrics)`` for the training loop."""
    return DistillLoss(cfg, teacher)

"""Knowledge distillation: a frozen teacher teaches a smaller student.

Loss per token (Hinton et al., 2015; Agarwal et al., 2024 for generalized JSD):

    L = w_kl * T^2 * D(p_T || q_T) + w_ce * CE(q, data) + w_hidden * sum_pairs relMSE

- p_T = softmax(z_teacher / T), q_T = softmax(z_student / T); the T^2 factor keeps
  gradient sizes comparable across temperatures.
- D is forward KL  sum p log(p/q) (mean-seeking), reverse KL  sum q log(q/p)
  (mode-seeking), or generalized JSD(beta) = beta KL(p||m) + (1-beta) KL(q||m) with
  m = beta p + (1-beta) q.
- With top-k teacher logits (the cache, or ``top_k`` set), p is the teacher's
  softmax renormalised over its k largest logits. Forward KL then compares it
  with the student's full softmax at those k tokens (mass the student puts
  elsewhere is still penalised through log q); reverse KL and JSD need p on the
  student's support too, so there the student is also renormalised over the
  same k tokens. With k = vocabulary size all three equal the exact losses.
- Cross-tokenizer (``cross_tokenizer``, after Boizard et al. 2024, "Towards
  Cross-Tokenizer Distillation: the Universal Logit Distillation Loss"): teacher
  and student read the same text, each through its own tokenizer. A student
  position is paired with the teacher position whose token ends at the same
  character (both have then read the same text and predict what follows), and D
  is the L1 distance between their probabilities sorted in decreasing order: the
  k largest of each, plus the difference of the mass beyond them. The distance
  needs no shared vocabulary, and it is 0 when the two distributions are the same
  up to a renaming of tokens.
- Hidden-state matching: the output of student layer s is projected (a learned
  linear map when widths differ, none when equal) and compared with teacher
  layer t by mean squared error relative to the teacher's mean square (scale-free,
  since residual-stream norms grow with depth). Default pairs map student layers
  evenly onto teacher layers (last onto last).

The teacher runs in eval mode, with ``requires_grad=False`` and under
``torch.no_grad``, held in bf16 while training in bf16 (its fp32 weights are put back
afterwards); the report carries a full hash of its weights before and
after the run. Training runs on :func:`slmkit.tune.loop.train` (resumable, data
parallel under torchrun; with ``fsdp`` the student's weights, gradients and optimizer
state are sharded over the ranks, while every rank keeps the whole frozen teacher).
"""
from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from ..data import blocks as data_blocks, load_split, record_text
from ..device import Device, autocast_type, model_device
from ..errors import OptionError, SlmError
from ..evaluate.perplexity import engine_tokens, model_engine, perplexity, step_window
from ..models.catalog import CATALOG, hf_config
from ..models.io import SLM, builtin_gguf, count_params, dir_bytes, load, replace_dir, save
from ..outputs import refuse_existing
from ..progress import progress_bar
from ..tune.loop import TrainConfig, dist_setup, frozen_weights_in_bf16, is_main, train
from ..tune.losses import (IGNORE_INDEX, backbone_and_head, chunked_head_loss, fused_ce_kl,
                           hidden_states, shift_labels)
from . import teacher_cache as tc

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


# ---------------------------------------------------------------- divergences

def _renorm_topk(student_logits, t_vals, t_idx, temperature, renorm_student):
    """Log-probs (n, k) of teacher and student on the teacher's top-k tokens."""
    log_p = torch.log_softmax(t_vals.float() / temperature, dim=-1)
    z = student_logits / temperature
    zs = z.gather(-1, t_idx)
    log_q = torch.log_softmax(zs, dim=-1) if renorm_student else zs - torch.logsumexp(z, -1,
                                                                                       keepdim=True)
    return log_p, log_q


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
    if isinstance(teacher, tuple):
        log_p, log_q = _renorm_topk(student_logits, teacher[0], teacher[1], temperature,
                                    renorm_student=kind != "forward_kl")
    else:
        log_p = torch.log_softmax(teacher.float() / temperature, dim=-1)
        log_q = torch.log_softmax(student_logits / temperature, dim=-1)
    if kind == "forward_kl":
        return (log_p.exp() * (log_p - log_q)).sum(-1)
    if kind == "reverse_kl":
        return (log_q.exp() * (log_q - log_p)).sum(-1)
    if kind == "jsd":
        log_m = torch.logsumexp(torch.stack([log_p + math.log(beta),
                                             log_q + math.log(1 - beta)]), dim=0)
        return (beta * (log_p.exp() * (log_p - log_m)).sum(-1)
                + (1 - beta) * (log_q.exp() * (log_q - log_m)).sum(-1))
    raise ValueError(f"unknown KD loss '{kind}', use one of {KD_KINDS}")


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


# ---------------------------------------------------------------- student wrapper

def default_layer_pairs(n_student: int, n_teacher: int) -> list[tuple[int, int]]:
    """Student layer s -> teacher layer round((s+1) * Lt / Ls) - 1 (last onto last)."""
    return [(s, round((s + 1) * n_teacher / n_student) - 1) for s in range(n_student)]


class DistillModule(nn.Module):
    """The student plus the projections used for hidden-state matching (what is trained)."""

    def __init__(self, student: nn.Module, pairs: list[tuple[int, int]],
                 student_width: int, teacher_width: int):
        super().__init__()
        self.student = student
        self.pairs = list(pairs)
        self.proj = nn.ModuleList(
            nn.Identity() if student_width == teacher_width
            else nn.Linear(student_width, teacher_width, bias=False) for _ in self.pairs)


def _n_layers(model: nn.Module) -> int:
    return int(model.config.num_hidden_layers)


def _width(model: nn.Module) -> int:
    return int(model.config.hidden_size)


def check_pairs(pairs, n_student: int, n_teacher: int) -> None:
    for s, t in pairs:
        if not (0 <= s < n_student and 0 <= t < n_teacher):
            raise SlmError(f"layer pair ({s}, {t}) is out of range (student has {n_student} "
                           f"layers, teacher {n_teacher})", "fix layer_pairs")


# ---------------------------------------------------------------- the loss

class Teacher:
    """The frozen teacher, or None when training from the cache."""

    def __init__(self, model: nn.Module | None):
        self.model = model
        if model is not None:
            model.eval()
            model.requires_grad_(False)

    @torch.no_grad()
    def forward(self, ids: torch.Tensor, all_layers: bool):
        h, hs = hidden_states(self.model, ids, all_layers=all_layers)
        return h, hs

    @torch.no_grad()
    def logits(self, h: torch.Tensor) -> torch.Tensor:
        _, head, cap = backbone_and_head(self.model)
        z = head(h).float()
        return cap * torch.tanh(z / cap) if cap else z


def _hidden_loss(module: DistillModule, s_all, t_all) -> torch.Tensor:
    """Mean over pairs of ||P h_s - h_t||^2 / mean(h_t^2) (hidden_states[0] = embeddings)."""
    total = 0.0
    for (s, t), proj in zip(module.pairs, module.proj):
        hs, ht = proj(s_all[s + 1]).float(), t_all[t + 1].float()
        total = total + F.mse_loss(hs, ht) / ht.pow(2).mean().clamp_min(1e-6)
    return total / max(1, len(module.pairs))


def make_loss_fn(cfg: DistillConfig, teacher: Teacher):
    """``loss_fn(module, batch) -> (loss, metrics)`` for the training loop."""
    need_hidden = cfg.w_hidden > 0
    T2 = cfg.temperature ** 2

    def loss_fn(module: DistillModule, batch: dict):
        ids = batch["input_ids"]                                           # (B, T)
        h_s, s_all = hidden_states(module.student, ids, all_layers=need_hidden)
        live = teacher.model is not None and (cfg.w_kl > 0 or need_hidden)
        cross = "t_align" in batch
        targets = shift_labels({"input_ids": ids}).reshape(-1)              # (B*T,)
        n_tok, n_ce = targets.numel(), int((targets != IGNORE_INDEX).sum())
        n_kd = n_tok
        if cross:           # the teacher reads its own tokens; t_row: its row per student row
            t_ids, align = batch["t_input_ids"], batch["t_align"]
            h_t, t_all = teacher.forward(t_ids, False) if live else (None, None)
            offset = torch.arange(align.shape[0])[:, None] * t_ids.shape[1]
            t_row = torch.where(align >= 0, offset + align, -1).reshape(-1)
            n_kd = max(1, int((t_row >= 0).sum()))
            h_t = h_t.reshape(-1, h_t.shape[-1]) if h_t is not None else None
        else:
            h_t, t_all = teacher.forward(ids, need_hidden) if live else (None, None)
            h_t = h_t.reshape(n_tok, -1) if h_t is not None else None
        cached = ("t_values" in batch) and (h_t is None)
        if cached:
            t_vals = batch["t_values"].reshape(n_tok, -1)
            t_idx = batch["t_indices"].reshape(n_tok, -1)
        parts = {"kd": torch.zeros(()), "ce": torch.zeros(())}

        fused = cfg.kd == "forward_kl" and not cached and not cfg.top_k and not cross

        def chunk(logits: torch.Tensor, rows: slice) -> torch.Tensor:
            if fused:           # the default: value and gradient in one sweep, no graph
                t = teacher.logits(h_t[rows]) if cfg.w_kl > 0 and h_t is not None else None
                loss, ce, kd = fused_ce_kl(logits, targets[rows], w_ce=cfg.w_ce / max(1, n_ce),
                                           teacher_logits=t, w_kl=cfg.w_kl / n_tok,
                                           temperature=cfg.temperature)
                parts["kd"] += kd
                parts["ce"] += ce
                return loss
            loss = torch.zeros((), device=logits.device)
            if cfg.w_kl > 0 and cross:
                tr = t_row[rows]
                sel = tr >= 0
                kd = sorted_prob_distance(logits[sel], teacher.logits(h_t[tr[sel]]),
                                          cfg.temperature, cfg.top_k or 256).sum()
                parts["kd"] += kd.detach()
                loss = loss + cfg.w_kl * kd / n_kd
            elif cfg.w_kl > 0:
                if cached:
                    tgt = (t_vals[rows], t_idx[rows])
                else:
                    tgt = teacher.logits(h_t[rows])
                    if cfg.top_k:
                        v, i = tgt.topk(min(cfg.top_k, tgt.shape[-1]), dim=-1)
                        tgt = (v, i)
                kd = kd_divergence(logits, tgt, cfg.kd, cfg.temperature, cfg.jsd_beta).sum()
                parts["kd"] += kd.detach()
                loss = loss + cfg.w_kl * T2 * kd / n_tok
            ce = F.cross_entropy(logits, targets[rows], ignore_index=IGNORE_INDEX,
                                 reduction="sum")
            parts["ce"] += ce.detach()
            if cfg.w_ce > 0:
                loss = loss + cfg.w_ce * ce / max(1, n_ce)
            return loss

        _, head, cap = backbone_and_head(module.student)
        loss = chunked_head_loss(h_s.reshape(n_tok, -1), head, chunk, cfg.chunk_tokens, cap)
        metrics = {"kd": float(parts["kd"]) / n_kd, "ce": float(parts["ce"]) / max(1, n_ce)}
        if need_hidden:
            hid = _hidden_loss(module, s_all, t_all)
            loss = loss + cfg.w_hidden * hid
            metrics["hidden"] = float(hid.detach())
        return loss, metrics

    return loss_fn


# ---------------------------------------------------------------- data

class DistillBatches:
    """Token blocks (N, T) as batches; with a cache, each batch also carries the teacher's
    top-k logits ``t_values`` (B, T, k) and ``t_indices`` (B, T, k) of its blocks."""

    def __init__(self, blocks: torch.Tensor, batch_size: int, cache=None,
                 cross: "CrossBlocks | None" = None):
        self.blocks, self.batch_size, self.cache, self.cross = blocks, batch_size, cache, cross

    def __len__(self) -> int:
        return len(self.blocks) // self.batch_size

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < len(self):
            raise IndexError(i)
        lo, hi = i * self.batch_size, (i + 1) * self.batch_size
        batch = {"input_ids": self.blocks[lo:hi]}
        if self.cache is not None:
            batch["t_values"], batch["t_indices"] = self.cache.blocks(lo, hi)
        if self.cross is not None:
            batch["t_input_ids"] = self.cross.teacher_ids[lo:hi]
            batch["t_align"] = self.cross.align[lo:hi]
        return batch


@dataclass
class CrossBlocks:
    """The teacher's view of the student's blocks, for cross-tokenizer distillation.

    ``teacher_ids`` (N, Tt): the teacher's tokens of the same text (right-padded);
    ``align`` (N, T): for each student position, the teacher position whose token
    ends at the same character, or -1.
    """

    teacher_ids: torch.Tensor
    align: torch.Tensor

    @property
    def aligned_fraction(self) -> float:
        return float((self.align >= 0).float().mean())


def _ids_and_ends(text: str, tokenizer) -> tuple[list[int], list[int]]:
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return enc["input_ids"], [e for _, e in enc["offset_mapping"]]


def cross_blocks(records: list[dict], s_tok, t_tok, seq_len: int
                 ) -> tuple[torch.Tensor, CrossBlocks]:
    """Student blocks (N, T) packed as :func:`slmkit.data.blocks` does, and the teacher's
    tokens and alignment for each (see :class:`CrossBlocks`)."""
    for name, tok in (("student", s_tok), ("teacher", t_tok)):
        if not getattr(tok, "is_fast", False):
            raise SlmError(f"the {name}'s tokenizer cannot report character offsets",
                           "cross-tokenizer distillation needs fast (Rust) tokenizers")
    s_ids, s_end, t_ids, t_end, base = [], [], [], [], 0
    for r in records:
        text = record_text(r, s_tok)
        for tok, ids, ends in ((s_tok, s_ids, s_end), (t_tok, t_ids, t_end)):
            i, e = _ids_and_ends(text, tok)
            ids += i + ([tok.eos_token_id] if tok.eos_token_id is not None else [])
            ends += [base + x for x in e] + ([base + len(text) + 1]
                                              if tok.eos_token_id is not None else [])
        base += len(text) + 1
    n = len(s_ids) // seq_len
    if n == 0:
        raise SlmError(f"data has {len(s_ids)} tokens, fewer than one block of {seq_len}",
                       "add more data or lower the sequence length")
    t_pos = {e: j for j, e in enumerate(t_end)}          # last teacher token ending there
    t_blocks, aligns = [], []
    j0 = 0
    for b in range(n):
        lo, hi = b * seq_len, (b + 1) * seq_len
        c_lo = s_end[lo - 1] if lo else 0                  # text before this block
        while j0 < len(t_end) and t_end[j0] <= c_lo:
            j0 += 1
        j1 = j0
        while j1 < len(t_end) and t_end[j1] <= s_end[hi - 1]:
            j1 += 1
        t_blocks.append(t_ids[j0:j1])
        aligns.append([t_pos[e] - j0 if j0 <= t_pos.get(e, -1) < j1 else -1
                       for e in s_end[lo:hi]])
    width = max(1, max(len(t) for t in t_blocks))
    pad = t_tok.pad_token_id if t_tok.pad_token_id is not None else (t_tok.eos_token_id or 0)
    teacher_ids = torch.full((n, width), pad, dtype=torch.long)
    for b, t in enumerate(t_blocks):
        teacher_ids[b, :len(t)] = torch.tensor(t, dtype=torch.long)
    blocks = torch.tensor(s_ids[: n * seq_len], dtype=torch.long).view(n, seq_len)
    return blocks, CrossBlocks(teacher_ids, torch.tensor(aligns, dtype=torch.long))


def train_blocks(cfg: DistillConfig, tokenizer, world: int = 1, teacher_tokenizer=None
                 ) -> tuple[torch.Tensor, int, CrossBlocks | None]:
    """(blocks (N, T) used for training, optimizer steps, the teacher's view or None).

    When the data holds more blocks than the budget needs, a seeded random subset
    is used (so a cache covers exactly what is trained on); fewer blocks repeat
    over epochs. With ``teacher_tokenizer`` (cross-tokenizer distillation) the
    teacher's tokens of each block and the alignment come too.
    """
    cross = None
    if teacher_tokenizer is None:
        blocks = data_blocks(cfg.data, tokenizer, cfg.seq_len, which="train")
    else:
        blocks, cross = cross_blocks(load_split(cfg.data, "train"), tokenizer,
                                     teacher_tokenizer, cfg.seq_len)
    per_step = cfg.batch_size * cfg.grad_accum * world
    steps = max(1, math.ceil(cfg.tokens / (per_step * cfg.seq_len)))
    if len(blocks) < cfg.batch_size:
        raise SlmError(f"data '{cfg.data}' gives {len(blocks)} blocks of {cfg.seq_len} tokens, "
                       f"fewer than one batch of {cfg.batch_size}",
                       "add data or lower seq_len / batch_size")
    need = steps * per_step
    if need < len(blocks):
        g = torch.Generator().manual_seed(cfg.seed)
        keep = torch.randperm(len(blocks), generator=g)[:need].sort().values
        blocks = blocks[keep]
        if cross is not None:
            cross = CrossBlocks(cross.teacher_ids[keep], cross.align[keep])
    return blocks, steps, cross


def val_ids(cfg: DistillConfig, slm) -> list[int] | None:
    """The held-out ids the perplexities score: the first ``val_tokens`` of the val split
    of ``data``, as ``slm eval`` reads them (None when there are none)."""
    if cfg.val_tokens <= 0:
        return None
    ids = engine_tokens(model_engine(slm.model, slm.tokenizer), cfg.data, "val", cfg.val_tokens)
    return ids if len(ids) > 1 else None


def val_ppl(model: nn.Module, tokenizer, ids: list[int], cfg: DistillConfig) -> float:
    """Perplexity of ``model`` on ``ids`` (evaluate's, with the step's window)."""
    engine = model_engine(model, tokenizer)
    return perplexity(engine, ids, *step_window(cfg.seq_len), progress=False)["ppl"]


# ---------------------------------------------------------------- checks

def check_tokenizers(teacher_tok, student_tok) -> None:
    """Teacher and student must map text to the same ids."""
    tv, sv = teacher_tok.get_vocab(), student_tok.get_vocab()
    if tv == sv:
        return
    if set(sv) < set(tv):
        raise SlmError(f"the student's vocabulary is a trimmed copy of the teacher's ({len(sv):,} "
                       f"of {len(tv):,} tokens)", "distil from the teacher after the same "
                       "`slm prune --method vocab` (in a recipe: teacher: <the vocab step>)")
    raise SlmError("teacher and student use different tokenizers",
                   "distil into a student made from the teacher (e.g. `slm prune`) or one "
                   "with the same tokenizer, or pass --cross-tokenizer")


def check_sizes(teacher: nn.Module, student: nn.Module, cross_tokenizer: bool = False) -> None:
    vt, vs = teacher.config.vocab_size, student.config.vocab_size
    if vt != vs and not cross_tokenizer:
        raise SlmError(f"teacher vocab_size {vt} != student vocab_size {vs}",
                       "make the student from the teacher's config")
    nt, ns = count_params(teacher), count_params(student)
    if ns > nt:
        warnings.warn(f"the student ({ns / 1e6:.1f}M params) is larger than the teacher "
                      f"({nt / 1e6:.1f}M)", stacklevel=3)


def weights_hash(model: nn.Module) -> str:
    """Full SHA-256 of every tensor in the state dict (names and bytes)."""
    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def teacher_files_fingerprint(spec: str) -> str:
    """Identity of a teacher from its files, without loading it: SHA-256 over config.json
    and every weights file, whole (16 hex digits)."""
    path = builtin_gguf(spec) if spec in CATALOG else Path(spec).expanduser()
    files = [path] if path.is_file() else sorted(
        [*path.glob("config.json"), *path.glob("*.safetensors")])
    if not files:
        raise SlmError(f"teacher '{spec}' not found", "pass a model directory, .gguf or name")
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.name}:{f.stat().st_size}".encode())
        with open(f, "rb") as fh:
            while chunk := fh.read(1 << 24):
                h.update(chunk)
    return h.hexdigest()[:16]


def vocab_fingerprint(tokenizer) -> str:
    items = sorted(tokenizer.get_vocab().items())
    return hashlib.sha256(repr(items).encode()).hexdigest()[:16]


# ---------------------------------------------------------------- students

def student_config(config: str | dict | Path, overrides: dict | None = None,
                   option: str = "--set"):
    """The HF config of a new student: a catalog name, a config JSON file or a dict, with
    ``overrides`` checked against the fields that config has (a misspelt field or a value
    of the wrong type is refused, naming ``option``).

    Returns:
        (config dict, the transformers config built from it).
    """
    if isinstance(config, dict):
        base = dict(config)
    elif str(config) in CATALOG:
        base = dict(CATALOG[str(config)].config)
    elif Path(config).is_file():
        try:
            base = json.loads(Path(config).read_text())
        except (ValueError, UnicodeDecodeError):
            raise SlmError(f"--student-config {config} is not valid JSON",
                           "pass a config.json of an HF model") from None
        if not isinstance(base, dict) or "model_type" not in base:
            raise SlmError(f"--student-config {config} has no model_type",
                           "pass a config.json of an HF model")
    else:
        raise SlmError(f"student config '{config}' is not a catalog name or a JSON file",
                       "pass e.g. smollm2-135m or config.json")
    defaults = hf_config(base).to_dict()
    for key, value in (overrides or {}).items():
        if key not in defaults:
            raise SlmError(f"{option} {key}: the {base['model_type']} config has no field "
                           f"'{key}'", "e.g. num_hidden_layers, hidden_size, "
                           "intermediate_size, num_attention_heads")
        old = defaults[key]
        if not _same_type(old, value):
            raise SlmError(f"{option} {key}={value!r}: expected {type(old).__name__}, like the "
                           f"default {json.dumps(old)}", f"e.g. {option} {key}={json.dumps(old)}")
        if isinstance(old, (int, float)) and not isinstance(old, bool) and value <= 0:
            raise SlmError(f"{option} {key}={value}: must be positive")
    base.update(overrides or {})
    try:
        return base, hf_config(base)
    except Exception as exc:            # transformers' own checks (head dims, ...)
        why = " ".join(str(exc).split())[:240] or type(exc).__name__
        raise SlmError(f"{option}: the student config is not valid ({why})",
                       "check the values given with --set") from None


def _same_type(old, value) -> bool:
    """Whether ``value`` may replace the config value ``old`` (an int where a float is)."""
    if old is None or isinstance(old, dict):
        return True
    if isinstance(old, bool) or isinstance(value, bool):
        return isinstance(old, bool) and isinstance(value, bool)
    if isinstance(old, float):
        return isinstance(value, (int, float))
    return isinstance(value, type(old))


def init_student(teacher, config: str | dict | Path, seed: int = 0, **overrides):
    """A randomly initialised student with the teacher's tokenizer.

    Args:
        teacher: teacher spec or SLM (gives tokenizer and vocabulary).
        config: a catalog name, a JSON file of an HF config, or a dict.
        seed: initialisation seed.
        overrides: config fields to change, e.g. ``num_hidden_layers=8``.
    """
    from transformers import AutoModelForCausalLM

    base, _ = student_config(config, overrides)                # checked before any load
    t = teacher if isinstance(teacher, SLM) else load(teacher)
    tc = t.model.config
    base.update(vocab_size=tc.vocab_size, bos_token_id=tc.bos_token_id,
                eos_token_id=tc.eos_token_id, pad_token_id=getattr(tc, "pad_token_id", None))
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(hf_config(base)).eval()
    return SLM(model, t.tokenizer, f"init:{config}",
               {"source": f"init:{config}", "history": []})


# ---------------------------------------------------------------- teacher / cache setup

def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist
        dist.barrier()


def _make_cache(cfg, teacher_slm, blocks, t_fp, rank, world, progress) -> dict:
    """Build the cache (shards split over ranks) and return its manifest."""
    teacher = Teacher(teacher_slm.model)
    k = cfg.cache_top_k(teacher_slm.model.config.vocab_size)

    device = model_device(teacher_slm.model)

    def logits_fn(ids):
        h, _ = teacher.forward(ids.to(device), False)
        return h.reshape(-1, h.shape[-1]), teacher.logits

    autocast = (lambda: torch.autocast(autocast_type(device), dtype=torch.bfloat16)
                ) if cfg.bf16 else None
    with progress_bar("teacher cache", total=len(blocks), enabled=progress and rank == 0) as bar:
        tc.build_cache(Path(cfg.teacher_cache), blocks, logits_fn, top_k=k, teacher_fp=t_fp,
                       teacher_name=cfg.teacher, batch_size=cfg.batch_size,
                       chunk_tokens=cfg.chunk_tokens, rank=rank, world=world,
                       autocast=autocast, on_block=lambda n: bar.advance(n * world))
    _barrier(world)
    if rank == 0:
        tc.write_manifest(Path(cfg.teacher_cache), blocks, top_k=k, teacher_fp=t_fp,
                                teacher_name=cfg.teacher,
                                vocab_size=teacher_slm.model.config.vocab_size,
                                extra={"vocab_fingerprint": vocab_fingerprint(teacher_slm.tokenizer),
                                       "teacher_params": count_params(teacher_slm.model)})
    _barrier(world)
    return tc.read_manifest(Path(cfg.teacher_cache))


def _load_teacher(cfg, student_slm, t=None):
    t = t or load(cfg.teacher, device=cfg.device)
    if not cfg.cross_tokenizer:
        check_tokenizers(t.tokenizer, student_slm.tokenizer)
    check_sizes(t.model, student_slm.model, cfg.cross_tokenizer)
    Teacher(t.model)                       # freeze: eval(), requires_grad False
    return t


def setup_teacher(cfg: DistillConfig, student_slm, blocks, rank: int, world: int,
                  progress: bool, teacher_slm=None) -> tuple:
    """(teacher SLM or None, CacheReader or None, info dict) for this run."""
    info: dict = {}
    if cfg.cross_tokenizer:
        return _load_teacher(cfg, student_slm, teacher_slm), None, info
    if cfg.teacher_cache and cfg.w_hidden > 0:
        raise SlmError("hidden-state matching needs the live teacher, the cache holds logits only",
                       "drop --teacher-cache or set w_hidden to 0")
    if not cfg.teacher_cache:
        if cfg.w_kl == 0 and cfg.w_hidden == 0:
            return None, None, info                     # plain CE: no teacher needed
        return _load_teacher(cfg, student_slm), None, info
    root, t_fp = Path(cfg.teacher_cache), teacher_files_fingerprint(cfg.teacher)
    k = cfg.cache_top_k(student_slm.model.config.vocab_size)
    teacher = None
    if tc.read_manifest(root) is None:
        teacher = _load_teacher(cfg, student_slm)
        info["teacher_sha256_before"] = weights_hash(teacher.model)
        _make_cache(cfg, teacher, blocks, t_fp, rank, world, progress)
        info["teacher_sha256_after"] = weights_hash(teacher.model)
        info["cache_built"] = True
    man = tc.check_cache(root, teacher_fp=t_fp, data_fp=tc.data_fingerprint(blocks), top_k=k)
    if man.get("vocab_fingerprint") not in (None, vocab_fingerprint(student_slm.tokenizer)):
        raise SlmError(f"teacher cache {root} was made with another tokenizer than the "
                       "student's", "use a student with the teacher's tokenizer")
    if teacher is None and man.get("teacher_params"):     # the size check, without the teacher
        ns = count_params(student_slm.model)
        if ns > man["teacher_params"]:
            warnings.warn(f"the student ({ns / 1e6:.1f}M params) is larger than the teacher "
                          f"({man['teacher_params'] / 1e6:.1f}M)", stacklevel=2)
    info["cache"] = {k2: man[k2] for k2 in ("teacher", "teacher_fingerprint", "top_k",
                                             "n_blocks")}
    info["cache"]["bytes"] = sum(p.stat().st_size for p in root.glob("shard-*.safetensors"))
    return teacher, tc.CacheReader(root), info


# ---------------------------------------------------------------- run

def _train_config(cfg: DistillConfig, steps: int):
    return TrainConfig(lr=cfg.lr, warmup_steps=cfg.warmup_steps, max_steps=steps,
                       schedule=cfg.schedule, min_lr_ratio=cfg.min_lr_ratio,
                       weight_decay=cfg.weight_decay, batch_size=cfg.batch_size,
                       grad_accum=cfg.grad_accum, max_grad_norm=cfg.max_grad_norm, bf16=cfg.bf16,
                       grad_checkpointing=cfg.grad_checkpointing, compile=cfg.compile,
                       eval_every=cfg.eval_every, ckpt_every=cfg.ckpt_every, seed=cfg.seed,
                       parallel="fsdp" if cfg.fsdp else "ddp", device=cfg.device)


def build_module(cfg: DistillConfig, student: nn.Module, teacher: nn.Module | None
                 ) -> DistillModule:
    """Student + hidden-state projections (seeded, so every rank builds the same)."""
    pairs: list = []
    t_width = _width(student)
    if cfg.w_hidden > 0:
        pairs = cfg.layer_pairs or default_layer_pairs(_n_layers(student), _n_layers(teacher))
        check_pairs(pairs, _n_layers(student), _n_layers(teacher))
        t_width = _width(teacher)
    torch.manual_seed(cfg.seed)
    return DistillModule(student, pairs, _width(student), t_width)


def _check_out(out: Path, overwrite: bool) -> None:
    refuse_existing(out, overwrite)


def run_distill(student, out, cfg: DistillConfig, *, overwrite: bool = False,
                progress: bool = True) -> dict:
    """Distil ``cfg.teacher`` into ``student`` and save the student to ``out``.

    Args:
        student: model spec (a pruned teacher, typically) or an SLM (e.g. from
            :func:`init_student`).
        out: output directory, written atomically; checkpoints live in
            ``<out>.partial/checkpoints`` until the run finishes.
        cfg: the distillation settings.
        overwrite: replace an existing ``out``.
        progress: progress bars.

    Returns:
        The report (also written to ``out/report.json``).
    """
    t0 = time.time()
    out = Path(out)
    _check_out(out, overwrite)
    if cfg.w_kl + cfg.w_ce + cfg.w_hidden == 0:
        raise SlmError("all loss weights are 0", "set w_kl, w_ce or w_hidden above 0")
    rank, world = dist_setup()
    s_slm = student if isinstance(student, SLM) else load(student)
    t_pre = load(cfg.teacher, device=cfg.device) if cfg.cross_tokenizer else None
    blocks, steps, cross = train_blocks(cfg, s_slm.tokenizer, world,
                                        t_pre.tokenizer if t_pre else None)
    vids = val_ids(cfg, s_slm)
    t_slm, cache, info = setup_teacher(cfg, s_slm, blocks, rank, world, progress, t_pre)
    if cross is not None:
        info["cross_tokenizer"] = {"aligned_fraction": round(cross.aligned_fraction, 4),
                                   "teacher_vocab": len(t_pre.tokenizer),
                                   "student_vocab": len(s_slm.tokenizer)}
    if cache is not None and cfg.w_hidden == 0:
        t_slm = None                                    # train from the cache alone
    teacher = Teacher(t_slm.model if t_slm else None)
    if t_slm is not None:
        info.setdefault("teacher_sha256_before", weights_hash(t_slm.model))
        if vids is not None and is_main() and not cfg.cross_tokenizer:
            info["teacher_val_ppl"] = val_ppl(t_slm.model, t_slm.tokenizer, vids, cfg)
    module = build_module(cfg, s_slm.model, t_slm.model if t_slm else None)
    eval_fn = None if vids is None else (
        lambda: {"val_ppl": val_ppl(module.student, s_slm.tokenizer, vids, cfg)})
    partial = out.with_name(out.name + ".partial")
    with frozen_weights_in_bf16(teacher.model, cfg.bf16 and teacher.model is not None,
                                whole_base=True):
        rep = train(module, DistillBatches(blocks, cfg.batch_size, cache, cross),
                    make_loss_fn(cfg, teacher),
                    _train_config(cfg, steps), partial, eval_fn=eval_fn, resume=cfg.resume,
                    progress=progress)
    if t_slm is not None:
        info["teacher_sha256_after"] = weights_hash(t_slm.model)
    report = _report(cfg, s_slm, t_slm, rep, info, steps, world)
    if is_main():
        report["time_s"] = round(time.time() - t0, 2)
        tmp = save(s_slm, partial / "model", overwrite=True,
                   step={"step": "distill", "config": cfg.model_dump(mode="json"),
                         "report": _short(report)})
        report["bytes"] = dir_bytes(tmp)
        (tmp / "report.json").write_text(json.dumps(report, indent=1))
        replace_dir(tmp, out)
        shutil.rmtree(partial, ignore_errors=True)
    _barrier(world)
    return report


def _short(report: dict) -> dict:
    return {k: v for k, v in report.items() if k not in ("loss_curve",)}


def _report(cfg, s_slm, t_slm, rep, info, steps, world) -> dict:
    evals = rep.eval_curve
    r = {"step": "distill", "teacher": cfg.teacher, "params": count_params(s_slm.model),
         "teacher_params": count_params(t_slm.model) if t_slm else None,
         "steps": rep.steps, "tokens": rep.tokens, "tokens_per_s": round(rep.tokens_per_s, 1),
         "train_time_s": round(rep.time_s, 2), "world_size": world, "parallel": rep.parallel,
         "state_bytes_per_rank": rep.state_bytes,
         "val_ppl_before": evals[0]["val_ppl"] if evals and evals[0]["step"] == 0 else None,
         "val_ppl": evals[-1]["val_ppl"] if evals else None,
         "final_loss": rep.final_loss, "resumed_from": rep.resumed_from,
         "loss": {"kd": (("sorted_prob_l1" if cfg.cross_tokenizer else cfg.kd)
                         if cfg.w_kl else None), "temperature": cfg.temperature,
                  "w_kl": cfg.w_kl, "w_ce": cfg.w_ce, "w_hidden": cfg.w_hidden},
         "eval_curve": evals, "loss_curve": rep.loss_curve, **info}
    before, after = info.get("teacher_sha256_before"), info.get("teacher_sha256_after")
    r["teacher_unchanged"] = (before == after) if before and after else None
    return r

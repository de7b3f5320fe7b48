"""The frozen teacher: loading and checks against the student, weight hashes, and the
teacher cache (top-k logits computed once, then read instead of running the teacher).

The teacher runs in eval mode, with ``requires_grad=False`` and under
``torch.no_grad``; the report carries a full hash of its weights before and after
the run.
"""
from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import torch
from torch import nn

from ...device import autocast_type, model_device
from ...errors import SlmError
from ...models.catalog import CATALOG
from ...models.io import builtin_gguf, count_params, load
from ...progress import progress_bar
from ...tune.distributed import barrier
from ...tune.losses import backbone_and_head, hidden_states
from .. import teacher_cache as tc
from .config import DistillConfig


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


def _warn_larger(n_student: int, n_teacher: int, stacklevel: int) -> None:
    if n_student > n_teacher:
        warnings.warn(f"the student ({n_student / 1e6:.1f}M params) is larger than the teacher "
                      f"({n_teacher / 1e6:.1f}M)", stacklevel=stacklevel + 1)


def check_sizes(teacher: nn.Module, student: nn.Module, cross_tokenizer: bool = False) -> None:
    vt, vs = teacher.config.vocab_size, student.config.vocab_size
    if vt != vs and not cross_tokenizer:
        raise SlmError(f"teacher vocab_size {vt} != student vocab_size {vs}",
                       "make the student from the teacher's config")
    _warn_larger(count_params(student), count_params(teacher), stacklevel=3)


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


# ---------------------------------------------------------------- loading and the cache

def load_teacher(cfg: DistillConfig, student_slm, t=None):
    """The teacher SLM (``t`` when already loaded), checked against the student and frozen."""
    t = t or load(cfg.teacher, device=cfg.device)
    if not cfg.cross_tokenizer:
        check_tokenizers(t.tokenizer, student_slm.tokenizer)
    check_sizes(t.model, student_slm.model, cfg.cross_tokenizer)
    Teacher(t.model)                       # freeze: eval(), requires_grad False
    return t


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
    barrier(world)
    if rank == 0:
        tc.write_manifest(Path(cfg.teacher_cache), blocks, top_k=k, teacher_fp=t_fp,
                          teacher_name=cfg.teacher,
                          vocab_size=teacher_slm.model.config.vocab_size,
                          extra={"vocab_fingerprint": vocab_fingerprint(teacher_slm.tokenizer),
                                 "teacher_params": count_params(teacher_slm.model)})
    barrier(world)
    return tc.read_manifest(Path(cfg.teacher_cache))


def _cached(cfg: DistillConfig, student_slm, blocks, rank: int, world: int,
            progress: bool) -> tuple:
    """(teacher SLM if it had to build the cache else None, CacheReader, info)."""
    info: dict = {}
    root, t_fp = Path(cfg.teacher_cache), teacher_files_fingerprint(cfg.teacher)
    k = cfg.cache_top_k(student_slm.model.config.vocab_size)
    teacher = None
    if tc.read_manifest(root) is None:
        teacher = load_teacher(cfg, student_slm)
        info["teacher_sha256_before"] = weights_hash(teacher.model)
        _make_cache(cfg, teacher, blocks, t_fp, rank, world, progress)
        info["teacher_sha256_after"] = weights_hash(teacher.model)
        info["cache_built"] = True
    man = tc.check_cache(root, teacher_fp=t_fp, data_fp=tc.data_fingerprint(blocks), top_k=k)
    if man.get("vocab_fingerprint") not in (None, vocab_fingerprint(student_slm.tokenizer)):
        raise SlmError(f"teacher cache {root} was made with another tokenizer than the "
                       "student's", "use a student with the teacher's tokenizer")
    if teacher is None and man.get("teacher_params"):     # the size check, without the teacher
        _warn_larger(count_params(student_slm.model), man["teacher_params"], stacklevel=3)
    info["cache"] = {k2: man[k2] for k2 in ("teacher", "teacher_fingerprint", "top_k",
                                             "n_blocks")}
    info["cache"]["bytes"] = sum(p.stat().st_size for p in root.glob("shard-*.safetensors"))
    return teacher, tc.CacheReader(root), info


def setup_teacher(cfg: DistillConfig, student_slm, blocks, rank: int, world: int,
                  progress: bool, teacher_slm=None) -> tuple:
    """(teacher SLM or None, CacheReader or None, info dict) for this run."""
    if cfg.cross_tokenizer:
        return load_teacher(cfg, student_slm, teacher_slm), None, {}
    if cfg.teacher_cache and cfg.w_hidden > 0:
        raise SlmError("hidden-state matching needs the live teacher, the cache holds logits only",
                       "drop --teacher-cache or set w_hidden to 0")
    if cfg.teacher_cache:
        return _cached(cfg, student_slm, blocks, rank, world, progress)
    if cfg.w_kl == 0 and cfg.w_hidden == 0:
        return None, None, {}                     # plain CE: no teacher needed
    return load_teacher(cfg, student_slm), None, {}

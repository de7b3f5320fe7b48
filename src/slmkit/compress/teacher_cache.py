"""Teacher outputs stored once on disk, so later distillation runs skip the teacher.

For every token of every training block the cache keeps the teacher's top-k
logits: values as fp16 and vocabulary indices as int32, i.e. 6k bytes per token
(k = 64: 384 B/token, against 2 x 49,152 = 98 KB for SmolLM2's full fp16
distribution). Layout::

    DIR/manifest.json              teacher fingerprint, data fingerprint, k, shapes
    DIR/shard-00000.safetensors    values (n, T, k) fp16, indices (n, T, k) int32
    DIR/shard-00001.safetensors    ... blocks [shard * blocks_per_shard, ...)

Shards are keyed by block index, so K ranks fill disjoint shards in parallel
and an interrupted build keeps the shards it finished. A cache made by another
teacher (weights or config) or for other data is refused.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from torch import nn

from ..errors import SlmError
from ..outputs import atomic_path, atomic_write_text

MANIFEST = "manifest.json"
BLOCKS_PER_SHARD = 64


def teacher_fingerprint(model: nn.Module) -> str:
    """Hash of the config and a strided sample of every weight tensor (16 hex digits)."""
    h = hashlib.sha256(model.config.to_json_string(use_diff=False).encode())
    for name, p in sorted(model.state_dict().items()):
        sample = p.detach().reshape(-1)[::997].float().contiguous()
        h.update(name.encode())
        h.update(sample.numpy().tobytes())
    return h.hexdigest()[:16]


def data_fingerprint(blocks: torch.Tensor) -> str:
    """Hash of the token blocks (N, T) the cache is aligned to."""
    h = hashlib.sha256(str(tuple(blocks.shape)).encode())
    h.update(blocks.to(torch.int64).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _shard_path(root: Path, i: int) -> Path:
    return root / f"shard-{i:05d}.safetensors"


def read_manifest(root: Path) -> dict | None:
    path = Path(root) / MANIFEST
    return json.loads(path.read_text()) if path.exists() else None


def check_cache(root: Path, *, teacher_fp: str | None, data_fp: str, top_k: int) -> dict:
    """The manifest of a complete cache matching this teacher/data/k, or SlmError."""
    man = read_manifest(root)
    if man is None:
        raise SlmError(f"teacher cache {root} is incomplete (no {MANIFEST})",
                       "run once with the teacher to build it")
    if teacher_fp is not None and man["teacher_fingerprint"] != teacher_fp:
        raise SlmError(f"teacher cache {root} was made by another teacher "
                       f"({man.get('teacher', '?')}, fingerprint {man['teacher_fingerprint']})",
                       "use another --teacher-cache directory for this teacher")
    if man["data_fingerprint"] != data_fp:
        raise SlmError(f"teacher cache {root} was made for other data or sequence length",
                       "use another --teacher-cache directory, or the same data settings")
    if man["top_k"] != top_k:
        raise SlmError(f"teacher cache {root} holds top-{man['top_k']} logits, not top-{top_k}",
                       f"use top_k={man['top_k']} or another cache directory")
    return man


@torch.no_grad()
def _topk_logits(teacher_logits_fn, ids: torch.Tensor, k: int, chunk_tokens: int):
    """(values (B, T, k) fp16, indices (B, T, k) int32) of the teacher's logits on ids (B, T)."""
    h, logits_of = teacher_logits_fn(ids)                  # h: (B*T, H)
    vals, idx = [], []
    for start in range(0, h.shape[0], chunk_tokens):
        logits = logits_of(h[start:start + chunk_tokens])  # (n, V) fp32
        v, i = logits.topk(k, dim=-1)
        vals.append(v.half())
        idx.append(i.int())
    shape = (*ids.shape, k)
    with torch.autocast("cpu", enabled=False):
        return torch.cat(vals).view(shape), torch.cat(idx).view(shape)


def build_cache(root: Path, blocks: torch.Tensor, teacher_logits_fn, *, top_k: int,
                teacher_fp: str, teacher_name: str, batch_size: int = 4, chunk_tokens: int = 1024,
                rank: int = 0, world: int = 1, autocast=None, on_block=None) -> None:
    """Compute and write the shards this rank owns (shard s on rank s % world).

    Args:
        root: cache directory.
        blocks: (N, T) token blocks, the training data in the order of the dataset.
        teacher_logits_fn: ``ids (B, T) -> (hidden (B*T, H), head_fn)`` where
            ``head_fn(h (n, H)) -> logits (n, V)`` fp32.
        top_k: logits kept per token.
        teacher_fp, teacher_name: written into the manifest.
        rank, world: this process' share of the shards.
        autocast: context manager factory for the teacher forward (bf16).
        on_block: callback(n_blocks_done) for progress.
    """
    from contextlib import nullcontext

    from safetensors.torch import save_file
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    n_shards = -(-len(blocks) // BLOCKS_PER_SHARD)
    for s in range(rank, n_shards, world):
        path = _shard_path(root, s)
        part = blocks[s * BLOCKS_PER_SHARD:(s + 1) * BLOCKS_PER_SHARD]
        if path.exists():
            on_block and on_block(len(part))
            continue
        vals, idx = [], []
        for b in part.split(batch_size):
            with (autocast() if autocast else nullcontext()):
                v, i = _topk_logits(teacher_logits_fn, b, top_k, chunk_tokens)
            vals.append(v.cpu())
            idx.append(i.cpu())
            on_block and on_block(len(b))
        with atomic_path(path) as tmp:
            save_file({"values": torch.cat(vals), "indices": torch.cat(idx)}, str(tmp))


def write_manifest(root: Path, blocks: torch.Tensor, *, top_k: int, teacher_fp: str,
                   teacher_name: str, vocab_size: int, extra: dict | None = None) -> dict:
    """Write the manifest last: a cache with a manifest is complete."""
    root = Path(root)
    n_shards = -(-len(blocks) // BLOCKS_PER_SHARD)
    missing = [s for s in range(n_shards) if not _shard_path(root, s).exists()]
    if missing:
        raise SlmError(f"teacher cache {root} is missing shards {missing[:5]}",
                       "run the build again; finished shards are kept")
    man = {"teacher": teacher_name, "teacher_fingerprint": teacher_fp,
           "data_fingerprint": data_fingerprint(blocks), "top_k": top_k,
           "n_blocks": len(blocks), "seq_len": blocks.shape[1], "vocab_size": vocab_size,
           "blocks_per_shard": BLOCKS_PER_SHARD, "values_dtype": "float16",
           "indices_dtype": "int32", **(extra or {})}
    atomic_write_text(root / MANIFEST, json.dumps(man, indent=1))
    return man


class CacheReader:
    """Random access to the cached top-k logits of block ``i`` (shards opened lazily)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.manifest = read_manifest(self.root)
        self._open: dict[int, dict] = {}

    def _shard(self, s: int) -> dict:
        if s not in self._open:
            from safetensors.torch import load_file
            self._open = {s: load_file(str(_shard_path(self.root, s)))}   # keep one in memory
        return self._open[s]

    def blocks(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(values (n, T, k) fp16, indices (n, T, k) int64) of blocks [start, stop)."""
        vals, idx = [], []
        for i in range(start, stop):
            s, j = divmod(i, BLOCKS_PER_SHARD)
            shard = self._shard(s)
            vals.append(shard["values"][j])
            idx.append(shard["indices"][j])
        return torch.stack(vals), torch.stack(idx).long()

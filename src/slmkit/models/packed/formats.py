"""Integer weight formats: grouped scales, symmetric or asymmetric.

Each format is a small class registered by bit width, in the manner of
gguf-py's ``quants``: ``quantize_blocks`` turns float blocks into integer
codes with per-block scale (and zero point), ``dequantize_blocks`` inverts
it, ``pack``/``unpack`` store the codes densely (int4: two per byte).

Grid (b bits, ``n = 2**b - 1`` steps), per block of ``G`` weights:

* symmetric:  ``s = 2 * max|w| / n``,  ``q = clamp(round(w / s), -2**(b-1), 2**(b-1) - 1)``,
  ``w' = q * s``. Zero is exact; codes are stored offset by ``2**(b-1)``.
* asymmetric: ``s = (max(w, 0) - min(w, 0)) / n``, ``z = round(-min / s)``,
  ``q = clamp(round(w / s) + z, 0, n)``, ``w' = (q - z) * s``.

Both keep ``|w - w'| <= s / 2`` for every weight in the block (the scale is
stored as float16, rounded *up*, so the grid still spans the block).
"""
from __future__ import annotations

import torch

from ...errors import SlmError


def _scale_up_fp16(s: torch.Tensor) -> torch.Tensor:
    """float16 scale >= ``s`` (so the grid still covers the block); zeros become 1."""
    s = torch.where(s > 0, s, torch.ones_like(s)).float()
    h = s.half()
    up = torch.nextafter(h, torch.full_like(h, float("inf")))
    return torch.where(h.float() < s, up, h)


class QFormat:
    """Base class of an integer format with ``bits`` bits per weight."""

    bits: int = 0

    @classmethod
    def levels(cls) -> int:
        return 2 ** cls.bits - 1

    @classmethod
    def params(cls, blocks: torch.Tensor, sym: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Scale and zero point per block.

        Args:
            blocks: (..., G) float weights.
            sym: symmetric grid (zero point fixed at ``2**(bits-1)``).

        Returns:
            scale (..., 1) float16 and zero (..., 1) uint8, both as stored.
        """
        blocks = blocks.float()
        n = cls.levels()
        if sym:
            s = _scale_up_fp16(2 * blocks.abs().amax(-1, keepdim=True) / n)
            z = torch.full_like(s, 2 ** (cls.bits - 1), dtype=torch.uint8)
            return s, z
        lo = blocks.amin(-1, keepdim=True).clamp(max=0)
        hi = blocks.amax(-1, keepdim=True).clamp(min=0)
        s = _scale_up_fp16((hi - lo) / n)
        z = torch.round(-lo / s.float()).clamp(0, n).to(torch.uint8)
        return s, z

    @classmethod
    def quantize_blocks(cls, blocks: torch.Tensor, scale: torch.Tensor | None = None,
                        zero: torch.Tensor | None = None, sym: bool = True):
        """Integer codes in ``[0, 2**bits - 1]`` for (..., G) ``blocks``.

        Returns ``(q uint8, scale, zero)``; scale/zero are computed unless given.
        """
        if scale is None:
            scale, zero = cls.params(blocks, sym)
        q = torch.round(blocks.float() / scale.float()) + zero.float()
        return q.clamp(0, cls.levels()).to(torch.uint8), scale, zero

    @classmethod
    def dequantize_blocks(cls, q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor,
                          dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``(q - zero) * scale`` in ``dtype``; shapes (..., G), (..., 1), (..., 1)."""
        return ((q.to(dtype) - zero.to(dtype)) * scale.to(dtype))

    @classmethod
    def pack(cls, q: torch.Tensor) -> torch.Tensor:
        """(rows, cols) uint8 codes -> (rows, cols * bits / 8) uint8."""
        return q.contiguous()

    @classmethod
    def unpack(cls, packed: torch.Tensor) -> torch.Tensor:
        return packed


class Int8(QFormat):
    bits = 8


class Int4(QFormat):
    """Two codes per byte: column ``2k`` in the low nibble, ``2k + 1`` in the high."""

    bits = 4

    @classmethod
    def pack(cls, q: torch.Tensor) -> torch.Tensor:
        q = q.to(torch.uint8)
        return (q[:, 0::2] | (q[:, 1::2] << 4)).contiguous()

    @classmethod
    def unpack(cls, packed: torch.Tensor) -> torch.Tensor:
        lo, hi = packed & 0x0F, packed >> 4
        return torch.stack((lo, hi), dim=-1).reshape(packed.shape[0], -1)


FORMATS: dict[int, type[QFormat]] = {f.bits: f for f in (Int8, Int4)}


def get_format(bits: int) -> type[QFormat]:
    """The format class for ``bits`` (8 or 4)."""
    if bits not in FORMATS:
        raise SlmError(f"bits={bits} is not supported", f"use one of: {sorted(FORMATS)}")
    return FORMATS[bits]


def group_view(w: torch.Tensor, group_size: int) -> torch.Tensor:
    """(out, in) -> (out, in / G, G); ``group_size <= 0`` means one group per row."""
    g = w.shape[1] if group_size <= 0 else group_size
    return w.reshape(w.shape[0], w.shape[1] // g, g)


def check_layer(name: str, in_features: int, bits: int, group_size: int) -> None:
    """Raise SlmError if a layer with ``in_features`` inputs cannot take this layout."""
    if group_size > in_features:
        raise SlmError(f"layer {name} has {in_features} inputs, fewer than group size "
                       f"{group_size}", "choose a smaller --group-size, or -1 for one "
                       "scale per output channel")
    if bits == 4 and in_features % 2:
        raise SlmError(f"layer {name} has an odd input size ({in_features}); int4 packs "
                       "two weights per byte", "use --bits 8 for this model")


def quantize_weight(w: torch.Tensor, bits: int, group_size: int, sym: bool):
    """Round-to-nearest quantization of one (out, in) matrix.

    A last group shorter than ``group_size`` is allowed (zero padding does not
    change its scale: every grid includes zero).

    Returns ``(q (out, in) uint8, scale (out, n_groups) fp16, zero (out, n_groups) uint8)``.
    """
    n_in = w.shape[1]
    g = n_in if group_size <= 0 else group_size
    n_pad = -n_in % g
    wp = torch.nn.functional.pad(w.float(), (0, n_pad)) if n_pad else w.float()
    q, s, z = get_format(bits).quantize_blocks(group_view(wp, g), sym=sym)
    return q.reshape(wp.shape)[:, :n_in], s.squeeze(-1), z.squeeze(-1)


def dequantize_weight(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int,
                      dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Inverse of :func:`quantize_weight` for codes padded to whole groups: (out, in)."""
    out, n_in = q.shape
    g = n_in // scale.shape[1]
    blocks = q.reshape(out, -1, g)
    w = get_format(bits).dequantize_blocks(blocks, scale.unsqueeze(-1), zero.unsqueeze(-1), dtype)
    return w.reshape(out, n_in)

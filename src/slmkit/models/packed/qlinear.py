"""``QuantLinear``: a Linear layer whose weight is stored as packed integers.

Buffers (what lands in safetensors):

* ``qweight`` (out, in * bits / 8) uint8: codes, int4 two per byte;
* ``scales``  (out, n_groups) float16;
* ``qzeros``  (out, n_groups) uint8 (``2**(bits-1)`` everywhere when symmetric);
* ``bias``    (out,) when the original layer had one.

The forward pass dequantizes the weight in the activation dtype and calls
``F.linear``; in bfloat16 it uses PyTorch's packed int8/int4 CPU matmul
kernels when the layout allows (symmetric per-channel int8, or int4 with a
group size dividing the input size).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .formats import dequantize_weight, get_format

QUANT_KEY = "slmkit_quantization"     # config.json entry marking a packed-int model


class QuantLinear(nn.Module):
    """Weight-only quantized replacement for ``nn.Linear``.

    Args:
        in_features, out_features: as ``nn.Linear``.
        bits: 8 or 4.
        group_size: inputs sharing one scale; ``<= 0`` means one group per row.
        bias: keep a bias vector.
        dtype: dtype of the bias.
    """

    def __init__(self, in_features: int, out_features: int, bits: int, group_size: int,
                 bias: bool = False, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.bits = bits
        self.group_size = in_features if group_size <= 0 else group_size
        n_groups = math.ceil(in_features / self.group_size)
        self.register_buffer("qweight", torch.zeros(out_features, in_features * bits // 8,
                                                    dtype=torch.uint8))
        self.register_buffer("scales", torch.ones(out_features, n_groups, dtype=torch.float16))
        self.register_buffer("qzeros", torch.full((out_features, n_groups), 2 ** (bits - 1),
                                                  dtype=torch.uint8))
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype)) if bias else None
        self._kernel: tuple | None = None

    @classmethod
    def from_codes(cls, q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int,
                   group_size: int, bias: torch.Tensor | None = None) -> "QuantLinear":
        """Build from unpacked codes ``q`` (out, in) uint8 and per-group ``scale``/``zero``."""
        out_f, in_f = q.shape
        m = cls(in_f, out_f, bits, group_size, bias is not None,
                bias.dtype if bias is not None else torch.float32)
        m.qweight.copy_(get_format(bits).pack(q))
        m.scales.copy_(scale)
        m.qzeros.copy_(zero)
        if bias is not None:
            m.bias.data.copy_(bias.detach())
        return m

    def codes(self) -> torch.Tensor:
        """Unpacked integer codes (out, in) uint8."""
        return get_format(self.bits).unpack(self.qweight)[:, : self.in_features]

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The weight as a dense (out, in) matrix."""
        q, g = self.codes(), self.group_size
        n_pad = self.scales.shape[1] * g - self.in_features          # partial last group
        if n_pad:
            q = F.pad(q, (0, n_pad), value=0)
        w = dequantize_weight(q, self.scales, self.qzeros, self.bits, dtype)
        return w[:, : self.in_features]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.bfloat16 and self._kernel_ready():
            return self._kernel_forward(x)
        bias = self.bias.to(x.dtype) if self.bias is not None else None
        return F.linear(x, self.dequantize(x.dtype), bias)

    # ---- packed CPU kernels (bfloat16 activations)
    def _kernel_ready(self) -> bool:
        if self._kernel is None:
            self._kernel = self._build_kernel() or ()
        return bool(self._kernel)

    def _build_kernel(self):
        """Weights in the layout of ``torch._weight_int{8,4}pack_mm``, or None."""
        sym = bool((self.qzeros == 2 ** (self.bits - 1)).all())
        if self.bits == 8 and sym and self.scales.shape[1] == 1 \
                and hasattr(torch, "_weight_int8pack_mm"):
            q = (self.codes().to(torch.int16) - 128).to(torch.int8)
            return ("int8", q, self.scales[:, 0].to(torch.bfloat16))
        k = self.in_features
        kg = next((g for g in (256, 128, 64, 32) if self.group_size % g == 0 and k % g == 0),
                  None)
        if self.bits != 4 or kg is None or self.out_features % 16 \
                or not hasattr(torch, "_weight_int4pack_mm_for_cpu"):
            return None
        rep = self.group_size // kg                                     # kernel groups per group
        s = self.scales.float().repeat_interleave(rep, 1)[:, : k // kg]  # (out, K / kg)
        z = (8 - self.qzeros.float().repeat_interleave(rep, 1)[:, : k // kg]) * s
        sz = torch.stack((s.t(), z.t()), -1).contiguous().to(torch.bfloat16)  # (K/kg, out, 2)
        packed = torch._convert_weight_to_int4pack_for_cpu(self.codes().to(torch.int32), 1)
        return ("int4", packed, kg, sz)

    def _kernel_forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        if self._kernel[0] == "int8":
            y = torch._weight_int8pack_mm(x2, self._kernel[1], self._kernel[2])
        else:
            _, packed, kg, sz = self._kernel
            y = torch._weight_int4pack_mm_for_cpu(x2, packed, kg, sz)
        y = y.reshape(*shape[:-1], self.out_features)
        return y + self.bias.to(y.dtype) if self.bias is not None else y

    def _apply(self, fn, *args, **kwargs):
        self._kernel = None                      # rebuild after .to() / dtype changes
        return super()._apply(fn, *args, **kwargs)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bits={self.bits}, group_size={self.group_size}")


def quant_linears(model: nn.Module) -> dict[str, QuantLinear]:
    """Every ``QuantLinear`` in ``model`` by full name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, QuantLinear)}


def set_module(root: nn.Module, name: str, new: nn.Module) -> None:
    """Replace the submodule at dotted path ``name``."""
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, new)


def dequantize_model(model: nn.Module) -> nn.Module:
    """Replace every ``QuantLinear`` by a plain ``nn.Linear`` (in place); returns ``model``."""
    for name, m in quant_linears(model).items():
        dtype = m.bias.dtype if m.bias is not None else next(
            (p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
        lin = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None, dtype=dtype)
        lin.weight.data.copy_(m.dequantize(torch.float32))
        if m.bias is not None:
            lin.bias.data.copy_(m.bias.data)
        set_module(model, name, lin)
    cfg = getattr(model, "config", None)
    if cfg is not None and hasattr(cfg, QUANT_KEY):
        delattr(cfg, QUANT_KEY)
    return model

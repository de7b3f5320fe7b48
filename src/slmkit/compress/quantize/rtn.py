"""Round-to-nearest (RTN) weight quantization: each weight to its nearest grid point."""
from __future__ import annotations

import torch
from torch import nn

from ...models.arch import arch_of, decoder_layers
from ...models.packed.formats import check_layer, quantize_weight
from ...models.packed.qlinear import QuantLinear, set_module


def target_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """The ``nn.Linear`` layers inside the decoder layers, by full module name."""
    prefix = arch_of(model).layers
    return {f"{prefix}.{i}.{n}": m for i, layer in enumerate(decoder_layers(model))
            for n, m in layer.named_modules() if isinstance(m, nn.Linear)}


def check_targets(model: nn.Module, bits: int, group_size: int) -> dict[str, nn.Linear]:
    """Targets of ``model``, after checking every one can take ``bits``/``group_size``."""
    targets = target_linears(model)
    for name, m in targets.items():
        check_layer(name, m.in_features, bits, group_size)
    return targets


@torch.no_grad()
def quantize(model: nn.Module, bits: int, group_size: int, sym: bool) -> dict[str, float]:
    """Replace every decoder Linear of ``model`` by a RTN-quantized ``QuantLinear`` (in place).

    Args:
        model: an HF CausalLM.
        bits: 8 or 4.
        group_size: inputs per scale; ``-1`` for one scale per output channel.
        sym: symmetric grid (else asymmetric with a zero point).

    Returns:
        relative weight error ``||W - Q||_F / ||W||_F`` per layer.
    """
    errors = {}
    for name, lin in check_targets(model, bits, group_size).items():
        w = lin.weight.detach()
        q, s, z = quantize_weight(w, bits, group_size, sym)
        ql = QuantLinear.from_codes(q, s, z, bits, group_size, lin.bias)
        errors[name] = float((ql.dequantize() - w.float()).norm() / w.float().norm().clamp_min(1e-12))
        set_module(model, name, ql)
    return errors

"""Depth pruning: remove whole decoder layers (ShortGPT, Men et al., 2024).

Block influence of layer i is BI_i = 1 - E_tokens[cos(x_i, x_{i+1})], where x_i
enters the layer and x_{i+1} leaves it: a layer that barely turns the hidden
state changes the model little when dropped. The layers with the lowest BI
go, either all at once or one at a time with BI re-measured after each.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import SlmError
from ...models.arch import arch_of, decoder_layers
from ...models.io import count_params
from .calib import _Stop, forward_blocks
from .rebuild import copy_config, rebuild


@torch.no_grad()
def block_influence(model: nn.Module, ids: torch.Tensor, batch_size: int = 8) -> list[float]:
    """BI of every decoder layer on the calibration blocks ``ids`` (N, T)."""
    layers = decoder_layers(model)
    total = torch.zeros(len(layers), dtype=torch.float64)

    def make(i):
        def hook(_mod, args, kwargs, out):
            x = args[0] if args else kwargs["hidden_states"]
            y = out[0] if isinstance(out, tuple) else out
            total[i] += F.cosine_similarity(x.float(), y.float(), dim=-1).sum().double()
            if i == len(layers) - 1:
                raise _Stop
        return hook

    handles = [layer.register_forward_hook(make(i), with_kwargs=True)
               for i, layer in enumerate(layers)]
    forward_blocks(model, ids, batch_size, handles)
    return (1 - total / ids.numel()).tolist()


def drop_layers(model: nn.Module, drop: list[int]) -> nn.Module:
    """A new model without the decoder layers at indices ``drop``."""
    prefix = arch_of(model).layers + "."
    n = len(decoder_layers(model))
    keep = [i for i in range(n) if i not in set(drop)]
    new_index = {old: new for new, old in enumerate(keep)}
    state = {}
    for k, v in model.state_dict().items():
        if k.startswith(prefix):
            i, rest = k[len(prefix):].split(".", 1)
            if int(i) not in new_index:
                continue
            k = f"{prefix}{new_index[int(i)]}.{rest}"
        state[k] = v
    changes = {"num_hidden_layers": len(keep)}
    types = getattr(model.config, "layer_types", None)
    if types:
        changes["layer_types"] = [types[i] for i in keep]
    return rebuild(model, copy_config(model, **changes), state)


def layers_for_target(model: nn.Module, target: int) -> int:
    """How many layers to remove so the model has at most ``target`` parameters."""
    layers = decoder_layers(model)
    total, per = count_params(model), count_params(layers[0])
    k = max(1, -(-(total - target) // per))            # ceil
    if k >= len(layers):
        raise SlmError(f"a target of {target:,} parameters leaves no decoder layer "
                       f"({len(layers)} layers of {per:,} parameters, {total:,} in all)",
                       "raise --target or use --method width")
    return k


def prune(model: nn.Module, ids: torch.Tensor, target: int, *, iterative: bool = False,
          batch_size: int = 8, progress: Callable[[int, int], None] | None = None
          ) -> tuple[nn.Module, dict]:
    """Remove the least influential decoder layers until at most ``target`` parameters remain.

    Args:
        model: an HF CausalLM (left unchanged).
        ids: (N, T) calibration blocks.
        target: parameter budget.
        iterative: re-measure BI after each removal (k forward passes instead of one).

    Returns:
        (pruned model, {"removed_layers": original indices, "block_influence": first BI}).
    """
    k = layers_for_target(model, target)
    original = list(range(len(decoder_layers(model))))
    bi0 = block_influence(model, ids, batch_size)
    removed: list[int] = []
    if not iterative:
        removed = sorted(sorted(range(len(bi0)), key=lambda i: bi0[i])[:k])
        model = drop_layers(model, removed)
    else:
        bi = bi0
        for step in range(k):
            j = min(range(len(bi)), key=lambda i: bi[i])
            removed.append(original.pop(j))
            model = drop_layers(model, [j])
            if progress:
                progress(step + 1, k)
            if step + 1 < k:
                bi = block_influence(model, ids, batch_size)
    return model, {"removed_layers": sorted(removed), "block_influence": bi0}

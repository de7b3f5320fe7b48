"""Build a fresh HF model from an edited config and sliced weights.

Structured pruning changes shapes (fewer layers, heads or MLP channels).
Rather than patching attributes inside live modules, the pruned model is
instantiated from its new config and loaded with the new state dict, so the
model in memory is exactly what ``AutoModelForCausalLM`` reads back from disk.
"""
from __future__ import annotations

import copy

import torch
from torch import nn


def rebuild(model: nn.Module, config, state: dict[str, torch.Tensor]) -> nn.Module:
    """A new model of ``type(model)`` built from ``config`` and loaded with ``state``."""
    p = next(model.parameters())
    new = type(model)(config).to(device=p.device, dtype=p.dtype)
    result = new.load_state_dict(state, strict=False)
    tied = set(getattr(new, "_tied_weights_keys", None) or {})
    missing = [k for k in result.missing_keys if k not in tied]
    if missing or result.unexpected_keys:
        raise RuntimeError(f"pruned weights do not fit the new config: missing {missing[:3]}, "
                           f"unexpected {result.unexpected_keys[:3]}")
    new.tie_weights()
    new.generation_config = copy.deepcopy(model.generation_config)
    return new.eval()


def copy_config(model: nn.Module, **changes):
    """A deep copy of ``model.config`` with ``changes`` applied."""
    cfg = copy.deepcopy(model.config)
    for k, v in changes.items():
        setattr(cfg, k, v)
    return cfg

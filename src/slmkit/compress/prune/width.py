"""Width pruning: remove attention heads and MLP channels (as in Minitron, Muralidharan et al., 2024).

Importance is measured on calibration activations: an MLP channel by the L2
norm of its activation entering the down projection, an attention head by
the L2 norm of its output entering the output projection. Every layer keeps
its own most important channels and heads, the same number in every layer so
the result is an ordinary HF config. With grouped-query attention each
key/value group keeps the same number of query heads (the K/V projections
stay); with one query head per group, heads go together with their K/V.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ...errors import SlmError
from ...models.arch import Arch, arch_of, decoder_layers, get_module
from ...models.io import count_params
from .calib import _Stop, forward_blocks
from .rebuild import copy_config, rebuild

_INTER_KEYS = ("intermediate_size", "ffn_hidden_size")


@dataclass
class Shape:
    """Attention/MLP sizes of a model: heads, kv heads, head dim, MLP width."""

    heads: int
    kv: int
    head_dim: int
    inter: int

    @property
    def group(self) -> int:
        return self.heads // self.kv


def shape_of(model: nn.Module) -> Shape:
    cfg = model.config
    heads = cfg.num_attention_heads
    kv = getattr(cfg, "num_key_value_heads", None) or heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    return Shape(heads, kv, head_dim, _inter(model))


def _inter(model: nn.Module) -> int:
    layer, a = decoder_layers(model)[0], arch_of(model)
    if not a.down:
        raise SlmError(f"width pruning does not support the mixture-of-experts MLP of "
                       f"'{model.config.model_type}'", "use --method depth")
    return get_module(layer, f"{a.mlp}.{a.down}").in_features


def _inter_key(model: nn.Module) -> str:
    inter = _inter(model)
    for k in _INTER_KEYS:
        if getattr(model.config, k, None) == inter:
            return k
    raise SlmError(f"cannot find the MLP width of '{model.config.model_type}' in its config",
                   "use --method depth")


def heads_prunable(model: nn.Module) -> bool:
    """Whether this architecture accepts a head count that no longer fills hidden_size."""
    a, s = arch_of(model), shape_of(model)
    if a.fused_qkv and model.config.model_type != "phi3" or s.heads < 2:
        return False                       # falcon's fused QKV interleaves heads
    heads = s.heads - s.kv if s.group > 1 else s.heads - 1
    kv = s.kv if s.group > 1 else heads
    try:
        cfg = copy_config(model, num_attention_heads=heads, num_key_value_heads=kv,
                          head_dim=s.head_dim, num_hidden_layers=1)
        with torch.device("meta"):
            probe = type(model)(cfg)
    except Exception:                      # config validators refuse (e.g. stablelm)
        return False
    o = get_module(decoder_layers(probe)[0], f"{a.attn}.{a.o}")
    return o.in_features == heads * s.head_dim


# ------------------------------------------------------------ importance

@torch.no_grad()
def importance(model: nn.Module, ids: torch.Tensor, batch_size: int = 8
               ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per layer: head importance (heads,) and MLP channel importance (inter,)."""
    a, s = arch_of(model), shape_of(model)
    layers = decoder_layers(model)
    heads = [torch.zeros(s.heads, dtype=torch.float64) for _ in layers]
    chans = [torch.zeros(s.inter, dtype=torch.float64) for _ in layers]

    def make(store, i, per_head):
        def hook(_mod, args):
            x = args[0].float().reshape(-1, args[0].shape[-1]).pow(2).sum(0).double()
            store[i] += x.view(s.heads, s.head_dim).sum(1) if per_head else x
            if not per_head and i == len(layers) - 1:
                raise _Stop
        return hook

    handles = []
    for i, layer in enumerate(layers):
        handles.append(get_module(layer, f"{a.attn}.{a.o}").register_forward_pre_hook(
            make(heads, i, True)))
        handles.append(get_module(layer, f"{a.mlp}.{a.down}").register_forward_pre_hook(
            make(chans, i, False)))
    forward_blocks(model, ids, batch_size, handles)
    return [h.sqrt() for h in heads], [c.sqrt() for c in chans]


# ------------------------------------------------------------ sizes

def _unit_params(model: nn.Module) -> tuple[int, int, int]:
    """Parameters per MLP channel and per query head in one layer, and the layer count."""
    a, s = arch_of(model), shape_of(model)
    layer = decoder_layers(model)[0]
    down = get_module(layer, f"{a.mlp}.{a.down}")
    mlp = down.out_features + sum(
        (m.in_features + (m.bias is not None)) * (2 if a.fused_gate_up else 1)
        for m in (get_module(layer, f"{a.mlp}.{n}") for n in a.up))
    o = get_module(layer, f"{a.attn}.{a.o}")
    q = get_module(layer, f"{a.attn}.{a.q[0]}")
    rows = s.head_dim * (q.in_features + (q.bias is not None))   # one head's rows of Q (K, V)
    head = rows * (3 if s.group == 1 else 1) + s.head_dim * o.out_features  # MHA: K, V go too
    return mlp, head, len(decoder_layers(model))


def align_width(inter: int) -> int:
    """MLP width rounded down so GGUF block quantization applies to the down projection.

    llama.cpp quantizes a matrix in blocks along its rows: 32 values for Q4_0..Q8_0,
    256 for the K-quants; a width that is not a multiple falls back to a wider type
    (a K-quant to Q5_0 or Q8_0, anything else to F16). Widths of 2048 and more round
    to 256 (at most 12% fewer channels than planned), others to 32, tiny ones to 8.
    """
    for align, least in ((256, 2048), (32, 64), (8, 16)):
        if inter >= least:
            return inter // align * align
    return inter


def plan_sizes(model: nn.Module, target: int, prune_heads: bool) -> tuple[int, int]:
    """(query heads kept, MLP channels kept) per layer for at most ``target`` parameters.

    Among head counts, picks the one whose kept fraction is closest to the MLP's.
    """
    s = shape_of(model)
    mlp_unit, head_unit, n_layers = _unit_params(model)
    excess = count_params(model) - target
    # GQA: query heads kept per K/V group; MHA: heads kept (each with its K/V)
    units, per_unit = (s.group, s.kv) if s.group > 1 else (s.heads, 1)
    best = None
    for keep in (range(1, units + 1) if prune_heads else [units]):
        heads = keep * per_unit
        cut = (s.heads - heads) * head_unit * n_layers
        inter = align_width(s.inter - max(0, -(-(excess - cut) // (mlp_unit * n_layers))))
        if inter < 1:
            continue
        gap = abs(heads / s.heads - inter / s.inter)
        if best is None or gap < best[0]:
            best = (gap, heads, inter)
    if best is None:
        raise SlmError(f"a target of {target:,} parameters is below what width pruning can "
                       f"reach for this model ({count_params(model):,})",
                       "raise --target or combine with --method depth")
    return best[1], best[2]


# ------------------------------------------------------------ slicing

def _rows(idx: torch.Tensor, size: int, offset: int = 0) -> torch.Tensor:
    """Row indices of units ``idx`` that are ``size`` rows each, starting at ``offset``."""
    return (offset + idx[:, None] * size + torch.arange(size)[None, :]).reshape(-1)


def _keep_heads(score: torch.Tensor, s: Shape, heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of kept query heads and kept K/V heads (sorted)."""
    if s.group > 1:                                  # same count from every K/V group
        per = heads // s.kv
        groups = score.view(s.kv, s.group)           # (kv, group)
        top = groups.topk(per, dim=1).indices + torch.arange(s.kv)[:, None] * s.group
        return top.reshape(-1).sort().values, torch.arange(s.kv)
    keep = score.topk(heads).indices.sort().values
    return keep, keep


def _slice(state: dict, key: str, idx: torch.Tensor, dim: int) -> None:
    """Keep entries ``idx`` of ``state[key]`` along ``dim`` (bias too, for rows)."""
    state[key + ".weight"] = state[key + ".weight"].index_select(dim, idx).clone()
    if dim == 0 and state.get(key + ".bias") is not None:
        state[key + ".bias"] = state[key + ".bias"].index_select(0, idx).clone()


def _slice_attn(state: dict, pre: str, a: Arch, s: Shape, q_idx, kv_idx) -> None:
    q_rows, kv_rows = _rows(q_idx, s.head_dim), _rows(kv_idx, s.head_dim)
    if a.fused_qkv:                                  # rows: [q heads | k heads | v heads]
        rows = torch.cat([q_rows, _rows(kv_idx, s.head_dim, s.heads * s.head_dim),
                          _rows(kv_idx, s.head_dim, (s.heads + s.kv) * s.head_dim)])
        _slice(state, pre + a.q[0], rows, 0)
    else:
        for name, rows in zip(a.q, (q_rows, kv_rows, kv_rows)):
            _slice(state, pre + name, rows, 0)
    _slice(state, pre + a.o, q_rows, 1)


def _slice_mlp(state: dict, pre: str, a: Arch, s: Shape, idx: torch.Tensor) -> None:
    for name in a.up:
        rows = torch.cat([idx, s.inter + idx]) if a.fused_gate_up else idx
        _slice(state, pre + name, rows, 0)
    _slice(state, pre + a.down, idx, 1)


def slice_model(model: nn.Module, head_score: list[torch.Tensor], chan_score: list[torch.Tensor],
                heads: int, inter: int) -> nn.Module:
    """A new model keeping the ``heads`` best heads and ``inter`` best MLP channels per layer."""
    a, s = arch_of(model), shape_of(model)
    state = dict(model.state_dict())
    for i in range(len(decoder_layers(model))):
        pre = f"{a.layers}.{i}."
        if heads < s.heads:
            q_idx, kv_idx = _keep_heads(head_score[i], s, heads)
            _slice_attn(state, f"{pre}{a.attn}.", a, s, q_idx, kv_idx)
        keep = chan_score[i].topk(inter).indices.sort().values
        _slice_mlp(state, f"{pre}{a.mlp}.", a, s, keep)
    changes = {_inter_key(model): inter}
    if heads < s.heads:                  # head_dim explicit: it no longer follows hidden/heads
        changes.update(num_attention_heads=heads, head_dim=s.head_dim,
                       num_key_value_heads=s.kv if s.group > 1 else heads)
    return rebuild(model, copy_config(model, **changes), state)


def prune(model: nn.Module, ids: torch.Tensor, target: int, *, batch_size: int = 8
          ) -> tuple[nn.Module, dict]:
    """Slice heads and MLP channels until at most ``target`` parameters remain.

    Args:
        model: an HF CausalLM (left unchanged).
        ids: (N, T) calibration blocks.
        target: parameter budget.

    Returns:
        (pruned model, {"heads": .., "kv_heads": .., "intermediate_size": .., before/after}).
    """
    s = shape_of(model)
    prune_heads = heads_prunable(model)
    heads, inter = plan_sizes(model, target, prune_heads)
    head_score, chan_score = importance(model, ids, batch_size)
    new = slice_model(model, head_score, chan_score, heads, inter)
    ns = shape_of(new)
    return new, {"heads": [s.heads, ns.heads], "kv_heads": [s.kv, ns.kv],
                 "intermediate_size": [s.inter, ns.inter], "heads_prunable": prune_heads}

"""The layer-by-layer loop of Wanda and SparseGPT.

For each decoder layer in turn: run it on the calibration hidden states while
hooks gather statistics of every Linear's input, prune each Linear from those
statistics, then run the (now pruned) layer again to get the inputs of the
next layer. Errors made in early layers are thus seen by later ones, as in
both papers.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ...models.arch import decoder_layers, linear_layers
from .calib import LayerInputs, capture_inputs, input_hooks, run_layer


class InputStats:
    """Running statistics of one Linear's inputs x (tokens, in).

    Attributes:
        n: tokens seen.
        sq: (in,) sum of x_j^2 over tokens (Wanda's ||X_j||^2).
        hessian: (in, in) 2/n * X^T X (SparseGPT's H), when requested.
    """

    def __init__(self, in_features: int, hessian: bool, device="cpu"):
        self.n = 0
        self.sq = torch.zeros(in_features, dtype=torch.float32, device=device)
        self.hessian = (torch.zeros(in_features, in_features, dtype=torch.float32, device=device)
                        if hessian else None)

    def add(self, x: torch.Tensor) -> None:
        x = x.float()                                        # (tokens, in)
        b = x.shape[0]
        self.sq += x.pow(2).sum(0)
        if self.hessian is not None:
            # running mean of 2 x x^T, kept exact as n grows
            self.hessian.mul_(self.n / (self.n + b))
            xs = x * (2.0 / (self.n + b)) ** 0.5
            self.hessian.addmm_(xs.T, xs)
        self.n += b


def gather_stats(layer: nn.Module, inputs: LayerInputs, kwargs: dict,
                 hessian: bool, only: list[str] | None = None) -> dict[str, InputStats]:
    """Statistics of each Linear's input (or of those named in ``only``) over all
    calibration chunks (layer unchanged)."""
    linears = {n: m for n, m in linear_layers(layer).items() if only is None or n in only}
    stats: dict[str, InputStats] = {}
    seen: dict[tuple, tuple] = {}       # input tensor -> (first owner, tensor kept alive)
    alias: dict[str, str] = {}

    def add(name, x):
        if name in alias:
            return
        key = (x.data_ptr(), tuple(x.shape))
        if key in seen and seen[key][0] != name and seen[key][0] in stats:
            alias[name] = seen[key][0]                       # e.g. k/v share q's input
            return
        seen[key] = (name, x)           # holding x stops its memory being reused this pass
        if name not in stats:
            stats[name] = InputStats(x.shape[1], hessian, x.device)
        stats[name].add(x)

    with torch.no_grad(), input_hooks(linears, add):
        for h in inputs.hidden:
            seen.clear()
            run_layer(layer, h, kwargs)
    return {name: stats[alias.get(name, name)] for name in linears}


PruneFn = Callable[[nn.Linear, InputStats | None], None]


def input_groups(layer: nn.Module, inputs: LayerInputs, kwargs: dict) -> list[list[str]]:
    """The layer's Linears in the order they run, those reading the same input together
    (e.g. [q, k, v], [o], [gate, up], [down] in a Llama block)."""
    linears = linear_layers(layer)
    groups: list[list[str]] = []
    keys: dict[tuple, int] = {}
    seen: set[str] = set()
    held = []

    def add(name, x):
        key = (x.data_ptr(), tuple(x.shape))
        if name in seen:
            return
        seen.add(name)
        held.append(x)                  # keep it alive so its address is not reused
        if key in keys:
            groups[keys[key]].append(name)
        else:
            keys[key] = len(groups)
            groups.append([name])

    with torch.no_grad(), input_hooks(linears, add):
        run_layer(layer, inputs.hidden[0], kwargs)
    return groups


@torch.no_grad()
def prune_layerwise(model: nn.Module, ids: torch.Tensor, prune_fn: PruneFn, *,
                    hessian: bool = False, batch_size: int = 8, autocast: bool = False,
                    sequential: bool = False,
                    progress: Callable[[int, int], None] | None = None) -> None:
    """Prune every Linear of every decoder layer in order, feeding pruned outputs forward.

    Args:
        model: an HF CausalLM (modified in place).
        ids: (N, T) calibration token blocks.
        prune_fn: ``prune_fn(linear, stats)`` prunes one Linear in place.
        hessian: gather X^T X (SparseGPT) besides the squared norms (Wanda).
        batch_size: calibration blocks per layer call.
        autocast: run the calibration forward passes under bf16 autocast (CPU; statistics
            are still accumulated in float32).
        sequential: also inside a layer: prune the Linears group by group in the order
            they run (:func:`input_groups`), each from inputs that have passed through the
            already-pruned groups before it. One calibration pass per group instead of one
            per layer.
        progress: called with (layers done, layers total).
    """
    layers = decoder_layers(model)
    device = ids.device.type
    with torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
        inputs = capture_inputs(model, ids, batch_size)
    for i, layer in enumerate(layers):
        linears = linear_layers(layer)
        groups = (input_groups(layer, inputs, inputs.kwargs[i]) if sequential
                  else [list(linears)])
        for group in groups:
            with torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
                stats = gather_stats(layer, inputs, inputs.kwargs[i], hessian, group)
            for name in group:
                prune_fn(linears[name], stats[name])
            del stats
        with torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
            inputs.hidden = [run_layer(layer, h, inputs.kwargs[i]) for h in inputs.hidden]
        if progress:
            progress(i + 1, len(layers))


@torch.no_grad()
def prune_each(model: nn.Module, prune_fn: PruneFn,
               progress: Callable[[int, int], None] | None = None) -> None:
    """Prune every Linear of every decoder layer without calibration data (magnitude)."""
    layers = decoder_layers(model)
    for i, layer in enumerate(layers):
        for linear in linear_layers(layer).values():
            prune_fn(linear, None)
        if progress:
            progress(i + 1, len(layers))


def layer_sparsity(model: nn.Module) -> list[dict]:
    """Fraction of zero weights in each decoder layer's Linears, overall and by name."""
    out = []
    for i, layer in enumerate(decoder_layers(model)):
        per = {n: float((m.weight == 0).float().mean()) for n, m in linear_layers(layer).items()}
        zeros = sum(int((m.weight == 0).sum()) for m in linear_layers(layer).values())
        total = sum(m.weight.numel() for m in linear_layers(layer).values())
        out.append({"layer": i, "sparsity": zeros / max(total, 1), "linears": per})
    return out

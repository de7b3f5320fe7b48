"""Calibration plumbing shared by every pruning method.

Layer-by-layer pruning needs the inputs of each decoder layer on calibration
text. They are captured generically: a forward pre-hook on every decoder
layer records the keyword arguments the model passes it (rotary
``position_embeddings``, ``attention_mask``, ...; they depend on the layer's
attention type, not on the hidden states), and the hook on layer 0 records
the hidden states and stops the forward pass. Afterwards each layer is called
directly on the stored hidden states, so no architecture needs its own copy
of the model's forward.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from ...data import blocks
from ...errors import SlmError
from ...models.arch import decoder_layers


class _Stop(Exception):
    """Raised by the capture hook to end a forward pass early."""


@dataclass
class LayerInputs:
    """Hidden states entering one decoder layer, chunked like the calibration batches.

    Attributes:
        hidden: list of (B, T, hidden) tensors.
        kwargs: per decoder layer, the keyword arguments the model passes it.
    """

    hidden: list[torch.Tensor]
    kwargs: list[dict]


def calib_blocks(data, tokenizer, seqlen: int, nsamples: int) -> torch.Tensor:
    """Calibration token blocks (N, seqlen) from the train split of ``data``.

    Raises:
        SlmError: the data holds fewer tokens than one sequence.
    """
    return blocks(data, tokenizer, seqlen, which="train", max_blocks=nsamples)


def _strip(kwargs: dict) -> dict:
    """Drop the cache from captured kwargs: calibration runs without one."""
    out = {k: v for k, v in kwargs.items() if k not in ("past_key_values", "past_key_value")}
    out["use_cache"] = False
    return out


@torch.no_grad()
def layer_kwargs(model: nn.Module, seqlen: int, device="cpu") -> list[dict]:
    """The keyword arguments each decoder layer receives for a batch of (1, seqlen) tokens."""
    layers = decoder_layers(model)
    got: list[dict | None] = [None] * len(layers)

    def make(i):
        def hook(_mod, _args, kwargs):
            got[i] = _strip(kwargs)
            if i == len(layers) - 1:
                raise _Stop
        return hook

    handles = [layer.register_forward_pre_hook(make(i), with_kwargs=True)
               for i, layer in enumerate(layers)]
    try:
        model(torch.zeros(1, seqlen, dtype=torch.long, device=device), use_cache=False)
    except _Stop:
        pass
    finally:
        for h in handles:
            h.remove()
    return got


@torch.no_grad()
def forward_blocks(model: nn.Module, ids: torch.Tensor, batch_size: int, handles: list) -> None:
    """Run ``model`` over token blocks ``ids`` (N, T), ``batch_size`` at a time, so that the
    hooks behind ``handles`` see every block; a hook may end a pass early by raising ``_Stop``.
    The hooks are removed afterwards."""
    try:
        for chunk in ids.split(batch_size):
            try:
                model(chunk, use_cache=False)
            except _Stop:
                pass
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def capture_inputs(model: nn.Module, ids: torch.Tensor, batch_size: int = 8) -> LayerInputs:
    """Hidden states entering decoder layer 0 for every calibration block.

    Args:
        model: an HF CausalLM.
        ids: (N, T) token blocks.
        batch_size: blocks per forward pass.
    """
    layer0 = decoder_layers(model)[0]
    hidden: list[torch.Tensor] = []

    def hook(_mod, args, kwargs):
        hidden.append(args[0] if args else kwargs["hidden_states"])
        raise _Stop

    forward_blocks(model, ids, batch_size, [layer0.register_forward_pre_hook(hook, with_kwargs=True)])
    return LayerInputs(hidden, layer_kwargs(model, ids.shape[1], ids.device))


def run_layer(layer: nn.Module, hidden: torch.Tensor, kwargs: dict) -> torch.Tensor:
    """One decoder layer's output hidden states (B, T, hidden)."""
    out = layer(hidden, **kwargs)
    return out[0] if isinstance(out, tuple) else out


@contextmanager
def input_hooks(modules: dict[str, nn.Module], fn):
    """Call ``fn(name, x)`` with the 2-D input (tokens, in_features) of each module."""
    def make(name):
        def hook(_mod, args):
            x = args[0]
            fn(name, x.reshape(-1, x.shape[-1]))
        return hook
    handles = [m.register_forward_pre_hook(make(n)) for n, m in modules.items()]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def check_calib(ids: torch.Tensor, seqlen: int) -> None:
    if ids.ndim != 2 or ids.shape[0] == 0 or ids.shape[1] != seqlen:
        raise SlmError(f"calibration data is shorter than one sequence of {seqlen} tokens",
                       "add data or lower --seqlen")

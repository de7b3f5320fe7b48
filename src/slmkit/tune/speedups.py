"""Speed-ups of the training loop that leave its numbers alone (or nearly, as stated):
``torch.compile`` of the decoder layers one by one, frozen weights held in bf16, and
activation checkpointing.

Identical layers share one compiled graph, so compiling costs tens of seconds, not
minutes; evaluations run eager. The output head's cross-entropy runs as one compiled
kernel meanwhile (``losses.compiled_ce``).
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from ..models.arch import all_decoder_layers
from ..models.io import count_params
from .config import COMPILE_MIN_PARAMS, COMPILE_MIN_STEPS, TrainConfig
from .losses import compiled_ce


def should_compile(model: nn.Module, cfg: TrainConfig) -> bool:
    if cfg.compile is not None:
        return cfg.compile
    return (count_params(model) >= COMPILE_MIN_PARAMS
            and cfg.max_steps * cfg.grad_accum >= COMPILE_MIN_STEPS)


@contextmanager
def compiled_layers(model: nn.Module, enabled: bool):
    """Compile the decoder layers in place for the duration of the block, then undo it;
    the output head's cross-entropy runs as a compiled kernel meanwhile (``compiled_ce``).

    If compiling fails (no C compiler, an unsupported op), dynamo falls back to eager
    for that layer and training goes on at eager speed.
    """
    layers = all_decoder_layers(model) if enabled else []
    if not layers:
        yield 0
        return
    import torch._dynamo
    suppress = torch._dynamo.config.suppress_errors
    torch._dynamo.config.suppress_errors = True
    for layer in layers:
        layer.compile()
    try:
        with compiled_ce():
            yield len(layers)
    finally:
        for layer in layers:
            layer._compiled_call_impl = None
        torch._dynamo.config.suppress_errors = suppress


@contextmanager
def frozen_weights_in_bf16(model: nn.Module, enabled: bool, whole_base: bool = False):
    """Hold frozen fp32 weights in bf16 for the block and put the fp32 tensors back
    afterwards. Trainable weights stay fp32 (they are the optimizer's master copy), and
    so do buffers (a quantized base's codes and scales, rotary frequencies).

    By default only the decoder layers' frozen Linear weights: under bf16 autocast every
    matmul casts its fp32 weight to bf16 anyway, on every forward, so the bf16 copy gives
    the same numbers without those casts (5% of a LoRA step on SmolLM2-135M).

    ``whole_base`` takes every frozen weight (embeddings, norms, output head too): the
    hidden states then run in bf16 between the layers, as they do when the model runs in
    the bf16 its checkpoint ships in. Not the same numbers as fp32 hidden states (the
    held-out perplexity after a LoRA run moved by 0.03), and the norms, residual adds
    and rotary embeddings move half the bytes: their kernels took 0.30 s instead of
    0.44 s of a 4 x 512 LoRA step on SmolLM2-135M, about 2% of the step on average.

    Everything that runs the model inside the block must run under bf16 autocast on the
    CPU, as the loop's training steps and evaluations do (weights on other devices are
    left alone).
    """
    saved = []
    if enabled and whole_base:
        weights = list(model.parameters())                  # shared (tied) weights once
    elif enabled:
        weights = [m.weight for layer in all_decoder_layers(model) for m in layer.modules()
                   if isinstance(m, nn.Linear)]
    else:
        weights = []
    for w in weights:
        if not w.requires_grad and w.dtype == torch.float32 and w.device.type == "cpu":
            saved.append((w, w.data))
            w.data = w.data.to(torch.bfloat16)
    try:
        yield len(saved)
    finally:
        for w, data in saved:
            w.data = data


def enable_grad_checkpointing(model: nn.Module) -> int:
    """Turn on activation checkpointing in every HF model inside ``model``; returns how many."""
    n, kw = 0, {"use_reentrant": False}
    for m in model.modules():
        if not getattr(m, "supports_gradient_checkpointing", False):
            continue
        if hasattr(m, "activation_checkpointing_enable"):          # transformers >= 5.x
            m.activation_checkpointing_enable(activation_checkpointing_kwargs=kw)
        elif hasattr(m, "gradient_checkpointing_enable"):
            m.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kw)
        else:
            continue
        n += 1
    return n

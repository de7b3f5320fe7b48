"""Speed-ups of the training loop that leave its numbers alone (or nearly, as stated):
``torch.compile`` of the decoder layers one by one, frozen weights held in bf16, and
activation checkpointing.

Identical layers share one compiled graph, so compiling costs tens of seconds, not
minutes; evaluations run eager. The output head's cross-entropy runs as one compiled
kernel meanwhile (``losses.compiled_ce``).
"""
from __future__ import annotations

import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
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
    left alone). A weight whose fp32 values are all bf16 numbers (Gemma 3, SmolLM2: they
    ship in bf16) is held only as bf16 in the block and upcast again at its end, the same
    values; the fp32 values of the other frozen weights (Gemma 3 270M's, dequantized from
    its Q4_K_M file) wait in a temporary file meanwhile and are read back at the end, so
    training holds the frozen base once, in bf16 (on Gemma 3 270M, 0.54 GB instead of
    1.61 GB).
    """
    saved = []
    if enabled and whole_base:
        weights = list(model.parameters())                  # shared (tied) weights once
    elif enabled:
        weights = [m.weight for layer in all_decoder_layers(model) for m in layer.modules()
                   if isinstance(m, nn.Linear)]
    else:
        weights = []
    spill: dict[str, torch.Tensor] = {}
    for w in weights:
        if not w.requires_grad and w.dtype == torch.float32 and w.device.type == "cpu":
            half = w.data.to(torch.bfloat16)
            # a weight that holds bf16 values (a checkpoint shipped in bf16) comes back
            # exactly from its bf16 copy; the others' fp32 values wait on disk
            key = None if _bf16_exact(w.data, half) else str(len(spill))
            if key is not None:
                spill[key] = w.data
            saved.append((w, key))
            w.data = half
    stored = _spill(spill)
    del spill
    try:
        yield len(saved)
    finally:
        if isinstance(stored, Path):
            back = load_file(str(stored))
            shutil.rmtree(stored.parent, ignore_errors=True)
        else:
            back = stored
        for w, key in saved:
            w.data = w.data.float() if key is None else back[key]


def _spill(tensors: dict[str, torch.Tensor]):
    """``tensors`` written to a temporary safetensors file (its path), so that their memory
    is free while training; the tensors themselves where the disk refuses."""
    if not tensors:
        return tensors
    path = Path(tempfile.mkdtemp(prefix="slmkit-frozen-")) / "fp32.safetensors"
    try:
        save_file({k: t.contiguous() for k, t in tensors.items()}, str(path))
    except OSError:
        shutil.rmtree(path.parent, ignore_errors=True)
        return dict(tensors)
    return path


def _bf16_exact(full: torch.Tensor, half: torch.Tensor, step: int = 1 << 22) -> bool:
    """Whether fp32 ``full`` equals its bf16 copy ``half`` (compared in slices: no
    full-size temporary)."""
    a, b = full.reshape(-1), half.reshape(-1)
    return all(torch.equal(a[i:i + step], b[i:i + step].float())
               for i in range(0, a.numel(), step))


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

"""The packed-integer weight format of quantized models, and its loader.

A model saved by ``slm quantize`` is an HF directory whose ``config.json`` carries
``slmkit_quantization`` (:data:`QUANT_KEY`: method, bits, group size, the quantized
modules) and whose safetensors hold, for each of those Linear layers, the buffers of
:class:`QuantLinear` (``formats`` defines the integer grids). Loading (``models.io``),
export (``export``) and quantization (``compress.quantize``) all read it from here.
"""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM

from ...errors import SlmError
from .formats import FORMATS, get_format
from .qlinear import QUANT_KEY, QuantLinear, dequantize_model, quant_linears, set_module

__all__ = ["FORMATS", "QUANT_KEY", "QuantLinear", "dequantize_model", "get_format",
           "is_packed", "load_quantized", "quant_linears", "set_module"]


def is_packed(config: dict) -> bool:
    """Whether a ``config.json`` (as a dict) describes a packed-integer model."""
    return QUANT_KEY in config


def load_quantized(path: Path, dtype: torch.dtype = torch.float32):
    """Rebuild a packed-integer model saved by ``slm quantize`` from ``path``."""
    config = AutoConfig.from_pretrained(path)
    spec = getattr(config, QUANT_KEY)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    for name in spec["modules"]:
        lin = model.get_submodule(name)
        set_module(model, name, QuantLinear(lin.in_features, lin.out_features, spec["bits"],
                                            spec["group_size"], lin.bias is not None, dtype))
    state = {}
    for f in sorted(Path(path).glob("*.safetensors")):
        state.update(load_file(f))
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {k for k in missing if "lm_head" in k and getattr(config, "tie_word_embeddings", False)}
    if set(missing) - tied or unexpected:
        raise SlmError(f"{path}: quantized weights do not match the config "
                       f"(missing {sorted(set(missing) - tied)[:3]}, unexpected {unexpected[:3]})",
                       "re-run `slm quantize`")
    model.tie_weights()
    return model.eval()

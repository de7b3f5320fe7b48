"""Where each architecture keeps its parts.

Every transform (pruning, quantization, distillation, export) finds decoder
layers and projections through this one table instead of branching on model
names throughout the code.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..errors import SlmError


@dataclass(frozen=True)
class Arch:
    """Names of the parts of one decoder-only architecture (HF module paths)."""

    layers: str                 # path from the CausalLM to the ModuleList of decoder layers
    attn: str                   # attribute of a layer holding attention
    mlp: str                    # attribute of a layer holding the MLP
    q: tuple[str, ...]          # query/key/value projections inside attn (fused names allowed)
    o: str                      # attention output projection inside attn
    up: tuple[str, ...]         # MLP input projections inside mlp (gate and up)
    down: str                   # MLP output projection inside mlp
    fused_qkv: bool = False
    fused_gate_up: bool = False


_LLAMA = Arch(layers="model.layers", attn="self_attn", mlp="mlp",
              q=("q_proj", "k_proj", "v_proj"), o="o_proj",
              up=("gate_proj", "up_proj"), down="down_proj")

ARCHS: dict[str, Arch] = {
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "qwen2": _LLAMA,
    "gemma": _LLAMA,
    "gemma2": _LLAMA,
    "gemma3_text": _LLAMA,
    "stablelm": _LLAMA,
    "mixtral": Arch(layers="model.layers", attn="self_attn", mlp="mlp",
                    q=("q_proj", "k_proj", "v_proj"), o="o_proj", up=(), down=""),
    "phi3": Arch(layers="model.layers", attn="self_attn", mlp="mlp",
                 q=("qkv_proj",), o="o_proj", up=("gate_up_proj",), down="down_proj",
                 fused_qkv=True, fused_gate_up=True),
    "falcon": Arch(layers="transformer.h", attn="self_attention", mlp="mlp",
                   q=("query_key_value",), o="dense", up=("dense_h_to_4h",),
                   down="dense_4h_to_h", fused_qkv=True),
}


def arch_of(model: nn.Module) -> Arch:
    """The parts table for ``model`` (an HF CausalLM)."""
    kind = getattr(getattr(model, "config", None), "model_type", None)
    if kind not in ARCHS:
        raise SlmError(f"architecture '{kind}' is not supported",
                       f"supported: {', '.join(sorted(ARCHS))}")
    return ARCHS[kind]


def get_module(root: nn.Module, path: str) -> nn.Module:
    """``root.a.b.c`` for ``path == 'a.b.c'``."""
    mod = root
    for part in path.split("."):
        mod = getattr(mod, part)
    return mod


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The ModuleList of decoder layers of an HF CausalLM."""
    return get_module(model, arch_of(model).layers)


def linear_layers(layer: nn.Module) -> dict[str, nn.Linear]:
    """All ``nn.Linear`` modules inside one decoder layer, by relative name."""
    return {name: m for name, m in layer.named_modules() if isinstance(m, nn.Linear)}


def all_decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The decoder layers of every HF CausalLM inside ``model`` (a PEFT model, or a
    wrapper holding a student), found through the architecture table (:data:`ARCHS`)."""
    from transformers import PreTrainedModel

    found = []
    for m in model.modules():
        if (isinstance(m, PreTrainedModel) and getattr(m.config, "model_type", None) in ARCHS
                and m.get_output_embeddings() is not None):       # the CausalLM, not its backbone
            found.extend(decoder_layers(m))
    return found

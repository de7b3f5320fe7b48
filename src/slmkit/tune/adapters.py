"""Set a model up for training: LoRA, DoRA, QLoRA (4-bit frozen base) or full.

LoRA and DoRA adapters come from PEFT. For QLoRA the frozen base ``nn.Linear``
weights of the decoder layers are replaced by :class:`QuantLinear4`, which holds
them in 4 bits (NF4 from the QLoRA paper, or symmetric int4) with one scale per
group of input columns, and dequantizes them on every forward (and again in
the backward pass, so no full-precision copy is kept for autograd) while the
LoRA matrices train in bf16 under autocast. That works on CPU with no
bitsandbytes.

An adapter directory holds PEFT's ``adapter_config.json`` and
``adapter_model.safetensors`` plus ``slmkit-adapter.json`` with the base
model's fingerprint, so applying it to another base model fails clearly.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from torch import nn

from ..errors import SlmError
from ..models.arch import decoder_layers, linear_layers

ADAPTER_META = "slmkit-adapter.json"
METHODS = ("lora", "dora", "qlora", "full")


# ---------------------------------------------------------------- 4-bit storage

def nf4_codebook() -> torch.Tensor:
    """The 16 NormalFloat-4 levels (Dettmers et al., 2023, QLoRA, section 3).

    Quantiles of N(0, 1): 8 on the positive side and 7 on the negative side (so
    that 0 is exactly representable), taken between ``1 - d`` and 1/2 with
    ``d = (1/32 + 1/30) / 2`` and scaled into [-1, 1].
    """
    normal = torch.distributions.Normal(0.0, 1.0)
    d = 0.5 * (1 / 32 + 1 / 30)
    pos = normal.icdf(torch.linspace(1 - d, 0.5, 9, dtype=torch.float64)[:-1])
    neg = -normal.icdf(torch.linspace(1 - d, 0.5, 8, dtype=torch.float64)[:-1])
    levels = torch.cat([pos, torch.zeros(1, dtype=torch.float64), neg])
    return (levels / levels.abs().max()).sort().values.float()


def int4_codebook() -> torch.Tensor:
    """Symmetric int4 levels -8..7 scaled by 1/7 (absmax maps to +-1)."""
    return torch.arange(-8, 8, dtype=torch.float32) / 7


CODEBOOKS = {"nf4": nf4_codebook, "int4": int4_codebook}


def quantize_4bit(w: torch.Tensor, fmt: str = "nf4", group: int = 64
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Round ``w`` (out, in) to the nearest 4-bit level per group of ``group`` columns.

    Returns:
        codes: (out, in // 2) uint8, two 4-bit codes per byte (low nibble first);
        scales: (out, in // group) fp32 absmax of each group.
    """
    out_f, in_f = w.shape
    if in_f % group or group % 2:
        raise SlmError(f"4-bit groups of {group} do not divide {in_f} input features",
                       "use a group size that divides the layer width (e.g. 32 or 64)")
    levels = CODEBOOKS[fmt]()
    g = w.detach().float().reshape(out_f, in_f // group, group)
    scales = g.abs().amax(-1).clamp_min(1e-12)                         # (out, in/group)
    x = (g / scales[..., None]).reshape(out_f, in_f)
    mids = (levels[1:] + levels[:-1]) / 2                              # decision boundaries
    codes = torch.bucketize(x, mids).to(torch.uint8)                   # nearest level index
    packed = codes[:, 0::2] | (codes[:, 1::2] << 4)
    return packed, scales


def dequantize_4bit(codes: torch.Tensor, scales: torch.Tensor, levels: torch.Tensor,
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Inverse of :func:`quantize_4bit`: (out, in) weights in ``dtype``."""
    out_f = codes.shape[0]
    idx = torch.stack([codes & 0xF, codes >> 4], dim=-1).reshape(out_f, -1).long()
    w = levels.to(dtype)[idx]                                          # (out, in)
    group = w.shape[1] // scales.shape[1]
    return (w.view(out_f, -1, group) * scales.to(dtype)[..., None]).view(out_f, -1)


class _Dequant4Linear(torch.autograd.Function):
    """y = x W^T with W rebuilt from 4-bit codes in forward and again in backward.

    The base weight is frozen, so only dL/dx = dL/dy W is needed; saving the
    codes instead of W keeps activation memory at 4 bits per weight.
    """

    @staticmethod
    def forward(ctx, x, module):
        ctx.module = module
        return x @ module.weight_dq(x.dtype).t()

    @staticmethod
    def backward(ctx, grad_y):
        return grad_y @ ctx.module.weight_dq(grad_y.dtype), None


class QuantLinear4(nn.Module):
    """A frozen ``nn.Linear`` held in 4 bits; computes in the input's (autocast) dtype.

    Args:
        linear: the layer to quantize.
        fmt: ``nf4`` or ``int4``.
        group: input columns per scale.
    """

    def __init__(self, linear: nn.Linear, fmt: str = "nf4", group: int = 64):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.fmt, self.group = fmt, group
        codes, scales = quantize_4bit(linear.weight, fmt, group)
        self.register_buffer("qweight", codes)   # (out, in // 2) uint8
        self.register_buffer("scales", scales.to(torch.bfloat16))
        self.register_buffer("levels", CODEBOOKS[fmt]())
        bias = None if linear.bias is None else linear.bias.detach().clone()
        self.register_buffer("bias", bias)

    def weight_dq(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The dequantized weight (out, in)."""
        return dequantize_4bit(self.qweight, self.scales, self.levels, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_autocast_enabled("cpu") and x.device.type == "cpu":
            x = x.to(torch.get_autocast_dtype("cpu"))
        y = _Dequant4Linear.apply(x, self)
        return y if self.bias is None else y + self.bias.to(y.dtype)

    def to_linear(self, dtype: torch.dtype = torch.float32) -> nn.Linear:
        """A plain ``nn.Linear`` with the dequantized weight."""
        lin = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                        dtype=dtype, device=self.qweight.device)
        with torch.no_grad():
            lin.weight.copy_(self.weight_dq(dtype))
            if self.bias is not None:
                lin.bias.copy_(self.bias)
        return lin

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, {self.fmt}, group={self.group}"


def _replace(root: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, new)


def quantize_base(model: nn.Module, targets: list[str], fmt: str = "nf4",
                  group: int = 64) -> int:
    """Replace the decoder's target ``nn.Linear`` layers by :class:`QuantLinear4`.

    Returns:
        the number of layers quantized.
    """
    n = 0
    for i, layer in enumerate(decoder_layers(model)):
        for name, lin in linear_layers(layer).items():
            if name.rsplit(".", 1)[-1] in targets:
                _replace(layer, name, QuantLinear4(lin, fmt, group))
                n += 1
    return n


def dequantize_base(model: nn.Module, dtype: torch.dtype = torch.float32) -> int:
    """Turn every :class:`QuantLinear4` (also inside PEFT wrappers) back into ``nn.Linear``."""
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, QuantLinear4)]
    for name, m in found:
        _replace(model, name, m.to_linear(dtype))
    return len(found)


def _lora_quant_cls():
    """PEFT LoRA layer class for a :class:`QuantLinear4` base (built lazily: imports peft)."""
    from peft.tuners.lora import Linear as LoraLinear

    class LoraQuantLinear4(LoraLinear):
        def _get_in_out_features(self, module):
            return module.in_features, module.out_features

        def get_param(self):
            base = self.get_base_layer()
            return base.scales if isinstance(base, QuantLinear4) else base.weight

    return LoraQuantLinear4


# ---------------------------------------------------------------- targets

def linear_names(model: nn.Module) -> list[str]:
    """Leaf names of the ``nn.Linear`` layers in the decoder (``q_proj``, ..., ``down_proj``)."""
    layer = decoder_layers(model)[0]
    names = {n.rsplit(".", 1)[-1] for n in linear_layers(layer)}
    names |= {n.rsplit(".", 1)[-1] for n, m in layer.named_modules()
              if isinstance(m, QuantLinear4)}
    return sorted(names)


def resolve_targets(model: nn.Module, targets: list[str] | None) -> list[str]:
    """``targets`` checked against the model, or all decoder linear layers when None/"all"."""
    available = linear_names(model)
    if not targets or targets == ["all"] or targets == "all":
        return available
    bad = [t for t in targets if t not in available]
    if bad:
        raise SlmError(f"target module(s) {', '.join(bad)} not found in this "
                       f"{model.config.model_type} model",
                       f"choose from: {', '.join(available)} (or 'all')")
    return list(targets)


# ---------------------------------------------------------------- setup

def setup_model(model: nn.Module, method: str, *, rank: int = 16, alpha: float = 32,
                dropout: float = 0.05, targets: list[str] | None = None,
                quant_format: str = "nf4", quant_group: int = 64) -> nn.Module:
    """Prepare ``model`` for training with ``method``; returns the model to train.

    Args:
        model: an HF CausalLM (fp32 parameters; training runs under bf16 autocast).
        method: ``lora``, ``dora``, ``qlora`` (4-bit frozen base + LoRA) or ``full``.
        rank, alpha, dropout: LoRA hyper-parameters (scaling = alpha / rank).
        targets: leaf names of decoder linear layers; None means all of them.
        quant_format, quant_group: 4-bit format and group size for ``qlora``.
    """
    if method not in METHODS:
        raise SlmError(f"unknown fine-tuning method '{method}'", f"use one of {', '.join(METHODS)}")
    if method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    from peft import LoraConfig, get_peft_model
    names = resolve_targets(model, targets)
    cfg = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=names,
                     use_dora=method == "dora", bias="none", task_type="CAUSAL_LM")
    if method == "qlora":
        quantize_base(model, names, quant_format, quant_group)
        cfg._register_custom_module({QuantLinear4: _lora_quant_cls()})
    return get_peft_model(model, cfg)


def trainable_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# ---------------------------------------------------------------- save / load

def base_fingerprint(model: nn.Module) -> dict:
    """Identity of a base model: architecture, shapes and a hash of some weights.

    The hash covers the first rows of the input embedding and of the first
    decoder layer's linear weights (quantized layers are dequantized first),
    enough to tell two checkpoints of the same architecture apart.
    """
    from peft import PeftModel
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    h = hashlib.sha256()
    h.update(base.get_input_embeddings().weight[:8].detach().float().numpy().tobytes())
    cfg = base.config
    return {"model_type": cfg.model_type, "hidden_size": cfg.hidden_size,
            "num_hidden_layers": cfg.num_hidden_layers, "vocab_size": cfg.vocab_size,
            "embed_sha256": h.hexdigest()[:16]}


def save_adapter(model: nn.Module, out: Path, base_spec: str, fingerprint: dict,
                 method: str, quant: dict | None = None) -> Path:
    """Write the PEFT adapter (safetensors) and its base fingerprint to ``out``."""
    out = Path(out)
    model.save_pretrained(out, safe_serialization=True)
    meta = {"base": base_spec, "method": method, "fingerprint": fingerprint}
    if quant:
        meta["quant"] = quant
    (out / ADAPTER_META).write_text(json.dumps(meta, indent=2))
    return out


def check_adapter_base(adapter_dir: Path, model: nn.Module) -> dict:
    """Raise SlmError unless ``adapter_dir`` was trained on ``model``; return its metadata."""
    adapter_dir = Path(adapter_dir)
    meta_path = adapter_dir / ADAPTER_META
    if not (adapter_dir / "adapter_config.json").exists():
        raise SlmError(f"{adapter_dir} is not an adapter directory (no adapter_config.json)",
                       "pass the adapter/ folder written by `slm finetune`")
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    want, have = meta.get("fingerprint"), base_fingerprint(model)
    if want and want != have:
        diff = [k for k in have if want.get(k) != have[k]]
        raise SlmError(f"adapter {adapter_dir} was trained on a different base model "
                       f"('{meta.get('base')}'; {', '.join(diff)} differ)",
                       f"apply it to '{meta.get('base')}'")
    return meta


def apply_adapter(model: nn.Module, adapter_dir: Path, trainable: bool = False) -> nn.Module:
    """``model`` with the adapter in ``adapter_dir`` loaded (checked against the base).

    QLoRA adapters are applied to the 4-bit base they were trained on.
    """
    from peft import PeftConfig, PeftModel
    meta = check_adapter_base(adapter_dir, model)
    if meta.get("method") == "qlora":
        q = meta.get("quant", {"format": "nf4", "group": 64})
        pcfg = PeftConfig.from_pretrained(str(adapter_dir))
        quantize_base(model, sorted(pcfg.target_modules), q["format"], q["group"])
        pcfg._register_custom_module({QuantLinear4: _lora_quant_cls()})
        return PeftModel.from_pretrained(model, str(adapter_dir), config=pcfg,
                                         is_trainable=trainable)
    return PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=trainable)


def merge(model: nn.Module) -> nn.Module:
    """A plain model with the adapter folded into the weights (4-bit bases dequantized)."""
    from peft import PeftModel
    if not isinstance(model, PeftModel):
        return model
    dequantize_base(model)
    return model.merge_and_unload()

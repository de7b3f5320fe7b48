"""Write an HF CausalLM (float or packed-integer) as a GGUF file llama.cpp runs.

Conventions of llama.cpp's ``convert_hf_to_gguf`` that matter for correct
output (all handled here, from the model's own weights and config):

* Llama: HF stores Q/K rows in "rotate half" order, llama.cpp's ``llama``
  graph applies rotary embeddings to interleaved pairs, so Q and K rows are
  permuted per head.
* Gemma 3: RMSNorm computes ``x * (1 + w)``; GGUF stores ``1 + w``. llama.cpp
  scales queries by ``1/sqrt(head_dim)``; when the config's
  ``query_pre_attn_scalar`` differs, the ratio is folded into the query norm.
* Tied embeddings: no ``output.weight``; llama.cpp reuses ``token_embd``.
* Pruned models: head counts and feed-forward sizes are read per layer from
  the weight shapes. llama.cpp builds every layer of these architectures
  with one feed-forward width, so narrower layers are zero-padded to the
  widest: padded gate/up rows give ``act(0) * 0 = 0`` and padded down
  columns multiply that zero, so the output is unchanged exactly.
"""
from __future__ import annotations

from dataclasses import dataclass

import gguf
import numpy as np
import torch
from torch import nn

from ..errors import SlmError
from ..models.arch import arch_of, decoder_layers
from ..models.packed.qlinear import QuantLinear
from .vocab import add_tokenizer

Q = gguf.GGMLQuantizationType

# types gguf-py quantizes itself; everything else goes through llama.cpp's quantizer
DIRECT_TYPES = {"f32": Q.F32, "f16": Q.F16, "bf16": Q.BF16, "q8_0": Q.Q8_0,
                "q4_0": Q.Q4_0, "q4_1": Q.Q4_1, "q5_0": Q.Q5_0, "q5_1": Q.Q5_1}


@dataclass(frozen=True)
class GGUFArch:
    """How one HF ``model_type`` maps onto a llama.cpp architecture."""

    name: str                      # llama.cpp architecture name
    model_arch: gguf.MODEL_ARCH
    permute_qk: bool = False       # HF rotate-half -> llama.cpp interleaved rope
    norm_plus_one: bool = False    # RMSNorm weight stored as 1 + w
    sliding_window: bool = False   # local/global attention layers (Gemma 3)
    # llama.cpp sizes attention by hidden size (n_head * head_dim must equal it); when a
    # pruned model has fewer heads, write it as this architecture instead
    fewer_heads_as: str | None = None


_LLAMA = GGUFArch("llama", gguf.MODEL_ARCH.LLAMA, permute_qk=True)
GGUF_ARCHS: dict[str, GGUFArch] = {
    "llama": _LLAMA,
    "mistral": _LLAMA,
    # Qwen2 is Llama with Q/K/V biases, which llama.cpp's llama graph adds as well
    "qwen2": GGUFArch("qwen2", gguf.MODEL_ARCH.QWEN2, fewer_heads_as="llama"),
    "gemma3_text": GGUFArch("gemma3", gguf.MODEL_ARCH.GEMMA3, norm_plus_one=True,
                            sliding_window=True),
}


def gguf_arch(model: nn.Module) -> GGUFArch:
    """The GGUF mapping for ``model``, or SlmError naming the supported ones."""
    kind = getattr(model.config, "model_type", None)
    if kind not in GGUF_ARCHS:
        raise SlmError(f"GGUF export does not support architecture '{kind}'",
                       f"supported: {', '.join(sorted(GGUF_ARCHS))}; or use --format hf")
    spec = GGUF_ARCHS[kind]
    if spec.fewer_heads_as and _heads_fall_short(model):
        return GGUF_ARCHS[spec.fewer_heads_as]
    return spec


def _heads_fall_short(model: nn.Module) -> bool:
    """Whether some layer's query heads x head_dim is below the hidden size (width-pruned)."""
    hidden = int(model.config.hidden_size)
    return any(n * head_dim(model.config) != hidden for n in layer_shapes(model)["n_head"])


# ---------------------------------------------------------------- shapes and metadata

def layer_shapes(model: nn.Module) -> dict[str, list[int]]:
    """Per-layer head counts and feed-forward sizes, read from the weights."""
    a, hd = arch_of(model), head_dim(model.config)
    out = {"n_head": [], "n_head_kv": [], "n_ff": []}
    for layer in decoder_layers(model):
        attn, mlp = getattr(layer, a.attn), getattr(layer, a.mlp)
        out["n_head"].append(getattr(attn, a.q[0]).out_features // hd)
        out["n_head_kv"].append(getattr(attn, a.q[1]).out_features // hd)
        out["n_ff"].append(getattr(mlp, a.down).in_features)
    return out


def head_dim(cfg) -> int:
    return int(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)


def _scalar_or_list(v: list[int]):
    return v[0] if len(set(v)) == 1 else v


def _rope(cfg, kind: str | None = None) -> dict:
    rp = getattr(cfg, "rope_parameters", None) or {}
    if kind and kind in rp:
        rp = rp[kind]
    theta = rp.get("rope_theta", getattr(cfg, "rope_theta", 10000.0))
    return {"theta": float(theta), "type": rp.get("rope_type", "default"),
            "factor": rp.get("factor")}


def add_metadata(w: gguf.GGUFWriter, model: nn.Module, spec: GGUFArch, name: str) -> None:
    """Hyperparameters under ``<arch>.*`` keys."""
    cfg = model.config
    shapes, hd = layer_shapes(model), head_dim(cfg)
    w.add_name(name)
    w.add_context_length(int(cfg.max_position_embeddings))
    w.add_embedding_length(int(cfg.hidden_size))
    w.add_block_count(len(shapes["n_ff"]))
    w.add_feed_forward_length(max(shapes["n_ff"]))            # narrower layers are padded
    w.add_head_count(_scalar_or_list(shapes["n_head"]))
    w.add_head_count_kv(_scalar_or_list(shapes["n_head_kv"]))
    w.add_key_length(hd)
    w.add_value_length(hd)
    w.add_rope_dimension_count(hd)
    w.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
    w.add_vocab_size(int(cfg.vocab_size))
    rope = _rope(cfg, "full_attention")
    w.add_rope_freq_base(rope["theta"])
    if rope["type"] == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(float(rope["factor"]))
    elif rope["type"] != "default":
        raise SlmError(f"rope type '{rope['type']}' is not supported by the GGUF exporter",
                       "export models with default or linear rope scaling")
    if spec.sliding_window and getattr(cfg, "sliding_window", None):
        w.add_sliding_window(int(cfg.sliding_window))
        w.add_rope_freq_base_swa(_rope(cfg, "sliding_attention")["theta"])
        if getattr(cfg, "final_logit_softcapping", None):
            w.add_final_logit_softcapping(float(cfg.final_logit_softcapping))
        if getattr(cfg, "attn_logit_softcapping", None):
            w.add_attn_logit_softcapping(float(cfg.attn_logit_softcapping))


# ---------------------------------------------------------------- tensors

def _qk_perm(rows: int, n_head: int) -> torch.Tensor:
    """Row order taking HF rotate-half layout to llama.cpp's interleaved pairs, per head."""
    idx = torch.arange(rows)
    return idx.reshape(n_head, 2, rows // n_head // 2).transpose(1, 2).reshape(rows)


def _gemma_q_scale(model: nn.Module) -> float:
    """Factor folded into the query norm so llama.cpp's fixed query scale matches HF's."""
    cfg = model.config
    hd = head_dim(cfg)
    want = float(getattr(cfg, "query_pre_attn_scalar", hd) or hd) ** -0.5
    n_layers = cfg.num_hidden_layers
    have = (cfg.hidden_size / cfg.num_attention_heads) ** -0.5 if n_layers == 62 else hd ** -0.5
    return want / have


def hf_tensors(model: nn.Module, spec: GGUFArch):
    """Yield ``(hf_name, tensor_or_QuantLinear)`` in llama.cpp's layout.

    Dense tensors come transformed (Q/K permutation, norm offsets); packed
    ``QuantLinear`` weights come as ``(module, row_order)`` so their integer
    blocks can be written without dequantizing.
    """
    cfg, hd = model.config, head_dim(model.config)
    tied = bool(getattr(cfg, "tie_word_embeddings", False))
    q_scale = _gemma_q_scale(model) if spec.norm_plus_one else 1.0
    pads = ffn_padding(model)
    for mname, mod in model.named_modules():
        own = list(mod.named_parameters(recurse=False))
        if mname in pads:
            yield from _padded(mname, mod, *pads[mname])
            continue
        if isinstance(mod, QuantLinear):
            rows = _row_order(mname, mod.out_features, spec, cfg, hd)
            yield f"{mname}.weight", (mod, rows)
            own = [(n, p) for n, p in own if n == "bias"]
        for pname, p in own:
            full = f"{mname}.{pname}" if mname else pname
            if tied and full == "lm_head.weight":
                continue
            t = p.detach().float()
            rows = _row_order(mname, t.shape[0], spec, cfg, hd)
            if rows is not None:
                t = t[rows]
            if spec.norm_plus_one and pname == "weight" and "norm" in mname.rsplit(".", 1)[-1]:
                t = t + 1
                if mname.endswith("q_norm"):
                    t = t * q_scale
            yield full, t


def ffn_padding(model: nn.Module) -> dict[str, tuple[int, int]]:
    """``{module: (dim, width)}`` for feed-forward projections narrower than the widest."""
    a = arch_of(model)
    n_ff = layer_shapes(model)["n_ff"]
    width, pads = max(n_ff), {}
    for i, n in enumerate(n_ff):
        if n < width:
            base = f"{a.layers}.{i}.{a.mlp}"
            pads.update({f"{base}.{u}": (0, width) for u in a.up})
            pads[f"{base}.{a.down}"] = (1, width)
    return pads


def _padded(mname: str, mod: nn.Module, dim: int, width: int):
    """Weight (and bias) of a feed-forward Linear zero-padded to ``width`` along ``dim``."""
    w = mod.dequantize(torch.float32) if isinstance(mod, QuantLinear) else mod.weight.detach().float()
    pad = [0, 0, 0, 0]
    pad[1 if dim == 1 else 3] = width - w.shape[dim]
    yield f"{mname}.weight", torch.nn.functional.pad(w, pad)
    if mod.bias is not None:
        b = mod.bias.detach().float()
        yield f"{mname}.bias", torch.nn.functional.pad(b, (0, width - b.shape[0])) if dim == 0 else b


def _row_order(mname: str, rows: int, spec: GGUFArch, cfg, hd: int):
    if not spec.permute_qk:
        return None
    leaf = mname.rsplit(".", 1)[-1]
    if leaf in ("q_proj", "k_proj"):
        return _qk_perm(rows, rows // hd)
    return None


def gguf_name(tmap: gguf.TensorNameMap, hf_name: str) -> str:
    name = tmap.get_name(hf_name, try_suffixes=(".weight", ".bias"))
    if name is None:
        raise SlmError(f"no GGUF name for tensor {hf_name}",
                       "this model has parts the exporter does not know")
    return name


def tensor_type(gname: str, shape: tuple, ftype: str, tied: bool) -> Q:
    """GGML type of one tensor for file type ``ftype`` (llama.cpp's habits)."""
    if len(shape) == 1:
        return Q.F32
    qt = DIRECT_TYPES[ftype]
    block = gguf.GGML_QUANT_SIZES[qt][0]
    if shape[-1] % block:
        return Q.F16                                   # rows not divisible into blocks
    is_out = gname == "output.weight" or (tied and gname == "token_embd.weight")
    if is_out and qt in (Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1):
        return Q.Q8_0                                  # the output matrix is kept at 8 bits
    return qt


def encode(t: torch.Tensor, qt: Q) -> np.ndarray:
    """Dense tensor -> array for the writer (quantized types as uint8 bytes)."""
    a = t.float().numpy()
    if qt == Q.F32:
        return a
    if qt == Q.F16:
        return a.astype(np.float16)
    return gguf.quants.quantize(a, qt)


def encode_packed(mod, rows, qt: Q) -> np.ndarray | None:
    """GGML blocks straight from a ``QuantLinear``'s integer codes, or None.

    4-bit symmetric -> Q4_0, 4-bit -> Q4_1, 8-bit symmetric -> Q8_0, when the
    group size and input size are multiples of 32 (each group of G becomes
    G/32 GGML blocks sharing its scale: the values are identical, no re-rounding).
    """
    if mod.in_features % 32 or mod.group_size % 32:
        return None
    codes, s, z = mod.codes(), mod.scales, mod.qzeros               # (out, in), (out, ng)
    if rows is not None:
        codes, s, z = codes[rows], s[rows], z[rows]
    nb, rep = mod.in_features // 32, mod.group_size // 32
    s = s.repeat_interleave(rep, 1)[:, :nb].contiguous()            # (out, nb) fp16
    z = z.repeat_interleave(rep, 1)[:, :nb]
    sym = bool((z == 2 ** (mod.bits - 1)).all())
    c = codes.reshape(-1, nb, 32)
    d = s.numpy().view(np.uint8).reshape(-1, nb, 2)
    if mod.bits == 4 and qt in (Q.Q4_0, Q.Q4_1) and (sym or qt == Q.Q4_1):
        nib = (c[..., :16] | (c[..., 16:] << 4)).numpy()
        if qt == Q.Q4_0:
            parts = [d, nib]
        else:
            m = (-(z.float() * s.float())).half().numpy().view(np.uint8).reshape(-1, nb, 2)
            parts = [d, m, nib]
    elif mod.bits == 8 and qt == Q.Q8_0 and sym:
        parts = [d, (c.to(torch.int16) - 128).to(torch.int8).numpy().view(np.uint8)]
    else:
        return None
    return np.concatenate(parts, axis=-1).reshape(codes.shape[0], -1)


def write_gguf(slm, path, ftype: str, source_gguf: str | None = None) -> dict:
    """Write ``slm`` to ``path`` with gguf-py (``ftype`` in :data:`DIRECT_TYPES`).

    Returns:
        counts of tensors by GGML type, how many were copied from packed
        integers and how many were dequantized, and the tokenizer summary.
    """
    model = slm.model
    spec = gguf_arch(model)
    n_layers = len(layer_shapes(model)["n_ff"])
    tmap = gguf.get_tensor_name_map(spec.model_arch, n_layers)
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    w = gguf.GGUFWriter(str(path), spec.name)
    add_metadata(w, model, spec, str(slm.spec))
    w.add_file_type(_file_type(ftype))
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    info = {"tokenizer": add_tokenizer(w, slm.tokenizer, int(model.config.vocab_size),
                                       source_gguf),
            "types": {}, "packed_direct": 0, "packed_dequantized": 0}
    for hf_name, t in hf_tensors(model, spec):
        gname = gguf_name(tmap, hf_name)
        if isinstance(t, tuple):                       # (QuantLinear, row order)
            mod, rows = t
            qt = tensor_type(gname, (mod.out_features, mod.in_features), ftype, tied)
            arr = encode_packed(mod, rows, qt)
            if arr is not None:
                info["packed_direct"] += 1
                w.add_tensor(gname, arr, raw_dtype=qt)
                info["types"][qt.name] = info["types"].get(qt.name, 0) + 1
                continue
            info["packed_dequantized"] += 1
            t = mod.dequantize(torch.float32)
            t = t[rows] if rows is not None else t
        qt = tensor_type(gname, tuple(t.shape), ftype, tied)
        arr = encode(t, qt)
        w.add_tensor(gname, arr, raw_dtype=None if qt in (Q.F32, Q.F16) else qt)
        info["types"][qt.name] = info["types"].get(qt.name, 0) + 1
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return info


def _file_type(ftype: str) -> int:
    return int(getattr(gguf.LlamaFileType, f"MOSTLY_{ftype.upper()}",
                       gguf.LlamaFileType.ALL_F32 if ftype == "f32" else 0))

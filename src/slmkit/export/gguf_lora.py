"""Write a LoRA adapter as a llama.cpp adapter GGUF (``slm export ADAPTER --format gguf-lora``).

The file is what llama.cpp's ``convert_lora_to_gguf`` writes and
``llama_adapter_lora_init`` reads (``Llama(lora_path=...)``):

* ``general.type = adapter``, ``adapter.type = lora``, ``adapter.lora.alpha``;
  llama.cpp scales each pair by ``alpha / rank``.
* For every adapted linear layer ``W`` (GGUF name ``blk.N.attn_q.weight``) two
  tensors ``blk.N.attn_q.weight.lora_a`` (PEFT's ``lora_A``, rank x in) and
  ``.lora_b`` (PEFT's ``lora_B``, out x rank); llama.cpp adds
  ``scale * B (A x)`` to the layer's output.
* The output rows of ``B`` get the same transformations as the base weight
  in :mod:`.gguf_file`: the Q/K row permutation of the Llama graph, and the
  zero padding of narrower feed-forward layers of a pruned model (padded
  rows of ``B`` for gate/up, padded columns of ``A`` for down).

The export is checked like a model export: an f32 GGUF of the base is written
to a temporary file, llama.cpp runs it with the adapter, and its logits are
compared with the PyTorch model carrying the adapter (the merged model's
logits); the fraction of positions where the adapter moves llama.cpp's argmax
away from the base alone is reported too.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path

import gguf
import torch

from ..errors import SlmError
from .gguf_file import ffn_padding, gguf_arch, gguf_name, head_dim, layer_shapes, _row_order

LORA_TYPES = {"f32": gguf.GGMLQuantizationType.F32, "f16": gguf.GGMLQuantizationType.F16}


def lora_pairs(peft_model) -> list[tuple[str, torch.Tensor, torch.Tensor, float]]:
    """``(hf_module_name, A, B, scaling)`` of every LoRA layer of the active adapter.

    Raises:
        SlmError: DoRA (its magnitude vector has no llama.cpp form) or a LoRA on a
            layer that is not a plain linear one.
    """
    from peft.tuners.lora import Linear as LoraLinear
    from peft.tuners.lora import LoraLayer
    base = peft_model.get_base_model()
    out = []
    for name, mod in base.named_modules():
        if not isinstance(mod, LoraLayer):
            continue
        ad = mod.active_adapters[0]
        if mod.use_dora.get(ad):
            raise SlmError("llama.cpp has no DoRA adapters: a DoRA adapter cannot be written "
                           "as gguf-lora", "merge it (`slm finetune --merge`, or export the "
                           "adapter directory with --format gguf) instead")
        if not isinstance(mod, LoraLinear) or ad not in mod.lora_A:
            raise SlmError(f"the adapter on {name} is not a LoRA of a linear layer",
                           "export the merged model with --format gguf instead")
        a = mod.lora_A[ad].weight.detach().float().cpu()
        b = mod.lora_B[ad].weight.detach().float().cpu()
        out.append((name, a, b, float(mod.scaling[ad])))
    if not out:
        raise SlmError("the model carries no LoRA layers", "pass the adapter directory "
                       "written by `slm finetune` without --merge")
    return out


def write_gguf_lora(peft_model, path: Path, ftype: str = "f32") -> dict:
    """Write the active adapter of ``peft_model`` to ``path``; returns a summary."""
    if ftype not in LORA_TYPES:
        raise SlmError(f"a gguf-lora adapter is written in f32 or f16, not '{ftype}'",
                       "pass --type f32 or --type f16")
    model = peft_model.get_base_model()
    spec = gguf_arch(model)
    cfg, hd = model.config, head_dim(model.config)
    tmap = gguf.get_tensor_name_map(spec.model_arch, len(layer_shapes(model)["n_ff"]))
    pads = ffn_padding(model)
    pairs = lora_pairs(peft_model)
    r0, s0 = pairs[0][1].shape[0], pairs[0][3]
    alpha = s0 * r0                                   # llama.cpp: scale = alpha / rank
    w = gguf.GGUFWriter(str(path), spec.name)
    w.add_type(gguf.GGUFType.ADAPTER)
    w.add_string(gguf.Keys.Adapter.TYPE, "lora")
    w.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(alpha))
    qt = LORA_TYPES[ftype]
    for name, a, b, scaling in pairs:
        rank = a.shape[0]
        b = b * (scaling / (alpha / rank))            # per-layer rank or rsLoRA scaling
        rows = _row_order(name, b.shape[0], spec, cfg, hd)
        if rows is not None:
            b = b[rows]
        if name in pads:
            dim, width = pads[name]
            if dim == 0:
                b = torch.nn.functional.pad(b, (0, 0, 0, width - b.shape[0]))
            else:
                a = torch.nn.functional.pad(a, (0, width - a.shape[1]))
        base = gguf_name(tmap, f"{name}.weight")
        for suffix, t in ((".lora_a", a), (".lora_b", b)):
            arr = t.contiguous().numpy()
            w.add_tensor(base + suffix, arr.astype("float16") if ftype == "f16" else arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return {"architecture": spec.name, "lora_layers": len(pairs), "rank": int(r0),
            "alpha": round(float(alpha), 6), "type": ftype}


def base_copy(peft_model):
    """A plain copy of the model under the adapter (4-bit QLoRA bases dequantized)."""
    from ..tune.adapters import dequantize_base
    m = copy.deepcopy(peft_model)
    dequantize_base(m)
    return m.unload()


def export_gguf_lora(slm, out: Path, cfg) -> dict:
    """Write ``slm``'s adapter to ``out`` and check it on llama.cpp against PyTorch.

    Args:
        slm: an ``SLM`` whose model carries a LoRA adapter (``slmkit.load(ADAPTER_DIR)``).
        out: the ``.gguf`` adapter file.
        cfg: the ``ExportConfig`` (``type`` f32/f16, ``parity_tokens``, ``parity_text``).
    """
    from peft import PeftModel

    from ..models.io import SLM
    from . import load_check
    from .gguf_file import write_gguf
    if not isinstance(slm.model, PeftModel):
        raise SlmError(f"{slm.spec} is not an adapter", "pass the adapter directory written "
                       "by `slm finetune` without --merge (or --format gguf for a model)")
    if out.suffix != ".gguf":
        raise SlmError(f"GGUF output {out} should end in .gguf", "name the file adapter.gguf")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    tmp_base = out.with_name(f".{out.name}.base-{os.getpid()}.gguf")
    base = SLM(base_copy(slm.model), slm.tokenizer, slm.spec, dict(slm.meta), slm.path)
    try:
        info = write_gguf_lora(slm.model, tmp, cfg.type)
        write_gguf(base, tmp_base, "f32")
        report = {"format": "gguf-lora", **info, "base": str(slm.meta.get("adapter_base")
                                                              or slm.spec),
                  "bytes_on_disk": tmp.stat().st_size,
                  "llamacpp_load": _lora_load_check(tmp_base, tmp, load_check)}
        if cfg.parity_tokens:
            report["parity"] = lora_parity(slm, tmp_base, tmp, cfg)
        os.replace(tmp, out)
    finally:
        for p in (tmp, tmp_base):
            if p.exists():
                p.unlink()
    report["path"] = str(out)
    return report


def _lora_load_check(base_path: Path, lora_path: Path, load_check) -> dict:
    load_check(base_path)
    from ..engines.llamacpp import LlamaCppEngine
    try:
        eng = LlamaCppEngine(base_path, n_ctx=64, n_threads=1, lora_path=lora_path)
        eng.llm.eval([max(eng.llm.token_bos(), 0)])
        del eng
    except (ValueError, RuntimeError, OSError) as exc:
        raise SlmError(f"llama.cpp cannot apply the exported adapter ({exc}); nothing was "
                       "written", "report the model's architecture as a bug, or export the "
                       "merged model with --format gguf") from None
    return {"ok": True}


def lora_parity(slm, base_path: Path, lora_path: Path, cfg) -> dict:
    """llama.cpp (base GGUF + adapter GGUF) against PyTorch with the adapter, on held-out ids."""
    from ..engines.llamacpp import LlamaCppEngine
    from .parity import compare, parity_ids, pytorch_logits
    ids = parity_ids(slm.tokenizer, cfg.parity_tokens, cfg.parity_text)
    kw = dict(n_ctx=max(64, len(ids) + 8), n_threads=None, logits_all=True)
    with_lora = LlamaCppEngine(base_path, lora_path=lora_path, **kw)
    try:
        got = with_lora.logits(ids)
    finally:
        del with_lora
    alone = LlamaCppEngine(base_path, **kw)
    try:
        plain = alone.logits(ids)
    finally:
        del alone
    res = compare(pytorch_logits(slm.model, ids, cfg.device), got, ids)
    res["argmax_changed_by_adapter"] = round(float(
        (got.argmax(-1) != plain.argmax(-1)).float().mean()), 4)
    res["engine"] = "llama.cpp"
    res["text"] = cfg.parity_text
    return res

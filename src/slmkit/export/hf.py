"""Plain Hugging Face export: float safetensors that transformers (and vLLM) load."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import torch

from ..models.io import SLM, count_params, dir_bytes, save
from ..models.packed import dequantize_model, quant_linears
from .parity import compare, parity_ids, pytorch_logits


def export_hf(slm, out: Path, cfg) -> dict:
    """Write ``slm`` dequantized to an HF directory and check transformers reloads it.

    Returns:
        the report: bytes, and the logits agreement of the reloaded model.
    """
    from transformers import AutoModelForCausalLM

    n_packed = len(quant_linears(slm.model))
    plain = SLM(dequantize_model(copy.deepcopy(slm.model)) if n_packed else slm.model,
                slm.tokenizer, slm.spec, dict(slm.meta), slm.path)
    save(plain, out, step={"step": "export", "config": cfg.model_dump(), "report": {}},
         overwrite=True, dtype=torch.float32 if cfg.fp32 else None)
    report = {"format": "hf", "params": count_params(plain.model),
              "dtype": json.loads((out / "slmkit.json").read_text())["dtype"]
              if not cfg.fp32 else "float32",
              "bytes_on_disk": dir_bytes(out), "dequantized_layers": n_packed, "path": str(out)}
    if cfg.parity_tokens:
        ids = parity_ids(slm.tokenizer, cfg.parity_tokens, cfg.parity_text)
        re = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
        report["parity"] = {**compare(pytorch_logits(slm.model, ids, cfg.device),
                                      pytorch_logits(re, ids, cfg.device), ids),
                            "engine": "transformers"}
    return report

"""Weight-only quantization of decoder Linear layers: RTN and GPTQ, int8/int4.

``run_quantize(model, out, QuantizeConfig(...))`` quantizes, saves a
packed-integer model (loadable with ``slmkit.load``) and reports bytes,
memory, perplexity and decode speed against the unquantized model.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ...data import load_split, pack, tokenize_records
from ...device import Device, model_device
from ...engines import GenStats, open_engine
from ...errors import SlmError
from ...evaluate.memory import peak_rss
from ...evaluate.perplexity import engine_tokens, model_engine, perplexity, step_window
from ...models.io import count_params, dir_bytes, tensor_bytes as model_bytes
from ...models.packed import (FORMATS, QUANT_KEY, QuantLinear, dequantize_model, get_format,
                              load_quantized, quant_linears)
from ...outputs import refuse_existing
from ...step import open_input, write_outputs
from . import gptq, rtn


class QuantizeConfig(BaseModel):
    """Options of ``slm quantize`` and of a ``quantize`` recipe step."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    device: Device = "auto"                # where PyTorch runs (slmkit.device)
    method: Literal["rtn", "gptq"] = "gptq"
    bits: int = 4
    group_size: int = Field(128, description="inputs per scale; -1 = one scale per row")
    sym: bool = True
    act_order: bool = False
    clip: bool = Field(True, description="GPTQ: choose each group's range by a clipping search")
    calib: str = "python-docs"
    calib_samples: int = Field(64, ge=1)
    seq_len: int = Field(512, ge=8)
    block_size: int = Field(128, ge=1, description="GPTQ lazy-batch width")
    damp: float = Field(0.01, gt=0, lt=1)
    eval_tokens: int = Field(4096, ge=0, description="held-out tokens for perplexity; 0 = skip")
    speed_tokens: int = Field(32, ge=0, description="tokens to decode for speed; 0 = skip")

    @field_validator("bits")
    @classmethod
    def _bits(cls, v: int) -> int:
        if v not in FORMATS:
            raise ValueError(f"bits must be one of {sorted(FORMATS)}, got {v}")
        return v

    @field_validator("group_size")
    @classmethod
    def _group(cls, v: int) -> int:
        if v != -1 and (v < 2 or v % 2):
            raise ValueError(f"group_size must be -1 or an even number >= 2, got {v}")
        return v


def mark_quantized(model: torch.nn.Module, cfg: QuantizeConfig) -> None:
    """Record the packed layout in the model config (saved to config.json)."""
    setattr(model.config, QUANT_KEY, {
        "method": cfg.method, "bits": cfg.bits, "group_size": cfg.group_size, "sym": cfg.sym,
        "modules": sorted(quant_linears(model))})


def decode_speed(slm, n_tokens: int) -> float:
    """Greedy decode tokens/s of ``slm`` on the PyTorch engine."""
    eng = open_engine(slm)
    stats = GenStats()
    ids = eng.tokenize("def main():\n    ")
    for _ in eng.token_ids(ids, n_tokens, 0.0, 1.0, 0, stats, ignore_eos=True):
        pass
    return (stats.completion_tokens - 1) / stats.decode_s if stats.decode_s > 0 else 0.0


def run_quantize(model, out, cfg: QuantizeConfig, *, overwrite: bool = False,
                 progress=None) -> dict:
    """Quantize ``model`` and save it to ``out`` (a directory), with ``report.json``.

    Args:
        model: a spec ``slmkit.load`` accepts, or an ``SLM`` (copied, not modified).
        out: target directory (complete or absent).
        cfg: the options.
        overwrite: replace an existing ``out``.
        progress: optional callable ``(done, total)`` over decoder layers.

    Returns:
        the report dict (also written to ``out/report.json``).
    """
    out = Path(out)
    refuse_existing(out, overwrite)
    slm = open_input(model, cfg.device)                 # the caller's model stays as it is
    if quant_linears(slm.model):
        raise SlmError(f"{slm.spec} is already quantized", "quantize the unquantized model")
    t0 = time.perf_counter()
    calib = first_blocks(cfg.calib, slm.tokenizer, cfg.seq_len, "train", cfg.calib_samples)
    calib = calib.to(model_device(slm.model))
    held = _eval_ids(cfg, slm)
    before = _measure(slm, held, cfg)
    report = {"method": cfg.method, "bits": cfg.bits, "group_size": cfg.group_size,
              "sym": cfg.sym, "act_order": cfg.act_order, "clip": cfg.clip,
              "calib_blocks": int(calib.shape[0]),
              "params": count_params(slm.model), "before": before}
    report.update(_apply(slm.model, calib, cfg, progress))
    mark_quantized(slm.model, cfg)
    report["quantize_s"] = round(time.perf_counter() - t0, 2)
    report["after"] = _measure(slm, held, cfg)
    report["peak_rss_bytes"] = peak_rss()
    if held is not None:
        report["ppl_text"] = _ppl_text(cfg, held)
        report["ppl_increase_pct"] = round(100 * (report["after"]["ppl"] / before["ppl"] - 1), 3)
    history = dict(report)

    def sizes(tmp: Path) -> None:
        report["bytes_on_disk"] = dir_bytes(tmp)
        report["source_bytes_on_disk"] = _source_bytes(slm, before)
    write_outputs(slm, out, step="quantize", config=cfg.model_dump(), report=report,
                  history=history, overwrite=overwrite, before_report=sizes)
    return report


def first_blocks(spec, tok, seq_len: int, which: str, n: int) -> torch.Tensor:
    """The first ``n`` packed (n, seq_len) blocks of a split, tokenizing only what is needed."""
    docs, total = [], 0
    for rec in load_split(spec, which):
        docs += tokenize_records([rec], tok)
        total += len(docs[-1])
        if total >= n * seq_len:
            break
    return pack(docs, seq_len)[:n]


def _eval_ids(cfg: QuantizeConfig, slm) -> list[int] | None:
    """The held-out ids both perplexities score: the first ``eval_tokens`` of the val split
    of ``calib``, as ``slm eval`` reads them."""
    if not cfg.eval_tokens:
        return None
    return engine_tokens(model_engine(slm.model, slm.tokenizer), cfg.calib, "val",
                         cfg.eval_tokens)


def _ppl_text(cfg: QuantizeConfig, held: list[int]) -> dict:
    """What the before/after perplexities scored (``slm eval`` with these options agrees)."""
    max_length, stride = step_window(cfg.seq_len)
    return {"data": cfg.calib, "split": "val", "max_eval_tokens": len(held),
            "max_length": max_length, "stride": stride, "convention": "hf"}


def _measure(slm, held, cfg: QuantizeConfig) -> dict:
    m = {"memory_bytes": model_bytes(slm.model)}
    if held is not None:
        r = perplexity(model_engine(slm.model, slm.tokenizer), held, *step_window(cfg.seq_len),
                       progress=False)
        m["ppl"] = round(r["ppl"], 4)
    if cfg.speed_tokens:
        m["decode_tok_s"] = round(decode_speed(slm, cfg.speed_tokens), 2)
    return m


def _apply(model, calib, cfg: QuantizeConfig, progress) -> dict:
    if cfg.method == "rtn":
        return {"weight_rel_error": rtn.quantize(model, cfg.bits, cfg.group_size, cfg.sym)}
    st = gptq.quantize(model, calib, cfg.bits, cfg.group_size, cfg.sym, cfg.act_order,
                       cfg.block_size, cfg.damp, progress, clip=cfg.clip)
    mean = lambda d: sum(d.values()) / max(len(d), 1)  # noqa: E731
    return {"output_rel_error": st.gptq, "rtn_output_rel_error": st.rtn,
            "mean_output_rel_error": mean(st.gptq), "mean_rtn_output_rel_error": mean(st.rtn)}


def _source_bytes(slm, before: dict) -> int:
    src = slm.path
    if src is not None and Path(src).is_dir():
        return dir_bytes(Path(src))
    return before["memory_bytes"]


__all__ = ["QuantizeConfig", "run_quantize", "load_quantized", "QuantLinear", "dequantize_model",
           "quant_linears", "get_format", "model_bytes"]

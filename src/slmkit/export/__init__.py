"""Export a model for deployment: GGUF for llama.cpp, or a plain HF directory.

``run_export(model, out, ExportConfig(format="gguf", type="q4_k_m"))`` writes
the file atomically, reloads it with llama.cpp and checks it against the
PyTorch model (argmax agreement, perplexity), and writes ``report.json``.
Every GGUF is loaded back by llama.cpp and runs one token before it is kept,
with or without the parity check: a file llama.cpp refuses is an error (and
nothing is left behind), never an output.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..device import Device
from ..errors import SlmError
from ..models.gguf_meta import read_header, type_name
from ..models.io import SLM, count_params, load
from ..outputs import atomic_write_text, refuse_existing, temp_path
from .gguf_file import DIRECT_TYPES, GGUF_ARCHS, gguf_arch, write_gguf
from .hf import export_hf
from .parity import gguf_parity, parity_ids

# llama.cpp's quantizer handles these (and the direct types, from an f32 file)
LLAMACPP_TYPES = ("q2_k", "q3_k_s", "q3_k_m", "q3_k_l", "q4_k_s", "q4_k_m", "q5_k_s", "q5_k_m",
                  "q6_k", "iq4_nl", "iq4_xs")
GGUF_TYPES = tuple(DIRECT_TYPES) + LLAMACPP_TYPES


class ExportConfig(BaseModel):
    """Options of ``slm export`` and of an ``export`` recipe step."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    device: Device = "auto"                # where PyTorch runs (slmkit.device)
    format: Literal["gguf", "hf"] = "gguf"
    type: str = Field("f16", description="GGUF tensor type: " + ", ".join(GGUF_TYPES))
    parity_tokens: int = Field(256, ge=0, description="held-out tokens for the parity check; "
                               "0 = skip")
    parity_text: str = "python-docs"
    fp32: bool = Field(False, description="hf: write fp32 weights instead of the model's own "
                       "dtype (bf16 unless it was made in another)")

    @field_validator("type")
    @classmethod
    def _type(cls, v: str) -> str:
        v = v.lower()
        if v not in GGUF_TYPES:
            raise ValueError(f"type must be one of {', '.join(GGUF_TYPES)}, got '{v}'")
        return v


def run_export(model, out, cfg: ExportConfig, *, overwrite: bool = False) -> dict:
    """Export ``model`` to ``out`` (a ``.gguf`` file, or a directory for ``hf``).

    Args:
        model: a spec ``slmkit.load`` accepts, or an ``SLM``.
        out: target path; refused if it exists unless ``overwrite``.
        cfg: the options.
        overwrite: replace an existing output.

    Returns:
        the report (also written as ``report.json`` next to a GGUF file, as
        ``<name>.report.json``, or inside the HF directory).
    """
    out = Path(out)
    refuse_existing(out, overwrite)
    slm = model if isinstance(model, SLM) else load(model)
    t0 = time.perf_counter()
    if cfg.format == "hf":
        report = export_hf(slm, out, cfg)
    else:
        report = _export_gguf(slm, out, cfg)
    report["export_s"] = round(time.perf_counter() - t0, 2)
    rpath = out / "report.json" if out.is_dir() else out.with_name(out.name + ".report.json")
    atomic_write_text(rpath, json.dumps(report, indent=2))
    report["report_path"] = str(rpath)
    return report


def _source_gguf(slm) -> str | None:
    meta = slm.meta or {}
    if meta.get("gguf"):
        return str(meta["gguf"])
    src = str(meta.get("source", ""))
    return src[5:] if src.startswith("gguf:") else None


def _export_gguf(slm, out: Path, cfg: ExportConfig) -> dict:
    gguf_arch(slm.model)                                   # unknown architecture: fail first
    if out.suffix != ".gguf":
        raise SlmError(f"GGUF output {out} should end in .gguf", "name the file model.gguf")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp, tmp2 = temp_path(out), temp_path(out, "f32")
    try:
        if cfg.type in DIRECT_TYPES:
            info = write_gguf(slm, tmp, cfg.type, _source_gguf(slm))
        else:
            info = write_gguf(slm, tmp2, "f32", _source_gguf(slm))
            _llamacpp_quantize(tmp2, tmp, cfg.type)
            info["quantizer"] = "llama.cpp"
            info["types"] = _tensor_types(tmp)
        report = {"format": "gguf", "type": cfg.type, "architecture": gguf_arch(slm.model).name,
                  "params": count_params(slm.model), "bytes_on_disk": tmp.stat().st_size, **info}
        report["llamacpp_load"] = load_check(tmp)
        if cfg.parity_tokens:
            ids = parity_ids(slm.tokenizer, cfg.parity_tokens, cfg.parity_text)
            report["parity"] = gguf_parity(slm, tmp, ids, cfg.parity_text, cfg.device)
        os.replace(tmp, out)
    finally:
        for p in (tmp, tmp2):
            if p.exists():
                p.unlink()
    report["path"] = str(out)
    return report


def load_check(path: Path) -> dict:
    """Load ``path`` with llama.cpp and run one token; SlmError if llama.cpp refuses it."""
    from ..engines.llamacpp import LlamaCppEngine
    t0 = time.perf_counter()
    try:
        eng = LlamaCppEngine(path, n_ctx=64, n_threads=1)
        bos = eng.llm.token_bos()
        eng.llm.eval([bos if bos >= 0 else 0])
        n_vocab = int(eng.llm.n_vocab())
        del eng
    except (ValueError, RuntimeError, OSError) as exc:
        raise SlmError(f"llama.cpp cannot load the exported GGUF ({exc}); nothing was written",
                       "export with --format hf, or report the model's architecture and "
                       "pruning as a bug") from None
    return {"ok": True, "n_vocab": n_vocab, "seconds": round(time.perf_counter() - t0, 2)}


def _tensor_types(path: Path) -> dict[str, int]:
    """How many tensors of each GGML type a GGUF file holds."""
    counts: dict[str, int] = {}
    for t in read_header(path).tensors:
        name = type_name(t.type)
        counts[name] = counts.get(name, 0) + 1
    return counts


def _llamacpp_quantize(src: Path, dst: Path, ftype: str) -> None:
    """llama.cpp's own quantizer (``llama_model_quantize``), e.g. for K-quants."""
    import llama_cpp
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{ftype.upper()}")
    params.nthread = os.cpu_count() or 1
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params)
    if rc != 0 or not dst.exists():
        raise SlmError(f"llama.cpp could not quantize to {ftype} (code {rc})",
                       "try another --type, e.g. q8_0 or q4_0")


__all__ = ["ExportConfig", "run_export", "GGUF_TYPES", "GGUF_ARCHS"]

"""Sequence-level distillation data: the teacher writes answers to prompts.

Each prompt (or topic) is put into ``template`` (``{prompt}`` is replaced),
sent through the teacher's chat template, and the sampled reply becomes a
``{"prompt", "response"}`` JSONL record that ``slm finetune`` trains on (loss
on the response only) and ``slm distill`` reads as text (Kim & Rush, 2016:
training on the teacher's outputs instead of the data's).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..device import Device
from ..engines import GenStats, open_engine, stream_text
from ..errors import SlmError
from ..outputs import refuse_existing, temp_path
from ..progress import progress_bar
from . import iter_jsonl


class SynthConfig(BaseModel):
    """Options of ``slm synth``."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    device: Device = "auto"                # where PyTorch runs (slmkit.device)
    teacher: str
    prompts: str = Field(..., description=".txt (one prompt or topic per line) or .jsonl "
                         "with a 'prompt' or 'topic' field")
    template: str = Field("{prompt}", description="user message; {prompt} is replaced")
    system: str | None = None
    n_per_prompt: int = Field(1, ge=1)
    max_tokens: int = Field(256, ge=1)
    temperature: float = Field(0.7, ge=0)
    top_p: float = Field(0.95, gt=0, le=1)
    seed: int = 0
    engine: str = Field("auto", description="auto, pytorch or llama.cpp")
    min_chars: int = Field(1, ge=0, description="drop replies shorter than this")

    @field_validator("template")
    @classmethod
    def _has_slot(cls, v):
        if "{prompt}" not in v:
            raise ValueError("template must contain {prompt}")
        return v


def read_prompts(path: str | Path) -> list[str]:
    """Prompts from a .txt file (non-empty lines not starting with '#') or a .jsonl file."""
    p = Path(path)
    if not p.is_file():
        raise SlmError(f"prompts file '{p}' not found", "pass a .txt or .jsonl file")
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise SlmError(f"prompts file '{p}' is not UTF-8 text (byte {exc.start})",
                       "convert it to UTF-8") from None
    if p.suffix == ".jsonl":
        out = []
        for n, rec in iter_jsonl(p):
            text = rec.get("prompt", rec.get("topic")) if isinstance(rec, dict) else None
            if not isinstance(text, str):
                raise SlmError(f"{p}:{n}: needs a 'prompt' or 'topic' string", "fix that line")
            out.append(text)
    else:
        out = [s.strip() for s in lines if s.strip() and not s.lstrip().startswith("#")]
    if not out:
        raise SlmError(f"prompts file '{p}' has no prompts", "write one prompt per line")
    return out


def _messages(cfg: SynthConfig, prompt: str) -> list[dict]:
    msgs = [{"role": "system", "content": cfg.system}] if cfg.system else []
    return msgs + [{"role": "user", "content": cfg.template.replace("{prompt}", prompt)}]


def run_synth(out: str | Path, cfg: SynthConfig, *, overwrite: bool = False,
              progress: bool = True) -> dict:
    """Write the teacher's replies to ``out`` (JSONL, atomically) and return a report.

    Args:
        out: the JSONL file to write.
        cfg: teacher, prompts and sampling options.
        overwrite: replace an existing file.
        progress: show a progress bar.
    """
    out = Path(out)
    refuse_existing(out, overwrite)
    prompts = read_prompts(cfg.prompts)
    engine = open_engine(cfg.teacher, cfg.engine, device=cfg.device)
    tmp = temp_path(out)
    t0, n_tok, kept, dropped = time.time(), 0, 0, 0
    try:
        with open(tmp, "w", encoding="utf-8") as f, progress_bar(
                "synth", total=len(prompts) * cfg.n_per_prompt, enabled=progress) as bar:
            for i, prompt in enumerate(prompts):
                msgs = _messages(cfg, prompt)
                for j in range(cfg.n_per_prompt):
                    seed = cfg.seed + i * cfg.n_per_prompt + j
                    stats = GenStats()
                    text = "".join(stream_text(engine, engine.chat_prompt(msgs),
                                               max_tokens=cfg.max_tokens,
                                               temperature=cfg.temperature, top_p=cfg.top_p,
                                               seed=seed, stats=stats)).strip()
                    n_tok += stats.completion_tokens
                    bar.advance()
                    if len(text) < max(1, cfg.min_chars):
                        dropped += 1
                        continue
                    rec = {"prompt": msgs[-1]["content"], "response": text,
                           "id": f"synth-{i}-{j}", "teacher": cfg.teacher, "seed": seed}
                    f.write(json.dumps(rec, ensure_ascii=False) + "\n")
                    kept += 1
        if kept == 0:
            raise SlmError("the teacher wrote no usable reply", "raise --max-tokens or check "
                           "the prompts")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    dt = time.time() - t0
    return {"step": "synth", "teacher": cfg.teacher, "out": str(out), "prompts": len(prompts),
            "records": kept, "dropped": dropped, "completion_tokens": n_tok,
            "tokens_per_s": round(n_tok / dt, 1) if dt else None, "time_s": round(dt, 2),
            "bytes": out.stat().st_size}

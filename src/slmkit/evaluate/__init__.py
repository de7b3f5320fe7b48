"""``slm eval``: quality, speed, memory and size of models, side by side.

Each model is measured in its own process (``isolate``), so its peak memory is
its own. Peak memory is the peak resident set size over loading and
generation (what serving the model costs); perplexity scoring, which holds a
full window of logits, comes after that reading.
"""
from __future__ import annotations

import json
import math
import multiprocessing as mp
import time
import traceback
from pathlib import Path
from typing import Literal

import psutil
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..device import Device
from ..errors import SlmError
from ..paths import peak_rss
from .choice import accuracy, read_task
from .perplexity import perplexity
from .speed import measure_speed

__all__ = ["EvalConfig", "EvalText", "accuracy", "engine_tokens", "eval_text", "evaluate_one",
           "measure_speed", "perplexity", "read_task", "run_eval", "text_perplexity"]


class EvalConfig(BaseModel):
    """Options of ``slm eval`` and of the ``eval`` recipe step."""

    model_config = ConfigDict(extra="forbid")

    device: Device = "auto"                # where PyTorch runs (slmkit.device)
    adapter: str | None = Field(None, description="adapter directory applied to every model "
                                "(unmerged, PyTorch), or a LoRA .gguf for .gguf models")
    data: str = Field("python-docs", description="text for perplexity: corpus name or path")
    split: Literal["val", "train", "all"] = "val"
    general_data: str | None = Field(None, description="second text for perplexity, e.g. wordnet-glosses")
    task: str | None = Field(None, description="multiple-choice JSONL {question, choices, answer}")
    engine: Literal["auto", "pytorch", "llama.cpp"] = "auto"
    max_length: int = Field(512, gt=1)
    stride: int = Field(256, gt=0)
    max_eval_tokens: int | None = Field(8192, gt=1, description="cap on scored tokens")
    prompt_tokens: int = Field(128, gt=0)
    gen_tokens: int = Field(64, gt=1)
    speed: bool = True
    isolate: bool = True
    reference: str | None = Field(
        None, description="model whose tokenizer picks the text and counts its tokens: "
        "perplexity is then per reference token, comparable across vocabularies")

    @field_validator("data", "general_data", "task")
    @classmethod
    def _exists(cls, v):
        from ..data import data_exists
        from ..data.corpora import CORPORA
        if v is not None and not data_exists(v):
            raise ValueError(f"'{v}' is neither a built-in corpus ({', '.join(CORPORA)}) nor a path")
        return v


def engine_tokens(engine, spec: str, split: str, limit: int | None) -> list[int]:
    """Token ids of a corpus split through the engine's own tokenizer, EOS between records."""
    from ..data import load_split, record_text
    eos = min(engine.eos_ids) if engine.eos_ids else None
    ids: list[int] = []
    for rec in load_split(spec, split):
        ids += engine.tokenize(record_text(rec), special=False) + ([eos] if eos is not None else [])
        if limit and len(ids) > limit:
            break
    return ids[:limit] if limit else ids


class EvalText(BaseModel):
    """Evaluation text fixed by a reference tokenizer: the same characters for every model.

    Attributes:
        texts: record texts, the last one cut at a reference token boundary.
        ref_tokens: tokens the reference tokenizer makes of them (one EOS per record).
    """

    texts: list[str]
    ref_tokens: int


def eval_text(tok, spec: str, split: str, limit: int | None) -> EvalText:
    """The records of a corpus split up to ``limit`` tokens of the HF tokenizer ``tok``."""
    from ..data import load_split, record_text

    def count(text: str) -> list[int]:
        return tok(text, add_special_tokens=False)["input_ids"]

    texts, n = [], 0
    for rec in load_split(spec, split):
        text = record_text(rec)
        ids = count(text)
        if limit and n + len(ids) + 1 > limit:
            if limit - n > 1:
                texts.append(tok.decode(ids[:limit - n - 1], clean_up_tokenization_spaces=False))
            break
        texts.append(text)
        n += len(ids) + 1
    return EvalText(texts=texts, ref_tokens=sum(len(count(t)) + 1 for t in texts))


def text_perplexity(engine, text: EvalText, max_length: int = 512, stride: int = 256,
                    progress: bool = True) -> dict:
    """Perplexity of ``engine`` on ``text`` per reference token, and per its own token.

    The summed negative log-likelihood of the same characters is divided by the
    reference tokenizer's count, so a model with another vocabulary (more, shorter
    tokens) is measured on the same scale; with the reference's own tokenizer both
    figures agree.
    """
    eos = min(engine.eos_ids) if engine.eos_ids else None
    ids: list[int] = []
    for t in text.texts:
        ids += engine.tokenize(t, special=False) + ([eos] if eos is not None else [])
    r = perplexity(engine, ids, max_length, stride, progress)
    nll_sum = r["nll"] * r["tokens"]
    ref_scored = max(text.ref_tokens - 1, 1)
    return {"ppl": math.exp(nll_sum / ref_scored), "ppl_own_tokens": r["ppl"],
            "tokens": r["tokens"], "ref_tokens": ref_scored}


def _model_size(engine, spec) -> tuple[int, int]:
    """(parameters, bytes on disk) of the artifact the engine runs."""
    from ..models.io import count_params, dir_bytes
    if engine.name == "pytorch":
        path = engine.slm.path
        return count_params(engine.model), dir_bytes(path) if path else 0
    n = int(engine.llm._model.n_params()) if hasattr(engine.llm, "_model") else 0
    return n, Path(engine.path).stat().st_size


def evaluate_one(spec, cfg: EvalConfig, progress: bool = True,
                 texts: dict[str, EvalText] | None = None) -> dict:
    """Measure one model (a spec string) in this process.

    ``texts`` (from ``reference_texts``) fixes the perplexity text by characters; without
    it the model's own tokenizer picks ``max_eval_tokens`` tokens.
    """
    from ..engines import open_engine
    rss0 = psutil.Process().memory_info().rss
    t0 = time.perf_counter()
    n_ctx = max(cfg.max_length, cfg.prompt_tokens + cfg.gen_tokens + 8)
    engine = open_engine(spec, cfg.engine, n_ctx=n_ctx, logits_all=True, device=cfg.device,
                         adapter=cfg.adapter)
    row = {"model": str(spec), "engine": engine.name, "load_s": time.perf_counter() - t0}
    row["params"], row["bytes"] = _model_size(engine, spec)
    ids = engine_tokens(engine, cfg.data, cfg.split, cfg.max_eval_tokens)
    row["tokens_per_char"] = tokens_per_char(engine, cfg.data, cfg.split)
    if cfg.general_data:
        row["tokens_per_char_general"] = tokens_per_char(engine, cfg.general_data, cfg.split)
    if cfg.speed:
        prompt = (ids * (cfg.prompt_tokens // max(len(ids), 1) + 1))[: cfg.prompt_tokens]
        # llama.cpp runs are short and jittery on a shared machine: best of three
        row.update(measure_speed(engine, prompt, cfg.gen_tokens,
                                 repeats=3 if engine.name == "llama.cpp" else 2))
    row["rss_before_load"] = rss0
    row["peak_rss"] = peak_rss()
    if texts:
        r = text_perplexity(engine, texts["data"], cfg.max_length, cfg.stride, progress)
        row.update(ppl=r["ppl"], ppl_own_tokens=r["ppl_own_tokens"], ppl_tokens=r["tokens"],
                   ppl_ref_tokens=r["ref_tokens"])
    else:
        row.update({f"{k}": v for k, v in _ppl(engine, ids, cfg, progress).items()})
    if cfg.general_data and texts:
        r = text_perplexity(engine, texts["general"], cfg.max_length, cfg.stride, progress)
        row.update(ppl_general=r["ppl"], ppl_general_own_tokens=r["ppl_own_tokens"])
    elif cfg.general_data:
        gen_ids = engine_tokens(engine, cfg.general_data, cfg.split, cfg.max_eval_tokens)
        row["ppl_general"] = perplexity(engine, gen_ids, cfg.max_length, cfg.stride, progress)["ppl"]
    if cfg.task:
        row.update({f"mc_{k}": v for k, v in accuracy(engine, read_task(cfg.task), progress).items()})
    return row


def tokens_per_char(engine, spec: str, split: str, max_chars: int = 100_000) -> float:
    """Tokens the engine's tokenizer makes per character of the text (NFC, as read),
    over the first ``max_chars`` characters of the split: how much a tokenizer spends on
    a language (an English vocabulary takes several tokens per Hangul syllable)."""
    from ..data import load_split, record_text
    tokens = chars = 0
    for rec in load_split(spec, split):
        text = record_text(rec)[: max_chars - chars]
        tokens += len(engine.tokenize(text, special=False))
        chars += len(text)
        if chars >= max_chars:
            break
    return tokens / max(chars, 1)


def _ppl(engine, ids, cfg: EvalConfig, progress: bool) -> dict:
    r = perplexity(engine, ids, cfg.max_length, cfg.stride, progress)
    return {"ppl": r["ppl"], "ppl_tokens": r["tokens"]}


def reference_texts(cfg: EvalConfig) -> dict[str, EvalText] | None:
    """The texts every model is scored on when ``cfg.reference`` is set."""
    if not cfg.reference:
        return None
    from ..models.io import load_tokenizer
    tok = load_tokenizer(cfg.reference)
    out = {"data": eval_text(tok, cfg.data, cfg.split, cfg.max_eval_tokens)}
    if cfg.general_data:
        out["general"] = eval_text(tok, cfg.general_data, cfg.split, cfg.max_eval_tokens)
    return out


def _child(spec, cfg_json: str, texts_json: str, queue) -> None:
    try:
        texts = {k: EvalText.model_validate(v) for k, v in json.loads(texts_json).items()} \
            if texts_json else None
        queue.put(("ok", evaluate_one(spec, EvalConfig.model_validate_json(cfg_json),
                                      progress=False, texts=texts)))
    except SlmError as exc:
        queue.put(("slm", exc.one_line()))
    except BaseException as exc:  # report, never hang the parent
        queue.put(("crash", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))


def _isolated(spec, cfg: EvalConfig, texts: dict[str, EvalText] | None) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    texts_json = json.dumps({k: v.model_dump() for k, v in texts.items()}) if texts else ""
    proc = ctx.Process(target=_child, args=(str(spec), cfg.model_dump_json(), texts_json, queue))
    proc.start()
    while True:
        try:
            kind, payload = queue.get(timeout=1.0)
            break
        except Exception:
            if not proc.is_alive():
                raise SlmError(f"evaluating {spec} crashed (exit code {proc.exitcode})",
                               "run with --no-isolate --debug to see why")
    proc.join()
    if kind == "ok":
        return payload
    raise SlmError(payload.splitlines()[0] if kind == "slm" else
                   f"evaluating {spec} failed: {payload.splitlines()[0]}")


def run_eval(models: list, cfg: EvalConfig, progress: bool = True) -> dict:
    """Evaluate each model in ``models`` (specs) with ``cfg``; rows in the same order.

    Returns:
        ``{"models": [row, ...], "config": {...}}``; each row has params, bytes,
        load_s, prefill/decode tok/s, ttft_s, peak_rss, ppl (and ppl_general,
        mc_acc, mc_acc_norm when asked).
    """
    if not models:
        raise SlmError("no model given", "name at least one model")
    rows = []
    say = _announcer(progress)
    texts = reference_texts(cfg)
    for i, spec in enumerate(models, 1):
        t0 = time.perf_counter()
        say(f"eval {i}/{len(models)}: {spec}")
        row = _isolated(spec, cfg, texts) if cfg.isolate else evaluate_one(spec, cfg, progress,
                                                                           texts)
        rows.append(row)
        speed = f", {row['decode_tok_s']:.1f} tok/s" if row.get("decode_tok_s") else ""
        ppl = f"ppl {row['ppl']:.2f}" if row.get("ppl") is not None else "done"
        say(f"  {ppl}{speed} ({time.perf_counter() - t0:.0f} s)")
    return {"models": rows, "config": cfg.model_dump()}


def _announcer(enabled: bool):
    """Plain progress lines on stderr (one per model; isolated children draw no bars)."""
    if not enabled:
        return lambda _msg: None
    from rich.console import Console
    console = Console(stderr=True, highlight=False)
    return lambda msg: console.print(msg)

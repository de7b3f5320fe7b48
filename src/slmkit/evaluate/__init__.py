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
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..data import data_exists, load_split, record_text
from ..data.corpora import CORPORA
from ..device import Device
from ..engines import open_engine
from ..errors import SlmError
from ..models.catalog import CATALOG
from ..models.io import (META_FILE, builtin_gguf, check_gguf, check_hf_dir, count_params,
                         dir_bytes, hub_cached, load_tokenizer)
from .choice import accuracy, read_task
from .compare import kept_lost
from .memory import peak_rss
from .perplexity import engine_tokens, heldout_perplexity, perplexity
from .speed import measure_speed
from .tasks import TASKS, resolve_tasks, run_tasks, score_task

__all__ = ["EvalConfig", "EvalText", "TASKS", "accuracy", "check_models", "engine_tokens",
           "eval_text", "evaluate_one", "heldout_perplexity", "measure_speed", "perplexity", "read_task",
           "resolve_tasks", "run_eval", "run_tasks", "text_perplexity"]


class EvalConfig(BaseModel):
    """Options of ``slm eval`` and of the ``eval`` recipe step."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    device: Device = "auto"                # where PyTorch runs (slmkit.device)
    adapter: str | None = Field(None, description="adapter directory applied to every model "
                                "(unmerged, PyTorch), or a LoRA .gguf for .gguf models")
    data: str = Field("python-docs", description="text for perplexity: corpus name or path")
    split: Literal["auto", "val", "train", "all"] = Field(
        "auto", description="which split of data to score; auto: val for a built-in corpus or "
        "data a model was trained on (its saved history says so), all of it otherwise")
    general_data: str | None = Field(None, description="second text for perplexity, e.g. wordnet-glosses")
    general_split: Literal["auto", "val", "train", "all"] = Field(
        "auto", description="which split of general_data to score (auto as for split)")
    task: str | None = Field(None, description="benchmarks (arc_easy, piqa, mmlu, ...) and/or "
                             "multiple-choice JSONL files {question, choices, answer}, comma-separated")
    num_fewshot: int = Field(0, ge=0, description="solved examples before each benchmark question")
    task_limit: int | None = Field(None, gt=0, description="score a fixed random subset of this "
                                   "many questions per task")
    task_seed: int = Field(1234, description="seeds the few-shot draws and the --limit subset")
    engine: Literal["auto", "pytorch", "llama.cpp"] = "auto"
    max_length: int = Field(512, gt=1, description="perplexity window in tokens")
    stride: int = Field(256, gt=0, description="how far the window moves (hf convention)")
    convention: Literal["hf", "llama.cpp"] = Field(
        "hf", description="perplexity as the Hugging Face guide's sliding window computes it "
        "(every token but the first, windows moving by stride) or as llama.cpp's perplexity "
        "tool does (chunks of max_length, second half of each scored)")
    max_eval_tokens: int | None = Field(8192, gt=1, description="cap on scored tokens")
    prompt_tokens: int = Field(128, gt=0)
    gen_tokens: int = Field(64, gt=1)
    speed: bool = True
    isolate: bool = True
    reference: str | None = Field(
        None, description="model whose tokenizer picks the text and counts its tokens: "
        "perplexity is then per reference token, comparable across vocabularies")

    @field_validator("task")
    @classmethod
    def _tasks(cls, v):
        if v is not None:
            resolve_tasks(v)                 # unknown names and malformed files fail here
        return v

    @field_validator("data", "general_data")
    @classmethod
    def _exists(cls, v):
        if v is not None and not data_exists(v):
            raise ValueError(f"'{v}' is neither a built-in corpus ({', '.join(CORPORA)}) nor a path")
        return v

    @model_validator(mode="after")
    def _reference_scores_every_token(self):
        if self.reference and self.convention != "hf":
            raise ValueError("reference counts every token of the text; use convention hf")
        return self


def resolve_split(split: str, spec: str, models: list) -> str:
    """The split ``auto`` stands for: ``val`` where a model may have trained on ``spec``
    (a built-in corpus, the recipes' data, or data in a model's saved history), else ``all``.
    """
    if split != "auto":
        return split
    return "val" if spec in CORPORA or any(_trained_on(m, spec) for m in models) else "all"


def resolved(cfg: EvalConfig, models: list) -> EvalConfig:
    """``cfg`` with its ``auto`` splits resolved for ``models`` (one split for all of them)."""
    return cfg.model_copy(update={
        "split": resolve_split(cfg.split, cfg.data, models),
        "general_split": resolve_split(cfg.general_split, cfg.general_data or "", models)})


def _trained_on(model, spec: str) -> bool:
    """Whether the ``slmkit.json`` history of a model directory names ``spec`` as its data."""
    meta = Path(str(model)).expanduser() / META_FILE
    try:
        history = json.loads(meta.read_text()).get("history", [])
    except (OSError, ValueError):
        return False
    want = {spec, str(Path(spec).expanduser().resolve())}
    for step in history:
        cfg = step.get("config", {}) if isinstance(step, dict) else {}
        for key in ("data", "calib", "calib_data"):
            v = cfg.get(key)
            if isinstance(v, str) and (v in want or str(Path(v).expanduser().resolve()) in want):
                return True
    return False


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
            "tokens": r["tokens"], "ref_tokens": ref_scored,
            "bits_per_byte": r["bits_per_byte"]}


def _model_size(engine, spec) -> tuple[int, int]:
    """(parameters, bytes on disk) of the artifact the engine runs."""
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
    cfg = resolved(cfg, [spec])
    rss0 = psutil.Process().memory_info().rss
    t0 = time.perf_counter()
    n_ctx = max(cfg.max_length, cfg.prompt_tokens + cfg.gen_tokens + 8,
                2048 if cfg.task else 0)             # few-shot prompts
    # llama.cpp computes every position's logits only when asked to (perplexity needs them,
    # timing must not pay for them): its speed is measured on a plain context
    engine = open_engine(spec, cfg.engine, n_ctx=n_ctx, device=cfg.device,
                         logits_all=not cfg.speed, adapter=cfg.adapter)
    row = {"model": str(spec), "engine": engine.name, "load_s": time.perf_counter() - t0}
    row["params"], row["bytes"] = _model_size(engine, spec)
    ids = engine_tokens(engine, cfg.data, cfg.split, cfg.max_eval_tokens)
    row["tokens_per_char"] = tokens_per_char(engine, cfg.data, cfg.split)
    if cfg.general_data:
        row["tokens_per_char_general"] = tokens_per_char(engine, cfg.general_data,
                                                           cfg.general_split)
    if cfg.speed:
        prompt = (ids * (cfg.prompt_tokens // max(len(ids), 1) + 1))[: cfg.prompt_tokens]
        # llama.cpp runs are short and jittery on a shared machine: best of three
        row.update(measure_speed(engine, prompt, cfg.gen_tokens,
                                 repeats=3 if engine.name == "llama.cpp" else 2))
    row["rss_before_load"] = rss0
    row["peak_rss"] = peak_rss()
    if engine.name == "llama.cpp" and cfg.speed:
        engine.llm.close()
        engine = open_engine(spec, "llama.cpp", n_ctx=n_ctx, logits_all=True)
    texts = texts or {}
    row.update(_scores(engine, "ppl", cfg.data, cfg.split, ids, texts.get("data"), cfg,
                       progress))
    if cfg.general_data:
        row.update(_scores(engine, "ppl_general", cfg.general_data, cfg.general_split, None,
                           texts.get("general"), cfg, progress))
    if cfg.task:
        row["tasks"] = {}
        for task in resolve_tasks(cfg.task):
            r = score_task(engine, task, limit=cfg.task_limit, num_fewshot=cfg.num_fewshot,
                           seed=cfg.task_seed, progress=progress)
            row["tasks"][task.name] = r
            if task.name not in TASKS and "mc_acc" not in row:      # a JSONL file
                row.update(mc_acc=r["acc"], mc_acc_norm=r["acc_norm"])
    return row


def _scores(engine, key: str, spec: str, split: str, ids: list[int] | None,
            text: EvalText | None, cfg: EvalConfig, progress: bool) -> dict:
    """Perplexity fields of one text: ``key`` (perplexity), ``key_tokens`` (tokens scored),
    ``key_bpb`` (bits per byte), ``key_split``; with a reference text also
    ``key_own_tokens`` and ``key_ref_tokens``."""
    if text is not None:
        r = text_perplexity(engine, text, cfg.max_length, cfg.stride, progress)
        out = {key: r["ppl"], f"{key}_own_tokens": r["ppl_own_tokens"],
               f"{key}_ref_tokens": r["ref_tokens"]}
    else:
        if ids is None:
            ids = engine_tokens(engine, spec, split, cfg.max_eval_tokens)
        r = perplexity(engine, ids, cfg.max_length, cfg.stride, progress, cfg.convention)
        out = {key: r["ppl"]}
    out.update({f"{key}_tokens": r["tokens"], f"{key}_bpb": r["bits_per_byte"],
                f"{key}_split": split})
    return out


def tokens_per_char(engine, spec: str, split: str, max_chars: int = 100_000) -> float:
    """Tokens the engine's tokenizer makes per character of the text (NFC, as read),
    over the first ``max_chars`` characters of the split: how much a tokenizer spends on
    a language (an English vocabulary takes several tokens per Hangul syllable)."""
    tokens = chars = 0
    for rec in load_split(spec, split):
        text = record_text(rec)[: max_chars - chars]
        tokens += len(engine.tokenize(text, special=False))
        chars += len(text)
        if chars >= max_chars:
            break
    return tokens / max(chars, 1)


def reference_texts(cfg: EvalConfig) -> dict[str, EvalText] | None:
    """The texts every model is scored on when ``cfg.reference`` is set."""
    if not cfg.reference:
        return None
    tok = load_tokenizer(cfg.reference)
    out = {"data": eval_text(tok, cfg.data, cfg.split, cfg.max_eval_tokens)}
    if cfg.general_data:
        out["general"] = eval_text(tok, cfg.general_data, cfg.general_split,
                                   cfg.max_eval_tokens)
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
        mc_acc, mc_acc_norm when asked); with two models or more, ``kept_lost``: the
        last against the first, figure by figure (see ``evaluate.compare``).
    """
    if not models:
        raise SlmError("no model given", "name at least one model")
    check_models(models, cfg.engine)
    if cfg.task:
        resolve_tasks(cfg.task)
    cfg = resolved(cfg, models)
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
    out = {"models": rows, "config": cfg.model_dump()}
    if len(rows) > 1:                  # the last model against the first
        out["kept_lost"] = {"original": str(models[0]), "final": str(models[-1]),
                            "kept_lost": kept_lost(rows[0], rows[-1])}
    return out


def check_models(models: list, engine: str = "auto") -> None:
    """Raise SlmError for the first model spec that cannot be loaded, before any work."""
    for spec in models:
        s = str(spec)
        path = Path(s).expanduser()
        if s in CATALOG:
            builtin_gguf(s)                                   # weights on this machine
        elif path.suffix == ".gguf" or path.is_file():
            check_gguf(path)
        elif path.is_dir():
            check_hf_dir(path)
        elif s.count("/") == 1 and not s.startswith((".", "/", "~")):
            if not hub_cached(s):
                raise SlmError(f"model '{s}' is not in the local Hugging Face cache and slmkit "
                               "works offline", "pass a local directory or a built-in name")
        else:
            raise SlmError(f"model '{s}' not found: no such file or directory, and not a "
                           "built-in name", f"use a path or one of: {', '.join(CATALOG)}")
        if engine == "llama.cpp" and s not in CATALOG and path.suffix != ".gguf":
            raise SlmError(f"the llama.cpp engine needs a .gguf file, not '{s}'",
                           "export it first (`slm export MODEL --format gguf`) or use "
                           "--engine pytorch")


def _announcer(enabled: bool):
    """Plain progress lines on stderr (one per model; isolated children draw no bars)."""
    if not enabled:
        return lambda _msg: None
    from rich.console import Console
    console = Console(stderr=True, highlight=False)
    return lambda msg: console.print(msg)

"""``PruneConfig`` and ``run_prune``: the prune step as the CLI and recipes call it."""
from __future__ import annotations

import json
import os
import time
from functools import partial
from pathlib import Path
from typing import Callable, Literal

import torch
from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from ... import units
from ...data import load_split, record_text
from ...device import Device, model_device
from ...errors import OptionError, SlmError, spell
from ...models.arch import decoder_layers, linear_layers
from ...models.io import SLM, _unique, count_params, dir_bytes
from ...outputs import refuse_existing
from ...step import open_input, write_outputs
from . import depth, magnitude, sparsegpt, vocab, wanda, width
from .calib import calib_blocks, check_calib
from .layerwise import layer_sparsity, prune_each, prune_layerwise
from .mask import parse_pattern
from .report import SPARSE_NOTE, heldout_perplexity, sparse_format_bytes, state_bytes

UNSTRUCTURED = ("magnitude", "wanda", "sparsegpt")
STRUCTURED = ("depth", "width")
VOCAB = "vocab"
Progress = Callable[[str, int, int], None]


class PruneConfig(BaseModel):
    """Options of one prune step (recipe step options are exactly these fields).

    Attributes:
        method: magnitude | wanda | sparsegpt (zero weights), depth | width (remove structure)
            or vocab (drop the embedding rows of tokens the domain does not use).
        sparsity: fraction of weights to zero in every Linear of every decoder layer, in (0, 1).
        pattern: N:M semi-structured sparsity, e.g. "2:4" (keep 2 of every 4 inputs).
        target: parameters to keep (depth/width). A fraction in (0, 1) is of the decoder
            layers' parameters, the part depth and width pruning remove (0.6: the layers keep
            60%; the embedding and output head stay as they are, see the vocab method); a
            count ("70M", 70000000) is of the whole model, embedding and head included.
        calib: calibration data (built-in corpus, file or directory); its train split is used.
        nsamples: calibration sequences (128 in the Wanda and SparseGPT papers).
        seqlen: tokens per calibration sequence.
        batch_size: sequences per forward pass while calibrating.
        blocksize: SparseGPT columns per lazy-update block.
        damp: SparseGPT Hessian dampening, as a fraction of its mean diagonal.
        iterative: depth: re-measure layer influence after each removal.
        sequential: Wanda/SparseGPT: inside each layer too, prune the Linears in the order
            they run, each from inputs through the already-pruned ones (a calibration pass
            per group of Linears sharing an input, instead of one per layer).
        vocab_size: vocab: tokens to keep at most (base and special tokens, then domain
            tokens by frequency, then the most general ones); unset: every domain token.
        min_count: vocab: occurrences in the calibration data that make a domain token.
        calib_autocast: Wanda/SparseGPT: run calibration forward passes in bf16 autocast
            (about 2x faster on CPU; statistics stay float32).
        eval_data: held-out text for perplexity (its val split); default: ``calib``.
        eval_tokens: tokens of held-out text scored before and after (as `slm eval` does:
            window 512, stride 256); 0 skips perplexity.
        overwrite: replace an existing output directory.
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    device: Device = "auto"                # where PyTorch runs (slmkit.device)
    method: Literal["magnitude", "wanda", "sparsegpt", "depth", "width", "vocab"] = "sparsegpt"
    sparsity: float | None = None
    pattern: str | None = None
    target: float | int | str | None = None
    calib: str = "python-docs"
    nsamples: int = 128
    seqlen: int = 512
    batch_size: int = 8
    blocksize: int = 128
    damp: float = 0.01
    iterative: bool = False
    sequential: bool = False
    vocab_size: int | None = None
    min_count: int = 1
    calib_autocast: bool = False
    eval_data: str | None = None
    eval_tokens: int = 8192
    overwrite: bool = False

    @field_validator("sparsity", mode="before")
    @classmethod
    def _sparsity(cls, v):
        return None if v is None else units.fraction(v)

    @field_validator("target", mode="before")
    @classmethod
    def _target(cls, v):
        return None if v is None else units.fraction_or_count(v)

    @field_validator("damp", "eval_tokens")
    @classmethod
    def _not_negative(cls, v):
        units.non_negative(v)
        return v

    @field_validator("pattern")
    @classmethod
    def _pattern(cls, v):
        try:
            parse_pattern(v)
        except SlmError as exc:
            raise ValueError(exc.one_line()) from None
        return v or None

    @field_validator("nsamples", "seqlen", "batch_size", "blocksize", "min_count")
    @classmethod
    def _positive(cls, v):
        if v < 1:
            raise ValueError(f"must be at least 1, got {v}")
        return v

    @model_validator(mode="after")
    def _method_options(self):
        m = self.method
        if m in UNSTRUCTURED:
            if self.target is not None:
                raise OptionError("target", f"{{target}} is for depth/width; {m} takes "
                                  "{sparsity} or {pattern}")
            nm = parse_pattern(self.pattern)
            if nm is None and self.sparsity is None:
                raise OptionError("sparsity", f"{m} needs {{sparsity}} (e.g. 0.5) or {{pattern}} "
                                  "(e.g. 2:4)")
            if nm and self.sparsity is not None and abs(self.sparsity - (1 - nm[0] / nm[1])) > 1e-9:
                raise OptionError("sparsity", f"{{sparsity}} {self.sparsity} contradicts "
                                  f"{{pattern}} {self.pattern} (which means "
                                  f"{1 - nm[0] / nm[1]:g}); give only one")
        elif m == VOCAB:
            for name in ("target", "sparsity", "pattern"):
                if getattr(self, name) is not None:
                    raise OptionError(name, "vocab takes {vocab_size} (tokens to keep), not "
                                      f"{{{name}}}")
            if self.vocab_size is not None and self.vocab_size < 2:
                raise OptionError("vocab_size", f"{{vocab_size}} must be at least 2, got "
                                  f"{self.vocab_size}")
        else:
            if self.target is None:
                raise OptionError("target", f"{m} needs {{target}}: a fraction of parameters to "
                                  "keep (e.g. 0.7) or a count (e.g. 90M)")
            for name in ("sparsity", "pattern"):
                if getattr(self, name) is not None:
                    raise OptionError(name, f"{m} takes {{target}}, not {{{name}}}")
        return self

    @property
    def nm(self) -> tuple[int, int] | None:
        return parse_pattern(self.pattern)

    @property
    def effective_sparsity(self) -> float:
        return 1 - self.nm[0] / self.nm[1] if self.nm else float(self.sparsity)


def decoder_params(model: torch.nn.Module) -> int:
    """Parameters of the decoder layers (what depth and width pruning can remove)."""
    return sum(p.numel() for p in _unique(decoder_layers(model).parameters()))


def target_params(target, model: torch.nn.Module) -> int:
    """The whole model's parameter budget for a depth/width ``target``.

    A fraction applies to the decoder layers only: on a big-vocabulary model (Gemma 3
    270M: the embedding is 168M of 268M) a fraction of the whole would cut the layers far
    more than the number says. A count is the whole model's.
    """
    total = count_params(model)
    if _is_fraction(target):
        layers = decoder_params(model)
        return total - layers + parse_target(target, layers)
    return parse_target(target, total)


def _is_fraction(target) -> bool:
    try:
        value = units.fraction_or_count(target)
    except ValueError:
        return False
    return isinstance(value, float) and 0 < value < 1


def parse_target(target, params: int) -> int:
    """Parameter budget from a fraction (0, 1) of ``params`` or a count (int, "70M", "1.2B",
    "5e7")."""
    try:
        value = units.fraction_or_count(target)
    except ValueError as exc:
        raise SlmError(f"{spell('target')}: {exc}", "write e.g. 0.7 or 90M") from None
    n = int(value * params) if isinstance(value, float) else value
    if n >= params:
        raise SlmError(f"{spell('target')} {target} ({n:,} parameters) is not smaller than "
                       f"the model ({params:,})", "give a fraction below 1 or a smaller count")
    return n


def check_pattern_fits(model, nm) -> None:
    """SlmError naming the first Linear whose input size M does not divide."""
    if not nm:
        return
    for i, layer in enumerate(decoder_layers(model)):
        for name, m in linear_layers(layer).items():
            if m.in_features % nm[1]:
                raise SlmError(f"N:M pattern {nm[0]}:{nm[1]} does not divide layer {i} {name} "
                               f"({m.in_features} inputs)", f"use an M that divides "
                               f"{m.in_features}")


def check_feasible(slm: SLM, cfg: PruneConfig) -> None:
    """Raise SlmError if the target or vocabulary size cannot be reached on this model (no
    calibration needed: it depends on shapes and the tokenizer only)."""
    model = slm.model
    if cfg.method in STRUCTURED:
        target = target_params(cfg.target, model)
        if cfg.method == "depth":
            depth.layers_for_target(model, target)
        else:
            width.plan_sizes(model, target, width.heads_prunable(model))
    elif cfg.method == VOCAB and cfg.vocab_size is not None:
        n_vocab, name = model.config.vocab_size, spell("vocab_size")
        if cfg.vocab_size >= n_vocab:
            raise SlmError(f"{name} {cfg.vocab_size} is not smaller than the model's "
                           f"vocabulary ({n_vocab})", f"give a smaller {name}")
        least = len(vocab.base_tokens(vocab.tokenizer_json(slm.tokenizer)))
        if cfg.vocab_size < least:
            raise SlmError(f"{name} {cfg.vocab_size} is below the {least} base and special "
                           "tokens every text needs", f"give at least {least}")


def _bytes_before(slm: SLM) -> int:
    if slm.path is not None and Path(slm.path).is_dir():
        return dir_bytes(slm.path)
    return state_bytes(slm.model)


def _ppl(slm: SLM, model, cfg: PruneConfig, reference=None) -> float | None:
    if cfg.eval_tokens <= 0:
        return None
    return heldout_perplexity(SLM(model, slm.tokenizer, slm.spec), cfg.eval_data or cfg.calib,
                              cfg.eval_tokens, reference=reference)


def prune_model(model: torch.nn.Module, ids: torch.Tensor | None, cfg: PruneConfig,
                progress: Progress | None = None) -> tuple[torch.nn.Module, dict]:
    """Apply ``cfg.method`` to ``model``; returns the pruned model and what changed.

    Unstructured methods prune ``model`` in place; depth/width return a new model.
    """
    tick = (lambda d, t: progress("prune", d, t)) if progress else None
    if cfg.method in STRUCTURED:
        target = target_params(cfg.target, model)
        if cfg.method == "depth":
            return depth.prune(model, ids, target, iterative=cfg.iterative,
                               batch_size=cfg.batch_size, progress=tick)
        return width.prune(model, ids, target, batch_size=cfg.batch_size)
    opts = dict(sparsity=cfg.effective_sparsity, pattern=cfg.nm)
    if cfg.method == "magnitude":
        prune_each(model, partial(magnitude.prune_linear, **opts), tick)
    elif cfg.method == "wanda":
        prune_layerwise(model, ids, partial(wanda.prune_linear, **opts),
                        batch_size=cfg.batch_size, autocast=cfg.calib_autocast,
                        sequential=cfg.sequential, progress=tick)
    else:
        fn = partial(sparsegpt.prune_linear, blocksize=cfg.blocksize, damp=cfg.damp, **opts)
        prune_layerwise(model, ids, fn, hessian=True, batch_size=cfg.batch_size,
                        autocast=cfg.calib_autocast, sequential=cfg.sequential, progress=tick)
    return model, {}


def run_prune(model, out: str | os.PathLike, cfg: PruneConfig,
              progress: Progress | None = None) -> dict:
    """Prune ``model`` and save the result to ``out`` with ``report.json``; returns the report.

    Args:
        model: a spec ``slmkit.load`` accepts, or an SLM (copied, not modified).
        out: output directory; written complete or not at all.
        cfg: the prune options.
        progress: optional ``progress(stage, done, total)`` callback.

    Raises:
        SlmError: bad options, a pattern that does not fit, a target not below the model
            size, or calibration data shorter than one sequence. Nothing is written then.
    """
    t_start = time.perf_counter()
    out = Path(out)
    refuse_existing(out, cfg.overwrite)
    slm = open_input(model, cfg.device)
    torch_model = slm.model.eval()
    check_pattern_fits(torch_model, cfg.nm)
    params_before = count_params(torch_model)
    check_feasible(slm, cfg)                               # fail before any slow work
    target = target_params(cfg.target, torch_model) if cfg.method in STRUCTURED else None
    if cfg.method == VOCAB:
        return _run_vocab(slm, out, cfg, t_start)
    ids = None
    if cfg.method != "magnitude":
        ids = calib_blocks(cfg.calib, slm.tokenizer, cfg.seqlen, cfg.nsamples)
        check_calib(ids, cfg.seqlen)
        ids = ids.to(model_device(torch_model))
    ppl_before = _ppl(slm, torch_model, cfg)
    t0 = time.perf_counter()
    pruned, structure = prune_model(torch_model, ids, cfg, progress)
    prune_time = time.perf_counter() - t0
    ppl_after = _ppl(slm, pruned, cfg)
    report = {
        "method": cfg.method, "config": cfg.model_dump(), "source": str(slm.spec),
        "params_before": params_before, "params_after": count_params(pruned),
        "bytes_before": _bytes_before(slm), "bytes_after": None,
        "ppl_before": ppl_before, "ppl_after": ppl_after, "eval_tokens": cfg.eval_tokens,
        "calib_tokens": 0 if ids is None else int(ids.numel()),
        "prune_time_s": prune_time, "structure": structure,
    }
    if target is not None:
        report.update(target_params=target, decoder_params=[decoder_params(torch_model),
                                                            decoder_params(pruned)])
    if cfg.method in UNSTRUCTURED:
        sp = layer_sparsity(pruned)
        report.update(layer_sparsity=sp, sparse_format_bytes=sparse_format_bytes(pruned, cfg.nm),
                      sparsity=sum(r["sparsity"] for r in sp) / len(sp), note=SPARSE_NOTE)
    _write(SLM(pruned, slm.tokenizer, slm.spec, slm.meta, slm.path), out, cfg, report, t_start)
    return report


def _run_vocab(slm: SLM, out: Path, cfg: PruneConfig, t_start: float) -> dict:
    """The vocab method: trim embedding and tokenizer to the calibration data's tokens.

    Perplexity before and after is per token of the original tokenizer on the same
    characters (the trimmed tokenizer splits dropped tokens into pieces).
    """
    texts = [record_text(r) for r in load_split(cfg.calib, "train")]
    params_before = count_params(slm.model)
    ref_tok = slm.tokenizer
    ppl_before = _ppl(slm, slm.model, cfg, ref_tok)
    t0 = time.perf_counter()
    model, tok, info = vocab.prune(slm.model, slm.tokenizer, texts, vocab_size=cfg.vocab_size,
                                   min_count=cfg.min_count)
    prune_time = time.perf_counter() - t0
    trimmed = SLM(model, tok, slm.spec, slm.meta, slm.path)
    ppl_after = _ppl(trimmed, model, cfg, ref_tok)
    kept, calib_tokens = info.pop("kept_ids"), info.pop("calib_tokens")
    report = {
        "method": cfg.method, "config": cfg.model_dump(), "source": str(slm.spec),
        "params_before": params_before, "params_after": count_params(model),
        "bytes_before": _bytes_before(slm), "bytes_after": None,
        "ppl_before": ppl_before, "ppl_after": ppl_after, "eval_tokens": cfg.eval_tokens,
        "ppl_per": "token of the original tokenizer",
        "calib_tokens": calib_tokens,
        "prune_time_s": prune_time, "structure": info,
    }
    _write(trimmed, out, cfg, report, t_start, extra={"kept_ids.json": json.dumps(kept)})
    return report


def _write(slm: SLM, out: Path, cfg: PruneConfig, report: dict, t_start: float,
           extra: dict[str, str] | None = None) -> None:
    """Model, report.json and ``extra`` files into ``out``, atomically."""
    def sizes(tmp: Path) -> None:
        report["bytes_after"] = dir_bytes(tmp)
        report["total_time_s"] = time.perf_counter() - t_start
    write_outputs(slm, out, step="prune", config=cfg.model_dump(), report=report,
                  history={k: v for k, v in report.items()
                           if k not in ("layer_sparsity", "config")},
                  overwrite=cfg.overwrite, files=extra, before_report=sizes)

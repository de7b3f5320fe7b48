"""Perplexity of a token stream, in the two conventions the field uses.

``hf`` (the default) is the Hugging Face perplexity guide's sliding window:
windows of ``max_length`` tokens start at 0, ``stride``, ``2 * stride``, ...;
each scores the tokens after the previous window's end, with the rest of the
window as context (labels -100 on the overlap). With ``stride < max_length``
every token but the first is scored once, each with at least ``max_length -
stride`` tokens of context; ``stride == max_length`` gives disjoint windows
(fast, pessimistic) whose first tokens are context only, as in the guide's loop.

``llama.cpp`` is what llama.cpp's ``perplexity`` tool computes with ``-c
max_length``: the stream is cut into whole chunks of ``max_length`` tokens (the
rest is dropped), the first token of each chunk is replaced by BOS when the
tokenizer adds one, and only the second half of each chunk is scored (positions
``max_length // 2 + 1`` to ``max_length - 1``), so every scored token has at
least half a window of context. ``stride`` plays no part.

Both engines give logits for a window (``Engine.logits``), so the same code
scores PyTorch and llama.cpp models. Bits per byte divides the summed negative
log-likelihood (in bits) by the UTF-8 bytes of the scored tokens' text, which
does not depend on the tokenizer: models with different vocabularies compare.

This is the one perplexity of slmkit: ``slm eval`` and every step's before/after
figures (quantize, prune, finetune, distill, export parity) score through it.
A step scores its model in memory with :func:`model_engine` on the tokens
:func:`engine_tokens` (or :func:`record_ids`) gives, which is what ``slm eval
--data D --split val --max-length L --stride S --max-eval-tokens N`` computes.
"""
from __future__ import annotations

import math

import torch

from ..data import load_split, record_text
from ..engines.hf import HFEngine
from ..errors import SlmError
from ..models.io import SLM
from ..progress import progress_bar

CONVENTIONS = ("hf", "llama.cpp")


def perplexity(engine, ids: list[int], max_length: int = 512, stride: int = 256,
               progress: bool = True, convention: str = "hf") -> dict:
    """Perplexity of ``engine`` on the token sequence ``ids``.

    Args:
        engine: an ``Engine`` (``logits(ids) -> (T, vocab)``, ``detokenize``).
        ids: the token ids of the evaluation text.
        max_length: window length (capped at the engine's context length).
        stride: how far each window moves (``hf``); ``<= max_length``.
        convention: ``hf`` or ``llama.cpp`` (see the module docstring).

    Returns:
        ``{"ppl", "nll", "tokens", "bytes", "bits_per_byte", "max_length", "stride",
        "convention"}``: mean negative log-likelihood per scored token (nats), its
        exponential, and bits per UTF-8 byte of the scored text.
    """
    if convention not in CONVENTIONS:
        raise SlmError(f"unknown perplexity convention '{convention}'",
                       f"use one of: {', '.join(CONVENTIONS)}")
    max_length = min(max_length, engine.context_length)
    if not 0 < stride <= max_length:
        raise SlmError(f"stride {stride} must be in (0, max_length={max_length}]")
    if len(ids) < 2:
        raise SlmError("evaluation text has fewer than 2 tokens", "give it more text")
    if convention == "llama.cpp":
        if len(ids) < 2 * max_length:
            raise SlmError(f"llama.cpp's convention needs at least 2 x {max_length} tokens, "
                           f"the text has {len(ids)}", "give it more text or a smaller window")
        plan = _llamacpp_windows(len(ids), max_length)
        stride = max_length
    else:
        plan = _hf_windows(len(ids), max_length, stride)
    bos = _bos_id(engine) if convention == "llama.cpp" else None
    nll_sum, count, n_bytes = 0.0, 0, 0
    with progress_bar("perplexity", total=len(plan), enabled=progress) as bar:
        for begin, end, first in plan:
            window = list(ids[begin:end])
            if bos is not None:
                window[0] = bos
            nll_sum += _window_nll(engine, window, first - begin)
            count += end - first
            n_bytes += _span_bytes(engine, ids, first, end)
            bar.advance()
    nll = nll_sum / count
    return {"ppl": math.exp(nll), "nll": nll, "tokens": count, "bytes": n_bytes,
            "bits_per_byte": nll_sum / math.log(2) / max(n_bytes, 1),
            "max_length": max_length, "stride": stride, "convention": convention}


def model_engine(model, tokenizer) -> HFEngine:
    """The PyTorch engine over an in-memory ``model`` (left in eval mode; a training
    loop puts it back in training mode)."""
    return HFEngine(SLM(model, tokenizer, "in-memory"))


def record_ids(engine, records, limit: int | None) -> list[int]:
    """Token ids of ``records`` through the engine's own tokenizer, EOS between records,
    the first ``limit`` of them."""
    eos = min(engine.eos_ids) if engine.eos_ids else None
    ids: list[int] = []
    for rec in records:
        ids += engine.tokenize(record_text(rec), special=False) + ([eos] if eos is not None else [])
        if limit and len(ids) > limit:
            break
    return ids[:limit] if limit else ids


def engine_tokens(engine, spec, split: str, limit: int | None) -> list[int]:
    """Token ids of a corpus split through the engine's own tokenizer, EOS between records."""
    return record_ids(engine, load_split(spec, split), limit)


def heldout_perplexity(model, tokenizer, data, max_tokens: int | None, max_length: int = 512,
                       stride: int = 256, split: str = "val") -> dict:
    """:func:`perplexity` of an in-memory model on ``split`` of ``data``, exactly as
    ``slm eval`` scores it; the result also names ``data`` and ``split``."""
    was = model.training
    try:
        engine = model_engine(model, tokenizer)
        ids = engine_tokens(engine, data, split, max_tokens)
        r = perplexity(engine, ids, max_length, stride, progress=False)
    finally:
        model.train(was)
    return {**r, "data": str(data), "split": split}


def step_window(seq_len: int) -> tuple[int, int]:
    """The ``(max_length, stride)`` a step scores with: its own block length, moving by
    half of it (512 and 256, ``slm eval``'s defaults, for the usual 512)."""
    return seq_len, max(1, seq_len // 2)


def _hf_windows(n: int, max_length: int, stride: int) -> list[tuple[int, int, int]]:
    """``(begin, end, first scored)`` of each window, as the HF guide's loop makes them."""
    plan, prev_end = [], 0
    for begin in range(0, n, stride):
        end = min(begin + max_length, n)
        first = max(prev_end, begin + 1)          # a window's first token has no context
        if end > first:
            plan.append((begin, end, first))
        prev_end = end
        if end == n:
            break
    return plan


def _llamacpp_windows(n: int, n_ctx: int) -> list[tuple[int, int, int]]:
    """Whole chunks of ``n_ctx``; the tokens after the first half are scored."""
    return [(i * n_ctx, (i + 1) * n_ctx, i * n_ctx + n_ctx // 2 + 1) for i in range(n // n_ctx)]


def _window_nll(engine, window: list[int], first: int) -> float:
    """Summed NLL (nats) of ``window[first:]``, each predicted from the tokens before it."""
    return logits_nll(engine.logits(window), window, first)


def logits_nll(logits: torch.Tensor, window: list[int], first: int = 1) -> float:
    """Summed NLL (nats) of ``window[first:]`` under the (T, vocab) ``logits`` of ``window``
    (row j predicts token j + 1)."""
    logp = torch.log_softmax(logits[first - 1:-1].double(), dim=-1)  # row j predicts j+1
    targets = torch.tensor(window[first:])
    return -float(logp.gather(1, targets[:, None]).sum())


def _span_bytes(engine, ids: list[int], a: int, b: int, lead: int = 8) -> int:
    """UTF-8 bytes of the text of ``ids[a:b]``: the difference of two decodes that share
    ``lead`` tokens of left context (so word-initial spaces and split characters count
    where the tokenizer puts them)."""
    lo = max(0, a - lead)
    return (len(engine.detokenize(ids[lo:b]).encode()) -
            len(engine.detokenize(ids[lo:a]).encode()))


def _bos_id(engine) -> int | None:
    """The BOS the engine's tokenizer puts before text, or None when it adds none."""
    with_special, plain = engine.tokenize("a", special=True), engine.tokenize("a", special=False)
    return with_special[0] if len(with_special) > len(plain) else None

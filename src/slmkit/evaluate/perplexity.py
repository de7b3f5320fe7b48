"""Perplexity with a sliding window, as in the Hugging Face perplexity guide.

Windows of ``max_length`` tokens move by ``stride``; each window scores only
the tokens not scored by the previous one, with the rest of the window as
context. ``stride == max_length`` gives disjoint chunks (fast, pessimistic);
a smaller stride gives every scored token more context.
"""
from __future__ import annotations

import math

import torch

from ..errors import SlmError
from ..progress import progress_bar


def perplexity(engine, ids: list[int], max_length: int = 512, stride: int = 256,
               progress: bool = True) -> dict:
    """Perplexity of ``engine`` on the token sequence ``ids``.

    Args:
        engine: an ``Engine`` (``logits(ids) -> (T, vocab)``).
        ids: the token ids of the evaluation text.
        max_length: window length (capped at the engine's context length).
        stride: how far each window moves; ``<= max_length``.

    Returns:
        ``{"ppl", "nll", "tokens", "max_length", "stride"}``: mean negative
        log-likelihood per scored token and its exponential.
    """
    max_length = min(max_length, engine.context_length)
    if not 0 < stride <= max_length:
        raise SlmError(f"stride {stride} must be in (0, max_length={max_length}]")
    if len(ids) < 2:
        raise SlmError("evaluation text has fewer than 2 tokens", "give it more text")
    step = min(stride, max_length - 1)        # a window's first token only gives context
    nll_sum, count, scored_to = 0.0, 0, 1     # token 0 has nothing to predict it
    with progress_bar("perplexity", total=math.ceil((len(ids) - 1) / step),
                      enabled=progress) as bar:
        while scored_to < len(ids):
            end = min(scored_to + step, len(ids))
            begin = max(end - max_length, 0)
            window = ids[begin:end]
            logits = engine.logits(window)                         # (T, vocab)
            logp = torch.log_softmax(logits[:-1].float(), dim=-1)  # row j predicts window[j+1]
            first = scored_to - begin                              # first new target, >= 1
            targets = torch.tensor(window[first:])
            nll_sum -= logp[first - 1:].gather(1, targets[:, None]).sum().item()
            count += len(targets)
            scored_to = end
            bar.advance()
    nll = nll_sum / count
    return {"ppl": math.exp(nll), "nll": nll, "tokens": count,
            "max_length": max_length, "stride": step}

"""Log-likelihood of continuations after a context, as lm-evaluation-harness computes it.

A request is ``(context, continuation)``. As in lm-eval v0.4 (``_encode_pair``),
trailing spaces of the context move to the continuation, the context is
tokenized on its own (with the tokenizer's default special tokens), and the
continuation's tokens are those of ``context + continuation`` past the context's
token count. The score is the summed log-probability of the continuation tokens.

All requests of one question are scored together: the longest token prefix they
share (the question, for most tasks) runs through the model once and each
request's remaining tokens continue from it (``engine.score_suffixes``: KV-cache
reuse on llama.cpp, one batch of continuations on PyTorch). ``naive=True`` runs
each request on its own instead, which is the reference the fast path is tested
and benchmarked against.
"""
from __future__ import annotations

from ..engines.base import token_logprobs
from ..errors import SlmError


def encode_pair(engine, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) of one request, split as lm-eval splits them."""
    n = len(context) - len(context.rstrip())
    if n:
        context, continuation = context[:-n], context[-n:] + continuation
    ctx = engine.tokenize(context) if context else []
    if not ctx:                      # lm-eval scores an empty context after a BOS/EOS token
        ctx = [min(engine.eos_ids)]
    whole = engine.tokenize(context + continuation)
    return ctx, whole[len(ctx):]


def _fit(engine, ctx: list[int], cont: list[int]) -> list[int]:
    """``ctx + cont`` left-truncated to the model's window (lm-eval does the same)."""
    if len(cont) >= engine.context_length:
        raise SlmError(f"a continuation of {len(cont)} tokens does not fit the model's "
                       f"{engine.context_length}-token window", "use fewer few-shot examples "
                       "or a shorter task")
    return (ctx + cont)[-engine.context_length:]


def score_requests(engine, requests: list[tuple[str, str]], naive: bool = False) -> list[float]:
    """Summed log-probability of each request's continuation.

    Args:
        engine: an engine (``slmkit.engines``); ``score_suffixes`` is used when it has one.
        requests: ``(context, continuation)`` pairs of one question.
        naive: score each request with its own forward pass (no shared prefix).
    """
    pairs = [encode_pair(engine, c, x) for c, x in requests]
    fulls = [_fit(engine, c, x) for c, x in pairs]
    n_cont = [len(x) for _, x in pairs]
    if naive or not hasattr(engine, "score_suffixes"):
        return [float(token_logprobs(engine.logits(f)[-n - 1:-1], f[-n:]).sum())
                for f, n in zip(fulls, n_cont)]
    # shared prefix: every position before the first continuation token of any request
    p = min(len(f) - n for f, n in zip(fulls, n_cont))
    first = fulls[0]
    for f in fulls[1:]:
        k = 0
        while k < p and f[k] == first[k]:
            k += 1
        p = k
    if p == 0:
        return score_requests(engine, requests, naive=True)
    lps = engine.score_suffixes(first[:p], [f[p:] for f in fulls])
    return [float(lp[-n:].sum()) for lp, n in zip(lps, n_cont)]

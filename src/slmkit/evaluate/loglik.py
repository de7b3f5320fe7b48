"""Log-likelihood of continuations after a context, as lm-evaluation-harness computes it.

A request is ``(context, continuation)``. As in lm-eval v0.4 (``_encode_pair``),
trailing spaces of the context move to the continuation, the context is
tokenized on its own (with the tokenizer's default special tokens), and the
continuation's tokens are those of ``context + continuation`` past the context's
token count. The score is the summed log-probability of the continuation tokens.

All requests of one question are scored together: the longest token prefix they
share (the question, for most tasks) runs through the model once and each
request's remaining tokens continue from it (``engine.score_suffixes``: KV-cache
reuse on llama.cpp, one batch of continuations on PyTorch). On llama.cpp several
questions go into one decode call, each choice a KV-cache sequence of its own
that shares its question's prefix cells (``engine.score_many``). ``naive=True``
runs each request on its own instead, which is the reference the fast paths are
tested and benchmarked against.
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


def _encode(engine, requests: list[tuple[str, str]]) -> tuple[list[list[int]], list[int]]:
    """Each request's tokens (context + continuation, fitted) and continuation length."""
    pairs = [encode_pair(engine, c, x) for c, x in requests]
    return [_fit(engine, c, x) for c, x in pairs], [len(x) for _, x in pairs]


def _items(engine, requests: list[tuple[str, str]]) -> tuple[list, list[int]]:
    """One question's requests as ``(prefix, suffixes)`` items, and their continuation
    lengths. The requests share one item when their tokens share a prefix (the
    question); otherwise each request is an item of its own.
    """
    fulls, n_cont = _encode(engine, requests)
    # shared prefix: every position before the first continuation token of any request
    p = min(len(f) - n for f, n in zip(fulls, n_cont))
    first = fulls[0]
    for f in fulls[1:]:
        k = 0
        while k < p and f[k] == first[k]:
            k += 1
        p = k
    if p == 0:
        return [(f[:-n], [f[-n:]]) for f, n in zip(fulls, n_cont)], n_cont
    return [(first[:p], [f[p:] for f in fulls])], n_cont


def score_questions(engine, questions: list[list[tuple[str, str]]], naive: bool = False,
                    batch: bool = False) -> list[list[float]]:
    """Summed log-probability of each request's continuation, question by question.

    Args:
        engine: an engine (``slmkit.engines``). With ``score_many`` (llama.cpp) the
            questions are packed several to a decode call; with ``score_suffixes``
            each question's prompt runs once; otherwise one pass per request.
        questions: per question, its ``(context, continuation)`` requests.
        naive: score each request with its own forward pass (no shared prefix).
        batch: pack several questions into one call where the engine can
            (``score_many``); off by default: on SmolLM2-135M Q4_1 the scores of several
            sequences in one llama.cpp call differ from one sequence at a time by up to
            1 nat (exact on the tiny f32 test model). ``False``: one question at a time,
            its prompt still shared.
    """
    if naive or not hasattr(engine, "score_suffixes"):
        out = []
        for requests in questions:
            fulls, n_cont = _encode(engine, requests)
            out.append([float(token_logprobs(engine.logits(f)[-n - 1:-1], f[-n:]).sum())
                        for f, n in zip(fulls, n_cont)])
        return out
    prepared = [_items(engine, r) for r in questions]
    flat = [item for items, _ in prepared for item in items]
    if batch and hasattr(engine, "score_many"):
        scored = engine.score_many(flat)
    else:
        scored = [engine.score_suffixes(*item) for item in flat]
    out, at = [], 0
    for items, n_cont in prepared:
        mine = scored[at:at + len(items)]
        at += len(items)
        per_request = [lp for lps in mine for lp in lps]       # in request order
        out.append([float(lp[-n:].sum()) for lp, n in zip(per_request, n_cont)])
    return out


def score_requests(engine, requests: list[tuple[str, str]], naive: bool = False) -> list[float]:
    """Summed log-probability of each request's continuation (one question's requests;
    see :func:`score_questions`)."""
    return score_questions(engine, [requests], naive=naive)[0]

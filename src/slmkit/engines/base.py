"""What every inference engine offers, and the text streaming they share."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterator, Protocol

import torch

from ..errors import SlmError


@dataclass
class GenStats:
    """Filled in while a stream runs."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "length"
    ttft_s: float = 0.0          # time to first token (prefill + first sample)
    decode_s: float = 0.0        # time for the remaining tokens
    token_ids: list[int] = field(default_factory=list)


class Engine(Protocol):
    """A loaded model that can tokenize, score and generate."""

    name: str
    context_length: int
    eos_ids: set[int]

    def tokenize(self, text: str, special: bool = True) -> list[int]: ...
    def detokenize(self, ids: list[int]) -> str: ...
    def chat_prompt(self, messages: list[dict]) -> str: ...
    def logits(self, ids: list[int]) -> torch.Tensor: ...           # (T, vocab) float32
    def score_suffixes(self, prefix: list[int],
                       suffixes: list[list[int]]) -> list[torch.Tensor]: ...
    def reset_cache(self) -> None: ...        # the next generation reuses no cached prompt
    def token_ids(self, prompt_ids: list[int], max_tokens: int, temperature: float,
                  top_p: float, seed: int | None, stats: GenStats,
                  ignore_eos: bool = False) -> Iterator[int]: ...


def token_logprobs(logits: torch.Tensor, targets: list[int]) -> torch.Tensor:
    """log p(targets[i] | logits[i]): (T, vocab) and T ids -> (T,)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return logp.gather(1, torch.tensor(targets)[:, None])[:, 0]


def track(tokens: Iterator[int], stats: GenStats, eos_ids: set[int], max_tokens: int,
          ignore_eos: bool = False) -> Iterator[int]:
    """Pass an engine's raw token stream through, timing it and stopping at EOS/max_tokens.

    The clock starts at the first request for a token, so ``ttft_s`` includes
    the prompt's prefill; ``decode_s`` covers the tokens after the first.
    """
    t0 = time.perf_counter()
    t_first = t0
    try:
        for i, tok in enumerate(tokens):
            now = time.perf_counter()
            if i == 0:
                stats.ttft_s, t_first = now - t0, now
            stats.completion_tokens += 1
            stats.token_ids.append(tok)
            stats.decode_s = now - t_first
            if tok in eos_ids and not ignore_eos:
                stats.finish_reason = "stop"
                return
            yield tok
            if i + 1 >= max_tokens:
                return
    finally:
        close = getattr(tokens, "close", None)
        if close:
            close()


def stream_text(engine: Engine, prompt: str | list[int], *, max_tokens: int = 256,
                temperature: float = 0.7, top_p: float = 0.95, seed: int | None = None,
                stop: list[str] | tuple[str, ...] = (), ignore_eos: bool = False,
                stats: GenStats | None = None) -> Iterator[str]:
    """Generate text, yielding it piece by piece as tokens arrive.

    Stop strings end the stream and are not returned; text that might be the
    start of a stop string is held back until it is known not to be. The reply
    ends where the context does (``finish_reason`` "length"); a prompt that
    fills the context is refused before any work.
    """
    stats = stats if stats is not None else GenStats()
    ids = engine.tokenize(prompt) if isinstance(prompt, str) else list(prompt)
    if not ids:
        ids = engine.tokenize(" ")
    check_prompt_fits(len(ids), engine.context_length)
    max_tokens = min(max_tokens, engine.context_length - len(ids))
    stats.prompt_tokens = len(ids)
    text = TextStream(engine.detokenize, stop)
    for tok in engine.token_ids(ids, max_tokens, temperature, top_p, seed, stats, ignore_eos):
        piece = text.push(tok)
        if piece:
            yield piece
        if text.stopped:
            stats.finish_reason = "stop"
            return
    piece = text.flush()
    if piece:
        yield piece


class TextStream:
    """Turns generated tokens into text pieces one token at a time, honouring stop strings.

    ``push(tok)`` returns the text that is safe to send now: an incomplete
    UTF-8 sequence, or a tail that might start a stop string, is held back.
    Once a stop string appears, ``stopped`` is set and the text before it is
    the last piece. ``flush()`` returns whatever was held back at the end.
    """

    def __init__(self, detokenize, stop=()):
        self.detokenize = detokenize
        self.stop = [s for s in stop if s]
        self.ids: list[int] = []
        self.emitted = ""
        self.stopped = False

    def push(self, tok: int) -> str:
        self.ids.append(tok)
        text = self.detokenize(self.ids)
        if text.endswith("\ufffd"):          # an incomplete UTF-8 sequence: wait
            return ""
        cut = _find_stop(text, self.stop)
        if cut is not None:
            self.stopped = True
            return self._advance(text[:cut])
        return self._advance(text[:len(text) - _partial_stop(text, self.stop)])

    def flush(self) -> str:
        return "" if self.stopped else self._advance(self.detokenize(self.ids))

    def _advance(self, upto: str) -> str:
        if len(upto) <= len(self.emitted):
            return ""
        piece, self.emitted = upto[len(self.emitted):], upto
        return piece


class PromptTooLong(SlmError):
    """The prompt leaves no room in the context for even one generated token."""


def check_prompt_fits(n_prompt: int, context: int) -> None:
    """Raise :class:`PromptTooLong` unless a prompt of ``n_prompt`` tokens leaves room
    for at least one token in a ``context``-token window."""
    if n_prompt >= context:
        raise PromptTooLong(f"the prompt is {n_prompt} tokens and the context holds {context}",
                            "shorten the prompt or raise --ctx")


def _find_stop(text: str, stop) -> int | None:
    hits = [i for i in (text.find(s) for s in stop if s) if i >= 0]
    return min(hits) if hits else None


def _partial_stop(text: str, stop) -> int:
    """Length of the longest suffix of ``text`` that is a prefix of a stop string."""
    best = 0
    for s in stop:
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                best = max(best, k)
                break
    return best


def sample(logits: torch.Tensor, temperature: float, top_p: float,
           gen: torch.Generator | None) -> int:
    """Greedy when temperature is 0, else nucleus sampling (Holtzman et al. 2020)."""
    if temperature <= 0:
        return int(logits.argmax())
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, idx = probs.sort(descending=True)
        keep = sorted_p.cumsum(0) - sorted_p < top_p       # always keeps the top token
        sorted_p = sorted_p * keep
        return int(idx[torch.multinomial(sorted_p / sorted_p.sum(), 1, generator=gen)])
    return int(torch.multinomial(probs, 1, generator=gen))


def generate_text(engine: Engine, prompt: str | list[int], **kw) -> tuple[str, GenStats]:
    """The whole completion of :func:`stream_text` as one string, with its stats."""
    stats = GenStats()
    text = "".join(stream_text(engine, prompt, stats=stats, **kw))
    return text, stats

"""Prefill and decode speed, and time to first token, measured cold."""
from __future__ import annotations

from ..engines import GenStats


def measure_speed(engine, prompt_ids: list[int], gen_tokens: int = 64, repeats: int = 2) -> dict:
    """Greedy generation of exactly ``gen_tokens`` tokens after ``prompt_ids``.

    One short warm-up run (weights paged in, threads started), then ``repeats``
    timed runs; the best run counts (the least disturbed by other work on the
    machine). Every run starts cold: the engine forgets the previous prompt, so
    each one prefills all of ``prompt_ids`` (no KV-cache reuse). TTFT is the time
    from the request to the first token (prefill plus one sampling step); prefill
    tok/s is prompt tokens over TTFT. On llama.cpp the row also carries llama.cpp's
    own count and time of the prompt tokens it evaluated in the best run
    (``llama_*``), the check that the whole prompt was prefilled.

    Returns:
        ``{"prefill_tok_s", "decode_tok_s", "ttft_s", "prompt_tokens", "gen_tokens"}``
        (and ``llama_prompt_tokens``, ``llama_prefill_tok_s``, ``llama_decode_tok_s``).
    """
    perf = getattr(engine, "perf", None)
    forget = getattr(engine, "reset_cache", lambda: None)

    def run(n: int) -> GenStats:
        forget()
        stats = GenStats()
        for _ in engine.token_ids(prompt_ids, n, 0.0, 1.0, 0, stats, ignore_eos=True):
            pass
        return stats

    run(4)
    best = None
    for _ in range(max(1, repeats)):
        if perf:
            perf(reset=True)
        s = run(gen_tokens)
        decode = (s.completion_tokens - 1) / s.decode_s if s.decode_s > 0 else float("nan")
        row = {"prefill_tok_s": len(prompt_ids) / s.ttft_s, "decode_tok_s": decode,
               "ttft_s": s.ttft_s, "prompt_tokens": len(prompt_ids),
               "gen_tokens": s.completion_tokens}
        if perf:
            row.update(_llama_timings(perf()))
        if best is None or row["decode_tok_s"] > best["decode_tok_s"]:
            best = row
    return best


def _llama_timings(p: dict) -> dict:
    """llama.cpp's own prompt and decode rates from its perf counters."""
    return {"llama_prompt_tokens": p["prompt_tokens"],
            "llama_prefill_tok_s": p["prompt_tokens"] / p["prompt_ms"] * 1e3
            if p["prompt_ms"] > 0 else float("nan"),
            "llama_decode_tok_s": p["eval_tokens"] / p["eval_ms"] * 1e3
            if p["eval_ms"] > 0 else float("nan")}

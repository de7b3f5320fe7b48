"""Prefill and decode speed, and time to first token."""
from __future__ import annotations

from ..engines import GenStats


def measure_speed(engine, prompt_ids: list[int], gen_tokens: int = 64, repeats: int = 2) -> dict:
    """Greedy generation of exactly ``gen_tokens`` tokens after ``prompt_ids``.

    One short warm-up run, then ``repeats`` timed runs; the best run counts
    (the least disturbed by other work on the machine).

    Returns:
        ``{"prefill_tok_s", "decode_tok_s", "ttft_s", "prompt_tokens", "gen_tokens"}``.
    """
    def run(n: int) -> GenStats:
        stats = GenStats()
        for _ in engine.token_ids(prompt_ids, n, 0.0, 1.0, 0, stats, ignore_eos=True):
            pass
        return stats

    run(4)
    best = None
    for _ in range(max(1, repeats)):
        s = run(gen_tokens)
        decode = (s.completion_tokens - 1) / s.decode_s if s.decode_s > 0 else float("nan")
        row = {"prefill_tok_s": len(prompt_ids) / s.ttft_s, "decode_tok_s": decode,
               "ttft_s": s.ttft_s, "prompt_tokens": len(prompt_ids),
               "gen_tokens": s.completion_tokens}
        if best is None or row["decode_tok_s"] > best["decode_tok_s"]:
            best = row
    return best

"""Prefill speed and time to first token, cold, checked against llama.cpp's own timings.

SmolLM2-135M-Instruct (the shipped Q4_1 GGUF), a 128-token prompt from the
python-docs validation split, 32 greedy tokens. Each round: slm eval's
``measure_speed`` (every run forgets the cached prompt), llama.cpp's own
counters for the same run (``llama_perf_context``: prompt tokens evaluated and
their milliseconds), and the warm run the old code timed (the same prompt again
without forgetting: llama-cpp-python reuses the KV cache and evaluates one
token). The PyTorch engine's cold figures beside them.

    .venv/bin/python bench/prefill_speed.py [--rounds 3]
"""
from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--prompt", type=int, default=128)
    args = ap.parse_args()
    from slmkit.engines import GenStats, open_engine
    from slmkit.evaluate import engine_tokens, measure_speed
    lc = open_engine("smollm2-135m", "llama.cpp", n_ctx=512)
    pt = open_engine("smollm2-135m", "pytorch")
    prompt = engine_tokens(lc, "python-docs", "val", args.prompt)
    rows = []
    for k in range(args.rounds):
        cold = measure_speed(lc, prompt, 32, repeats=1)
        # the old measurement: the same prompt straight after, KV cache kept
        lc.perf(reset=True)
        stats = GenStats()
        t0 = time.perf_counter()
        for _ in lc.token_ids(prompt, 2, 0.0, 1.0, 0, stats, ignore_eos=True):
            pass
        warm = lc.perf()
        rows.append({
            "round": k + 1,
            "llama.cpp cold TTFT s": round(cold["ttft_s"], 4),
            "llama.cpp cold prefill tok/s": round(cold["prefill_tok_s"], 1),
            "llama.cpp own: prompt tokens": cold["llama_prompt_tokens"],
            "llama.cpp own: prefill tok/s": round(cold["llama_prefill_tok_s"], 1),
            "slm / own prefill": round(cold["prefill_tok_s"] / cold["llama_prefill_tok_s"], 3),
            "warm (old) TTFT s": round(stats.ttft_s, 4),
            "warm (old) llama.cpp counters": {k: round(v, 2) for k, v in warm.items()},
            "warm (old) 'prefill tok/s'": round(len(prompt) / stats.ttft_s, 1),
        })
        print(json.dumps(rows[-1]), flush=True)
    p = measure_speed(pt, prompt, 32, repeats=args.rounds)
    print(json.dumps({"pytorch cold TTFT s": round(p["ttft_s"], 4),
                      "pytorch cold prefill tok/s": round(p["prefill_tok_s"], 1),
                      "pytorch decode tok/s": round(p["decode_tok_s"], 1)}), flush=True)


if __name__ == "__main__":
    main()

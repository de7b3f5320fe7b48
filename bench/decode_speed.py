"""Decode speed of slmkit's engines against llama-cpp-python called directly.

Same GGUF file, same prompt, greedy, a fixed number of generated tokens. The
three paths are interleaved round by round so that background load hits them
alike; the best round of each counts. Then load time and peak memory of each
built-in model, each in a fresh process.

    .venv/bin/python bench/decode_speed.py [--rounds 5] [--tokens 128]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def direct_llamacpp(path: str, prompt: list[int], n: int, n_ctx: int):
    """A decode timer over llama_cpp.Llama.generate, nothing of slmkit in the loop."""
    # llama-cpp-python as slmkit loads it (weight repacking off where the CPU has AMX,
    # see slmkit/engines/llama_lib.py), so the two paths run the same kernels
    from slmkit.engines.llama_lib import llama_cpp
    llm = llama_cpp().Llama(model_path=path, n_ctx=n_ctx, n_threads=os.cpu_count(), verbose=False)

    def run() -> float:
        t_first = None
        # the same sampler settings as slmkit's engine, so only the surrounding code differs
        tokens = llm.generate(prompt, temp=0.0, top_p=1.0, top_k=0, min_p=0.0,
                              repeat_penalty=1.0, reset=True)
        for i, _ in enumerate(tokens):
            if i == 0:
                t_first = time.perf_counter()
            if i + 1 >= n:
                break
        return (n - 1) / (time.perf_counter() - t_first)
    return run


def slmkit_path(engine, prompt: list[int], n: int):
    from slmkit.evaluate import measure_speed
    return lambda: measure_speed(engine, prompt, n, repeats=1)["decode_tok_s"]


def decode_table(rounds: int, n: int) -> dict:
    from slmkit.engines import open_engine
    from slmkit.evaluate import engine_tokens
    from slmkit.models.io import builtin_gguf
    path = str(builtin_gguf("smollm2-135m"))
    lc = open_engine(path, "llama.cpp", n_ctx=512)
    prompt = engine_tokens(lc, "python-docs", "val", 128)
    runners = {"llama-cpp-python direct": direct_llamacpp(path, prompt, n, 512),
               "slm eval, llama.cpp engine": slmkit_path(lc, prompt, n),
               "slm eval, pytorch engine": slmkit_path(open_engine("smollm2-135m", "pytorch"),
                                                       prompt, n)}
    for run in runners.values():      # warm-up
        run()
    best = {k: 0.0 for k in runners}
    for _ in range(rounds):
        for k, run in runners.items():
            best[k] = max(best[k], run())
    return best


CHILD = r"""
import json, sys, time
from slmkit.evaluate.memory import peak_rss
from slmkit.engines import open_engine, generate_text
t = time.perf_counter()
e = open_engine(sys.argv[1], sys.argv[2], n_ctx=512)
load = time.perf_counter() - t
generate_text(e, "def f(x):", max_tokens=16, temperature=0)
print(json.dumps({"load_s": load, "peak_rss": peak_rss()}))
"""


def load_table() -> list[dict]:
    rows = []
    for model in ("smollm2-135m", "gemma3-270m"):
        for engine in ("llama.cpp", "pytorch"):
            out = subprocess.run([sys.executable, "-c", CHILD, model, engine], capture_output=True,
                                 text=True, check=True).stdout.strip().splitlines()[-1]
            rows.append({"model": model, "engine": engine, **json.loads(out)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=128)
    args = ap.parse_args()
    best = decode_table(args.rounds, args.tokens)
    ref = best["llama-cpp-python direct"]
    print(f"\nSmolLM2-135M Q4_1 GGUF, greedy decode of {args.tokens} tokens after a 128-token "
          f"prompt, best of {args.rounds} interleaved rounds")
    print(f"{'path':32} {'tok/s':>8} {'vs direct':>10}")
    for k, v in best.items():
        print(f"{k:32} {v:8.1f} {v / ref:9.3f}x")
    print(f"\n{'model':14} {'engine':10} {'load s':>7} {'peak RSS MB':>12}")
    for r in load_table():
        print(f"{r['model']:14} {r['engine']:10} {r['load_s']:7.2f} {r['peak_rss'] / 1e6:12.0f}")


if __name__ == "__main__":
    main()

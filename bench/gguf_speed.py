"""Decode speed of GGUF files side by side: interleaved rounds, ratios against the first file.

Each round opens every file in turn with slmkit's llama.cpp engine and times greedy
decoding of --tokens tokens after a 128-token prompt (``measure_speed``: a short
warm-up, then the best of two runs). The first file is the reference; ratios use the
best round of each file and, separately, the median round.

    .venv/bin/python bench/gguf_speed.py runs/default/01-original-f16/model.gguf \\
        runs/default/07-gguf/model.gguf --rounds 3
"""
from __future__ import annotations

import argparse
import os
import statistics

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    from slmkit.engines import open_engine
    from slmkit.evaluate import measure_speed
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="+", help="GGUF files; the first is the reference")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=64)
    args = ap.parse_args()
    prompt = list(range(1000, 1128))
    runs: dict[str, list[float]] = {f: [] for f in args.files}
    for r in range(args.rounds):
        for f in args.files:
            engine = open_engine(f, "llama.cpp", n_ctx=512)
            runs[f].append(measure_speed(engine, prompt, args.tokens)["decode_tok_s"])
            del engine
        print(f"round {r + 1}: " + ", ".join(f"{runs[f][-1]:.1f}" for f in args.files), flush=True)
    ref = args.files[0]
    print(f"\n| file | bytes | decode tok/s per round | best vs first | median vs first |")
    print("|---|---:|---|---:|---:|")
    for f in args.files:
        best = max(runs[f]) / max(runs[ref])
        med = statistics.median(runs[f]) / statistics.median(runs[ref])
        print(f"| {f} | {os.path.getsize(f):,} | {', '.join(f'{x:.1f}' for x in runs[f])} "
              f"| {best:.2f}x | {med:.2f}x |")


if __name__ == "__main__":
    main()

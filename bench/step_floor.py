"""The least time a LoRA step can take on this CPU: its matmuls alone, at the speed
``torch.mm`` runs them here, in bf16 and in fp32.

One LoRA training step of SmolLM2-135M (r=16 on all seven decoder linear layers, batch
4 x 512 tokens) is, in matmuls: each frozen linear layer forward and its input-gradient
backward, the six small matmuls of each adapter (x A^T, h B^T; dy B, dy^T h, dh^T x,
dh A), the tied output head forward and backward over the 49,152-token vocabulary (in
1024-token chunks), and attention. Every distinct matmul shape is timed in bf16 and
fp32 (two warm-up calls, then the best of ``--repeat`` means of five) and multiplied by
how often a step runs it. Attention is timed as whole layers, forward + backward: in
bf16 the query-block kernel the training loop runs (``tune.attention``, compiled, on the
packed mask), in fp32 PyTorch's flash kernel with ``is_causal`` (what the plain PEFT
loop runs: it passes no mask).

A loop can not be faster than the bf16 sum (element-wise kernels, the loss, the
optimizer and Python all come on top), and the plain fp32 loop is not faster than the
fp32 sum; so the bf16 sum, against the plain fp32 loop's measured step, bounds the
speed-up any bf16 loop can show on this machine. The plain fp32 loop's step is measured
in the same run (``--plain-steps`` steps after one warm-up; 0 skips it).

    .venv/bin/python bench/step_floor.py [--repeat 3] [--plain-steps 3]
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))
from attention import (B, D, H, KV, T, best_mean, blocked, packed_mask,  # noqa: E402
                       timed)

HIDDEN, INTER, LAYERS, VOCAB, RANK, CHUNK = 576, 1536, 30, 49152, 16, 1024
N = B * T
LINEARS = {"q": (HIDDEN, H * D), "k": (HIDDEN, KV * D), "v": (HIDDEN, KV * D),
           "o": (H * D, HIDDEN), "gate": (HIDDEN, INTER), "up": (HIDDEN, INTER),
           "down": (INTER, HIDDEN)}


def step_matmuls() -> dict[str, list[tuple[int, int, int, int]]]:
    """Matmuls (m, k, n, times per step) of one LoRA step, by kind."""
    base, lora = [], []
    for fin, fout in LINEARS.values():
        base += [(N, fin, fout, LAYERS),            # forward
                 (N, fout, fin, LAYERS)]            # input gradient
        lora += [(N, fin, RANK, LAYERS), (N, RANK, fout, LAYERS),      # forward
                 (N, fout, RANK, LAYERS), (fout, N, RANK, LAYERS),     # dh, dB
                 (RANK, N, fin, LAYERS), (N, RANK, fin, LAYERS)]       # dA, dx
    head = [(CHUNK, HIDDEN, VOCAB, N // CHUNK), (CHUNK, VOCAB, HIDDEN, N // CHUNK)]
    return {"decoder linear": base, "LoRA": lora, "output head": head}


def mm_seconds(m: int, k: int, n: int, dtype: torch.dtype, repeat: int) -> float:
    a = torch.randn(m, k).to(dtype)
    b = torch.randn(k, n).to(dtype)
    out = torch.empty(m, n, dtype=dtype)
    return best_mean(lambda: torch.mm(a, b, out=out), repeat=repeat)


def plain_fp32_step(steps: int) -> float:
    """Median step time of the plain PEFT fp32 loop (bench/finetune.py's reference)."""
    from finetune import plain_peft
    res = plain_peft(steps, bf16=False, warmup=1)
    return sorted(res["step_s"])[len(res["step_s"]) // 2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--plain-steps", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    rows = {}
    for kind, mms in step_matmuls().items():
        t = {dt: 0.0 for dt in (torch.bfloat16, torch.float32)}
        flops = sum(2 * m * k * n * c for m, k, n, c in mms)
        for m, k, n, c in mms:
            for dt in t:
                t[dt] += c * mm_seconds(m, k, n, dt, args.repeat)
        rows[kind] = (flops, t[torch.bfloat16], t[torch.float32])
        print(f"{kind:15s} {flops / 1e9:7.1f} GFLOP  bf16 {t[torch.bfloat16]:6.3f} s "
              f"({flops / t[torch.bfloat16] / 1e9:4.0f} GFLOP/s)  fp32 {t[torch.float32]:6.3f} s "
              f"({flops / t[torch.float32] / 1e9:4.0f} GFLOP/s)", flush=True)
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def flash_causal(q, k, v):
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True,
                                                                    enable_gqa=True)
    att16 = LAYERS * timed(torch.compile(blocked(packed_mask())), repeat=args.repeat)
    att32 = LAYERS * timed(flash_causal, dtype=torch.float32, repeat=args.repeat)
    print(f"{'attention':15s} {'':13s} bf16 {att16:6.3f} s (query blocks, compiled)  "
          f"fp32 {att32:6.3f} s (flash, causal)", flush=True)
    floor16 = sum(r[1] for r in rows.values()) + att16
    floor32 = sum(r[2] for r in rows.values()) + att32
    print(f"\nstep floor: bf16 {floor16:.2f} s, fp32 {floor32:.2f} s "
          f"(matmul speed ratio {floor32 / floor16:.2f}x)")
    if args.plain_steps:
        plain = plain_fp32_step(args.plain_steps)
        print(f"plain PEFT fp32 loop, measured: {plain:.2f} s per step "
              f"({N / plain:.0f} tok/s; {floor32 / plain:.0%} of it in the fp32 floor)")
        print(f"most a bf16 loop can show against it: {plain / floor16:.2f}x "
              f"({N / floor16:.0f} tok/s) with no time outside these matmuls")
        print(f"3x needs a step of {plain / 3:.2f} s: {plain / 3 - floor16:.2f} s for "
              "everything else (element-wise kernels, loss, optimizer, Python)")


if __name__ == "__main__":
    main()

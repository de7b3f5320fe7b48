"""Cross-tokenizer distillation: Gemma-3-270m (262,144 tokens) teaches SmolLM2-135M (49,152).

Arms on the same student, data blocks, token budget and schedule:

- ``ce``: plain cross-entropy training on python-docs (no teacher);
- ``cross``: cross-entropy + the sorted-probability distance to the teacher at the
  positions where both tokenizations end on the same character (`--cross-tokenizer`).

Held-out python-docs perplexity of the student (its own tokens) before and after,
the share of student positions the alignment pairs, and training tokens/s.

    .venv/bin/python bench/distill_cross.py [--tokens 16384] [--student smollm2-135m]
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main() -> None:
    from slmkit.compress.distill import DistillConfig, run_distill
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", default="gemma3-270m")
    ap.add_argument("--student", default="smollm2-135m")
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--w-kl", type=float, default=1.0)
    ap.add_argument("--arms", default="ce,cross")
    args = ap.parse_args()
    rows = {}
    for arm in args.arms.split(","):
        cfg = DistillConfig(teacher=args.teacher, data="python-docs", tokens=args.tokens,
                            seq_len=args.seq_len, batch_size=4, lr=args.lr, warmup_steps=2,
                            val_tokens=8192, ckpt_every=0, resume=False,
                            w_kl=args.w_kl if arm == "cross" else 0.0,
                            cross_tokenizer=arm == "cross")
        with tempfile.TemporaryDirectory() as d:
            rep = run_distill(args.student, Path(d) / "out", cfg, progress=False)
        rows[arm] = {k: rep.get(k) for k in ("val_ppl_before", "val_ppl", "tokens",
                                              "tokens_per_s", "train_time_s",
                                              "cross_tokenizer", "teacher_unchanged")}
        print(arm, json.dumps(rows[arm]), flush=True)
    print(f"\n{args.tokens} tokens, seq {args.seq_len}, lr {args.lr}, teacher {args.teacher}, "
          f"student {args.student}")
    print("| arm | held-out ppl before | after | change | aligned positions | tok/s |")
    print("|---|---:|---:|---:|---:|---:|")
    for arm, r in rows.items():
        al = (r["cross_tokenizer"] or {}).get("aligned_fraction")
        print(f"| {arm} | {r['val_ppl_before']:.3f} | {r['val_ppl']:.3f} | "
              f"{(r['val_ppl'] / r['val_ppl_before'] - 1) * 100:+.1f}% | "
              f"{'-' if al is None else f'{al:.1%}'} | {r['tokens_per_s']:.1f} |")


if __name__ == "__main__":
    main()

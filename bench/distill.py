"""Distillation vs plain cross-entropy training of the same pruned student.

Teacher: SmolLM2-135M-Instruct. Student: the teacher depth-pruned (ShortGPT
block influence, slmkit.compress.prune.depth) to ~60% of its parameters. Both
arms train the same student on the same python-docs blocks in the same order,
with the same optimizer settings; only the loss differs:

    kd: forward KL to the teacher's next-token distribution (T = 1)
    ce: cross-entropy on the data

Held-out perplexity (python-docs validation split, disjoint 256-token blocks,
bf16 autocast) is measured every --eval-every steps.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/distill.py --tokens 40960
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def make_student(teacher_name: str, out: Path, fraction: float, seq_len: int) -> dict:
    """Depth-prune the teacher to ``fraction`` of its parameters; save it to ``out``."""
    import torch

    from slmkit.compress.prune.depth import prune
    from slmkit.data import blocks
    from slmkit.models.io import SLM, count_params, load, save
    t = load(teacher_name)
    ids = blocks("python-docs", t.tokenizer, seq_len, which="train")
    calib = ids[torch.randperm(len(ids), generator=torch.Generator().manual_seed(0))[:16]]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model, info = prune(t.model, calib, int(fraction * count_params(t.model)))
    save(SLM(model, t.tokenizer, "student", {"source": teacher_name, "history": []}), out,
         overwrite=True)
    return {"teacher_params": count_params(t.model), "student_params": count_params(model),
            "removed_layers": info["removed_layers"]}


def arm(name: str, student: Path, work: Path, args, **loss) -> dict:
    from slmkit.compress.distill import DistillConfig, run_distill
    cfg = DistillConfig(teacher=args.teacher, data="python-docs", tokens=args.tokens,
                        seq_len=args.seq_len, batch_size=args.batch_size, lr=args.lr,
                        warmup_steps=args.warmup, eval_every=args.eval_every,
                        val_tokens=args.val_tokens, ckpt_every=0, resume=False, **loss)
    t0 = time.time()
    rep = run_distill(str(student), work / name, cfg, overwrite=True)
    rep["wall_s"] = round(time.time() - t0, 1)
    return rep


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", default="smollm2-135m")
    ap.add_argument("--tokens", type=int, default=40960)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--warmup", type=int, default=4)
    ap.add_argument("--eval-every", type=int, default=10)
    ap.add_argument("--val-tokens", type=int, default=8192)
    ap.add_argument("--fraction", type=float, default=0.6)
    ap.add_argument("--work", default="/tmp/bench-distill")
    args = ap.parse_args()
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    info = make_student(args.teacher, work / "student", args.fraction, args.seq_len)
    print(f"student: {info['student_params'] / 1e6:.1f}M of {info['teacher_params'] / 1e6:.1f}M "
          f"params ({info['student_params'] / info['teacher_params']:.1%}), removed layers "
          f"{info['removed_layers']}")
    kd = arm("kd", work / "student", work, args, w_kl=1.0, w_ce=0.0)
    ce = arm("ce", work / "student", work, args, w_kl=0.0, w_ce=1.0)
    report(info, kd, ce, args, work)


def report(info: dict, kd: dict, ce: dict, args, work: Path) -> None:
    t_ppl = kd["teacher_val_ppl"]
    print(f"\nteacher val ppl {t_ppl:.2f}; pruned student before training "
          f"{kd['val_ppl_before']:.2f}")
    print(f"{'tokens':>8} {'kd ppl':>9} {'ce ppl':>9} {'kd/teacher':>11} {'ce/teacher':>11}")
    for a, b in zip(kd["eval_curve"], ce["eval_curve"]):
        print(f"{a['tokens']:>8} {a['val_ppl']:>9.2f} {b['val_ppl']:>9.2f} "
              f"{a['val_ppl'] / t_ppl:>11.3f} {b['val_ppl'] / t_ppl:>11.3f}")
    print(f"\nfinal held-out ppl: kd {kd['val_ppl']:.2f}  ce {ce['val_ppl']:.2f}  "
          f"(kd/ce {kd['val_ppl'] / ce['val_ppl']:.3f}); teacher {t_ppl:.2f}")
    print(f"train tok/s: kd {kd['tokens_per_s']:.0f}  ce {ce['tokens_per_s']:.0f}  "
          f"(kd/ce {kd['tokens_per_s'] / ce['tokens_per_s']:.2f}); wall kd {kd['wall_s']} s, "
          f"ce {ce['wall_s']} s")
    keep = ("val_ppl_before", "val_ppl", "teacher_val_ppl", "tokens", "tokens_per_s", "wall_s",
            "eval_curve", "steps")
    out = {"args": vars(args), "student": info,
           "kd": {k: kd.get(k) for k in keep}, "ce": {k: ce.get(k) for k in keep}}
    (work / "results.json").write_text(json.dumps(out, indent=1))
    print(f"results: {work / 'results.json'}")


if __name__ == "__main__":
    main()

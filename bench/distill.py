"""Distillation vs plain cross-entropy training of the same pruned student.

Teacher: SmolLM2-135M-Instruct. Student: the teacher depth-pruned (ShortGPT
block influence, slmkit.compress.prune.depth) to ~60% of its parameters. Both
arms train the same student on the same python-docs blocks in the same order,
with the same optimizer settings; only the loss differs:

    kd: forward KL to the teacher's next-token distribution (T = 1)
    ce: cross-entropy on the data

Held-out perplexity (python-docs validation split, as `slm eval` scores it with a 256-token
window moving by 128, under the loop's bf16 autocast) is measured every --eval-every steps.

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


# Loss weights of each arm; all arms share the student, data, order and optimizer settings.
ARMS = {
    "ce": dict(w_kl=0.0, w_ce=1.0),                       # plain training on the data
    "kd": dict(w_kl=1.0, w_ce=0.0),                       # forward KL to the teacher only
    "kd_ce": dict(w_kl=1.0, w_ce=1.0),                    # KL + data CE
    "kd_ce_hidden": dict(w_kl=1.0, w_ce=1.0, w_hidden=1.0),  # + hidden-state matching
    "kd_ce_cache": dict(w_kl=1.0, w_ce=1.0, top_k=64),   # KL + CE from cached top-64 logits
}


def arm(name: str, student: Path, work: Path, args) -> dict:
    """Train one arm (skipped when its report exists and --keep is given)."""
    from slmkit.compress.distill import DistillConfig, run_distill
    done = work / name / "report.json"
    if args.keep and done.exists():
        return json.loads(done.read_text())
    cfg = DistillConfig(teacher=args.teacher, data="python-docs", tokens=args.tokens,
                        seq_len=args.seq_len, batch_size=args.batch_size, lr=args.lr,
                        warmup_steps=args.warmup, eval_every=args.eval_every,
                        val_tokens=args.val_tokens, ckpt_every=0, resume=False,
                        teacher_cache=str(work / "cache") if name.endswith("_cache") else None,
                        **ARMS[name])
    t0 = time.time()
    rep = run_distill(str(student), work / name, cfg, overwrite=True)
    rep["wall_s"] = round(time.time() - t0, 1)
    done.write_text(json.dumps(rep))
    return rep


def _arm_job(job):
    return arm(*job)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", default="smollm2-135m")
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--warmup", type=int, default=4)
    ap.add_argument("--eval-every", type=int, default=4)
    ap.add_argument("--val-tokens", type=int, default=4096)
    ap.add_argument("--fraction", type=float, default=0.6)
    ap.add_argument("--arms", default="ce,kd,kd_ce,kd_ce_hidden", help="comma-separated, from: "
                    + ", ".join(ARMS))
    ap.add_argument("--jobs", type=int, default=1, help="arms trained at once (separate "
                    "processes; tok/s is then not comparable)")
    ap.add_argument("--keep", action="store_true", help="reuse the student and finished arms "
                    "in --work")
    ap.add_argument("--work", default="/tmp/bench-distill")
    args = ap.parse_args()
    work = Path(args.work)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    info_file = work / "student.json"
    if not (args.keep and info_file.exists()):
        info_file.write_text(json.dumps(make_student(args.teacher, work / "student",
                                                     args.fraction, args.seq_len)))
    info = json.loads(info_file.read_text())
    print(f"student: {info['student_params'] / 1e6:.1f}M of {info['teacher_params'] / 1e6:.1f}M "
          f"params ({info['student_params'] / info['teacher_params']:.1%}), removed layers "
          f"{info['removed_layers']}")
    names = [a for a in args.arms.split(",") if a]
    jobs = [(a, work / "student", work, args) for a in names]
    if args.jobs > 1:
        import multiprocessing as mp
        with mp.get_context("spawn").Pool(args.jobs) as pool:
            pool.map(_arm_job, jobs)
    else:
        for j in jobs:
            _arm_job(j)
    reps = {a: json.loads((work / a / "report.json").read_text()) for a in ARMS
            if (work / a / "report.json").exists()}
    report(info, reps, args, work)


def report(info: dict, reps: dict, args, work: Path) -> None:
    any_rep = next(iter(reps.values()))
    t_ppl = next(r["teacher_val_ppl"] for r in reps.values() if r.get("teacher_val_ppl"))
    print(f"\nteacher val ppl {t_ppl:.2f}; pruned student before training "
          f"{any_rep['val_ppl_before']:.2f}")
    print(f"{'tokens':>8} " + " ".join(f"{a:>13}" for a in reps))
    for i, row in enumerate(any_rep["eval_curve"]):
        print(f"{row['tokens']:>8} " + " ".join(f"{r['eval_curve'][i]['val_ppl']:>13.2f}"
                                               for r in reps.values()))
    print("\nfinal held-out ppl (ratio to teacher):")
    for a, r in reps.items():
        print(f"  {a:>13}: {r['val_ppl']:8.2f} ({r['val_ppl'] / t_ppl:.2f}x)   "
              f"train {r['tokens_per_s']:.0f} tok/s, wall {r.get('wall_s')} s")
    if "ce" in reps:
        best = min((a for a in reps if a != "ce"), key=lambda a: reps[a]["val_ppl"], default=None)
        if best:
            print(f"best distillation arm {best}: ppl {reps[best]['val_ppl']:.2f} vs ce "
                  f"{reps['ce']['val_ppl']:.2f} (ratio {reps[best]['val_ppl'] / reps['ce']['val_ppl']:.3f})")
    keep = ("val_ppl_before", "val_ppl", "teacher_val_ppl", "tokens", "tokens_per_s", "wall_s",
            "eval_curve", "steps", "loss")
    out = {"args": vars(args), "student": info,
           **{a: {k: r.get(k) for k in keep} for a, r in reps.items()}}
    (work / "results.json").write_text(json.dumps(out, indent=1))
    print(f"results: {work / 'results.json'}")


if __name__ == "__main__":
    main()

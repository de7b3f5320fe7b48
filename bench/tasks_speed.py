"""Benchmark scoring speed: the shared prompt pass against one pass per choice.

slmkit scores each question's prompt once and continues every choice from it
(KV-cache reuse on llama.cpp, one batch of continuations on PyTorch). The naive
loop runs prompt + choice through the model once per choice, as a plain
lm-evaluation-harness-style loop without its batching would. Both give the same
scores (tests/evaluate/test_tasks.py); this prints the time of each, side by side,
on the same questions, and the accuracies (which must agree).

    .venv/bin/python bench/tasks_speed.py --task arc_easy                  # all 2,376
    python bench/tasks_speed.py --task arc_easy --limit 300 --engine pytorch
"""
from __future__ import annotations

import argparse
import json
import os
import time

from slmkit.engines import open_engine
from slmkit.evaluate.tasks import TASKS, score_task


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--engine", default="llama.cpp", choices=["llama.cpp", "pytorch"])
    ap.add_argument("--task", default="arc_easy", choices=list(TASKS))
    ap.add_argument("--limit", type=int, default=None, help="questions (default: the whole split)")
    ap.add_argument("--naive-limit", type=int, default=None,
                    help="questions for the naive loop (default: --limit)")
    ap.add_argument("--threads", type=int, default=None, help="llama.cpp threads (default: cores)")
    args = ap.parse_args()
    if args.engine == "llama.cpp":
        eng = open_engine(args.model, "llama.cpp", n_ctx=2048, logits_all=True,
                          n_threads=args.threads)
    else:
        eng = open_engine(args.model, "pytorch")
    task = TASKS[args.task]
    task.docs()                                                 # data read outside the timing
    out = {"model": args.model, "engine": eng.name, "task": args.task, "cores": os.cpu_count(),
           "torch_threads": __import__("torch").get_num_threads()}
    for mode, limit in (("shared", args.limit), ("naive", args.naive_limit or args.limit)):
        t0 = time.perf_counter()
        r = score_task(eng, task, limit=limit, naive=mode == "naive", progress=False)
        dt = time.perf_counter() - t0
        out[mode] = {"questions": r["n"], "seconds": round(dt, 1),
                     "questions_per_s": round(r["n"] / dt, 2),
                     "acc": r["acc"], "acc_norm": r["acc_norm"]}
        print(json.dumps({mode: out[mode]}), flush=True)
    s, n = out["shared"], out["naive"]
    out["speedup"] = round(n["seconds"] / n["questions"] / (s["seconds"] / s["questions"]), 2)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()

"""Benchmark scoring speed: batched questions, one question at a time, one pass per choice.

``batched`` (``score_task(batch=True)``): on llama.cpp several questions go
into one decode call, each choice a KV-cache sequence sharing its question's
prefix cells (engines/llamacpp_score.py); on PyTorch each question's prompt runs
once and its choices continue as one batch. ``per-question`` (what ``slm eval
--task`` does): the prompt shared by its choices, one question per call (llama.cpp's KV-cache reuse through
llama-cpp-python). ``naive``: prompt + choice through the model once per
choice, as a plain loop would. On the tiny test model all give the same scores
(tests/engines/test_llamacpp_score.py, tests/evaluate/test_tasks.py); on
SmolLM2-135M Q4_1 the batched path's do not (BENCHMARKS.md). This
prints the time of each, side by side, on the same questions, the accuracies
(which must agree), and on llama.cpp the decode calls and tokens of the
batched path.

    .venv/bin/python bench/tasks_speed.py --task arc_easy                  # all 2,376
    python bench/tasks_speed.py --task arc_easy --naive-limit 300          # naive on a subset
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
                    help="questions for the per-question and naive loops (default: --limit)")
    ap.add_argument("--modes", default="batched,per-question,naive",
                    help="comma-separated: batched, per-question, naive")
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
    modes = args.modes.split(",")
    for mode in modes:
        limit = args.limit if mode == "batched" else (args.naive_limit or args.limit)
        t0 = time.perf_counter()
        r = score_task(eng, task, limit=limit, naive=mode == "naive", batch=mode == "batched",
                       progress=False)
        dt = time.perf_counter() - t0
        out[mode] = {"questions": r["n"], "seconds": round(dt, 1),
                     "questions_per_s": round(r["n"] / dt, 2),
                     "acc": r["acc"], "acc_norm": r["acc_norm"]}
        scorer = getattr(eng, "_scorer", None)
        if mode == "batched" and scorer is not None:
            out[mode].update(decode_calls=scorer.decode_calls, tokens=scorer.tokens_read)
        print(json.dumps({mode: out[mode]}), flush=True)
    if "batched" in out:
        b = out["batched"]
        for mode in modes:
            if mode != "batched":
                m = out[mode]
                out[f"speedup_vs_{mode}"] = round(m["seconds"] / m["questions"]
                                                  / (b["seconds"] / b["questions"]), 2)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()

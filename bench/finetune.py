"""Fine-tuning benchmarks on SmolLM2-135M (CPU).

    python bench/finetune.py speed [--steps 4] [--rounds 2]   # tok/s + peak RSS vs plain PEFT loops
    python bench/finetune.py speed --model gemma3-270m --variants slm-lora --rounds 1
                                                              # another base (peak RSS with 262k tokens)
    python bench/finetune.py ppl [--tokens 150000]            # held-out python-docs ppl, LoRA and full
    python bench/finetune.py eda [--slice 0.05]               # LoRA on a 5% slice, with/without EDA

`speed` runs each variant in its own process (so peak RSS is its own), rounds
interleaved, and prints each variant's median tokens/s and its ratio to the
plain PEFT fp32 loop measured in the same run. Setting: LoRA r=16 on all
linear layers of the decoder, no LoRA dropout on either side, batch 4 x 512
tokens of python-docs. Variants:

    peft-fp32       the plain loop in fp32 (the reference)
    peft-bf16       the same under bf16 autocast
    peft-bf16w      the model loaded in bf16 (PEFT keeps the adapter fp32), bf16 autocast
    slm-lora        `slm finetune --method lora`
    slm-lora-fp32h  the same with --fp32-hidden
    slm-lora-eager  the same with --no-compile
    slm-qlora       `slm finetune --method qlora`

The first ``--warmup`` steps of each variant are left out of its tokens/s (for
`slm finetune` the first includes compiling the decoder layers, and the
second still grows the heap); the first step's time is reported as "first step s".
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

MODEL = "smollm2-135m"
BATCH, SEQ = 4, 512
from slmkit.evaluate.memory import peak_rss  # noqa: E402

VARIANTS = ("peft-fp32", "peft-bf16", "peft-bf16w", "slm-lora", "slm-lora-fp32h",
            "slm-lora-eager", "slm-qlora")


def plain_peft(steps: int, bf16: bool, bf16_weights: bool = False, warmup: int = 2) -> dict:
    """The usual loop: PEFT LoRA, HF forward with labels (full logits), AdamW; with
    ``bf16_weights`` the model is loaded in bf16 (PEFT keeps the adapter in fp32)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from slmkit import data, load
    slm = load(MODEL)
    if bf16_weights:
        slm.model.to(torch.bfloat16)
    blocks = data.blocks("python-docs", slm.tokenizer, SEQ)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    model = get_peft_model(slm.model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0,
                                                 target_modules=targets, task_type="CAUSAL_LM"))
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
    times = []
    for i in range(steps + warmup):                  # the first ``warmup`` steps are not timed
        x = blocks[i * BATCH:(i + 1) * BATCH]
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(input_ids=x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        times.append(time.perf_counter() - t0)
    return {"tokens_per_s": BATCH * SEQ * steps / sum(times[warmup:]), "peak_rss": peak_rss(),
            "first_step_s": times[0], "step_s": times[warmup:]}


def slm_finetune(steps: int, method: str, compile_: bool = True, bf16_base: bool = True,
                 warmup: int = 2) -> dict:
    """`slm finetune` itself (run_finetune), timed by the loop over training steps only."""
    from slmkit.tune.finetune import FinetuneConfig, run_finetune
    with tempfile.TemporaryDirectory() as d:
        cfg = FinetuneConfig(data="python-docs", method=method, rank=16, alpha=32,
                             seq_len=SEQ, batch_size=BATCH,
                             max_tokens=BATCH * SEQ * (steps + warmup),
                             max_val_blocks=1, eval_every=10_000, patience=0, resume=False,
                             compile=compile_, bf16_base=bf16_base)
        rep = run_finetune(MODEL, Path(d) / "out", cfg, progress=False)
    # the loop's tokens/s includes the warm-up steps: recompute without them, as for the
    # plain loops, from the per-step times the loop records
    rows = rep["loss_curve"][warmup:]
    tps = (rows[-1]["tokens"] - rep["loss_curve"][warmup - 1]["tokens"]) / sum(
        r["step_s"] for r in rows)
    return {"tokens_per_s": tps, "peak_rss": peak_rss(), "train_time_s": rep["train_time_s"],
            "first_step_s": rep["loss_curve"][0]["step_s"], "step_s": [r["step_s"] for r in rows]}


def run_variant(name: str, steps: int, warmup: int) -> dict:
    if name.startswith("peft-"):
        return plain_peft(steps, name != "peft-fp32", bf16_weights=name == "peft-bf16w",
                          warmup=warmup)
    return slm_finetune(steps, name.split("-")[1], compile_=not name.endswith("-eager"),
                        bf16_base=not name.endswith("-fp32h"), warmup=warmup)


def speed(args) -> None:
    variants = tuple(args.variants.split(",")) if args.variants else VARIANTS
    if "peft-fp32" not in variants:
        variants = ("peft-fp32",) + variants
    results: dict[str, list[dict]] = {v: [] for v in variants}
    for r in range(args.rounds):
        order = variants if r % 2 == 0 else tuple(reversed(variants))
        for v in order:
            out = subprocess.run([sys.executable, __file__, "_one", v, str(args.steps),
                                  str(args.batch), str(args.warmup), args.model],
                                 capture_output=True, text=True, check=True)
            res = json.loads(out.stdout.strip().splitlines()[-1])
            results[v].append(res)
            print(f"round {r + 1} {v:14s} {res['tokens_per_s']:8.1f} tok/s  "
                  f"peak RSS {res['peak_rss'] / 2**20:6.0f} MiB  "
                  f"first step {res['first_step_s']:5.1f} s  "
                  f"timed steps {' '.join(f'{x:.2f}' for x in res['step_s'])} s", flush=True)
    base = statistics.median(x["tokens_per_s"] for x in results["peft-fp32"])
    print(f"\n{args.model}, LoRA r=16 all linear, batch {args.batch}x{SEQ}, {args.steps} timed "
          f"steps after {args.warmup} warm-up steps, median of {args.rounds} interleaved rounds")
    print(f"{'variant':14s} {'tok/s':>8s} {'vs fp32':>8s} {'peak RSS MiB':>13s} "
          f"{'first step s':>13s}")
    for v in variants:
        tps = statistics.median(x["tokens_per_s"] for x in results[v])
        rss = max(x["peak_rss"] for x in results[v]) / 2**20
        first = statistics.median(x["first_step_s"] for x in results[v])
        print(f"{v:14s} {tps:8.1f} {tps / base:7.2f}x {rss:13.0f} {first:13.1f}")


def ppl(args) -> None:
    """Held-out python-docs perplexity before/after LoRA and full fine-tuning."""
    from slmkit.tune.finetune import FinetuneConfig, run_finetune
    rows = []
    lrs = {"lora": args.lora_lr, "full": args.full_lr}
    for method in args.methods.split(","):
        lr = lrs[method]
        with tempfile.TemporaryDirectory() as d:
            cfg = FinetuneConfig(data="python-docs", method=method, lr=lr, seq_len=SEQ,
                                 batch_size=BATCH, max_tokens=args.tokens,
                                 max_val_blocks=args.val_blocks, eval_every=args.eval_every,
                                 patience=0, resume=False)
            rep = run_finetune(MODEL, Path(d) / "out", cfg, progress=False)
        drop = 1 - rep["val_ppl_after"] / rep["val_ppl_before"]
        rows.append((method, lr, rep["tokens"], rep["val_ppl_before"], rep["val_ppl_after"], drop,
                     rep["tokens_per_s"], rep["train_time_s"]))
        print(json.dumps({"method": method, "eval_curve": rep["eval_curve"]}), flush=True)
    print(f"\n{'method':6s} {'lr':>7s} {'tokens':>8s} {'ppl before':>11s} {'ppl after':>10s} "
          f"{'lower by':>9s} {'tok/s':>7s} {'train s':>8s}")
    for m, lr, tok, b, a, drop, tps, t in rows:
        print(f"{m:6s} {lr:7.0e} {tok:8d} {b:11.3f} {a:10.3f} {drop:8.1%} {tps:7.0f} {t:8.0f}")


def eda(args) -> None:
    """LoRA on a small slice of python-docs with and without EDA copies, same token budget."""
    from slmkit.data import load_split
    from slmkit.data.augment import AugmentConfig, augment_records, write_records
    from slmkit.tune.finetune import FinetuneConfig, run_finetune
    train = load_split("python-docs", "train")
    step = max(1, round(1 / args.slice))
    small = train[::step]
    aug, rep = augment_records(small, AugmentConfig(n=args.n, alpha=args.alpha, seed=0))
    print(f"slice: {len(small)} records; EDA n={args.n} alpha={args.alpha}: {rep.as_dict()}")
    rows = []
    with tempfile.TemporaryDirectory() as d:
        write_records(small, Path(d) / "small.jsonl")
        write_records(aug, Path(d) / "small-eda.jsonl")
        for name, f in (("no EDA", "small.jsonl"), ("EDA", "small-eda.jsonl")):
            cfg = FinetuneConfig(data=str(Path(d) / f), val_data="python-docs", method="lora",
                                 lr=args.lr, seq_len=SEQ, batch_size=BATCH,
                                 max_tokens=args.tokens, max_val_blocks=args.val_blocks,
                                 eval_every=args.eval_every, patience=0, resume=False)
            r = run_finetune(MODEL, Path(d) / f"out-{f}", cfg, progress=False)
            best = min(x["val_ppl"] for x in r["eval_curve"])
            rows.append((name, r["data"]["train_loss_tokens"], r["tokens"], r["val_ppl_before"],
                         r["val_ppl_after"], best))
            print(json.dumps({"run": name, "eval_curve": r["eval_curve"]}), flush=True)
    print(f"\n{'run':7s} {'data tok':>9s} {'trained':>8s} {'ppl before':>11s} {'ppl after':>10s} "
          f"{'best':>7s}")
    for n, dt, tok, b, a, best in rows:
        print(f"{n:7s} {dt:9d} {tok:8d} {b:11.3f} {a:10.3f} {best:7.3f}")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_one":
        global BATCH, MODEL
        BATCH = int(sys.argv[4]) if len(sys.argv) > 4 else BATCH
        MODEL = sys.argv[6] if len(sys.argv) > 6 else MODEL
        print(json.dumps(run_variant(sys.argv[2], int(sys.argv[3]), int(sys.argv[5]))))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("speed")
    s.add_argument("--steps", type=int, default=4)
    s.add_argument("--rounds", type=int, default=2)
    s.add_argument("--batch", type=int, default=BATCH, help="sequences of 512 tokens per step")
    s.add_argument("--model", default=MODEL, help="base model (built-in name or directory)")
    s.add_argument("--warmup", type=int, default=2, help="untimed steps first (compiling, "
                   "and the heap growing to its working size)")
    s.add_argument("--variants", default="", help=f"comma list out of {','.join(VARIANTS)} "
                   "(peft-fp32, the reference, is always run)")
    p = sub.add_parser("ppl")
    p.add_argument("--tokens", type=int, default=150_000)
    p.add_argument("--lora-lr", type=float, default=1e-3)
    p.add_argument("--full-lr", type=float, default=5e-5)
    p.add_argument("--val-blocks", type=int, default=16, help="held-out 512-token blocks scored")
    p.add_argument("--eval-every", type=int, default=0, help="steps between evals (0: ~8/run)")
    p.add_argument("--methods", default="lora,full", help="comma list out of lora,full")
    e = sub.add_parser("eda")
    e.add_argument("--slice", type=float, default=0.05)
    e.add_argument("--n", type=int, default=4)
    e.add_argument("--alpha", type=float, default=0.1)
    e.add_argument("--lr", type=float, default=5e-4)
    e.add_argument("--tokens", type=int, default=60_000)
    e.add_argument("--val-blocks", type=int, default=16)
    e.add_argument("--eval-every", type=int, default=0)
    args = ap.parse_args()
    {"speed": speed, "ppl": ppl, "eda": eda}[args.cmd](args)


if __name__ == "__main__":
    main()

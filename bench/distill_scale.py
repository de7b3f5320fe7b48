"""Scale-out of `slm distill` on 2 ranks of one machine: DDP against FSDP.

The same `slm distill` command runs under `torchrun --nproc-per-node 2`, once data
parallel (DDP: every rank holds the whole student, its gradients and its AdamW
moments) and once with --fsdp (each rank holds half of them). Every rank records its
peak resident memory (VmHWM) when the command returns; the run's report gives the
bytes of trainable parameters + gradients + optimizer state one rank held, and the
training speed. glibc keeps much of what the many freed tensors held, so peak RSS
follows the live tensors more closely with large blocks mapped and unmapped directly:

    HF_HUB_OFFLINE=1 .venv/bin/python bench/distill_scale.py
    MALLOC_MMAP_THRESHOLD_=1048576 HF_HUB_OFFLINE=1 .venv/bin/python bench/distill_scale.py \
        --work /tmp/bench-distill-scale-mmap

Teacher and student are SmolLM2-135M (the student starts as a copy of the teacher):
this measures memory and speed, not what distillation achieves.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def distill_args(args, mode: str, out: Path) -> list[str]:
    """The `slm distill` command line of one arm."""
    cmd = ["distill", "--teacher", args.teacher, "--student", args.student,
           "--data", "python-docs", "--tokens", str(args.tokens), "--seq-len", str(args.seq_len),
           "--batch-size", str(args.batch_size), "--warmup", "2", "--val-tokens",
           str(args.val_tokens), "--ckpt-every", "0", "--no-compile", "--no-resume",
           "--out", str(out), "--force", "--json"]
    return cmd + (["--fsdp"] if mode == "fsdp" else [])


def worker(record: Path, argv: list[str]) -> None:
    """One rank: run the slm command, then write this rank's peak RSS."""
    from slmkit.cli import main
    from slmkit.evaluate.memory import peak_rss
    try:
        main(argv)
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise
    rank = int(os.environ.get("RANK", "0"))
    (record / f"rank{rank}.json").write_text(json.dumps({"peak_rss": peak_rss()}))


def arm(args, mode: str, work: Path) -> dict:
    out, record = work / mode, work / f"{mode}-ranks"
    record.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(args.ranks),
           __file__, "--worker", str(record), "--", *distill_args(args, mode, out)]
    malloc = " ".join(f"{k}={v}" for k, v in os.environ.items() if k.startswith("MALLOC_"))
    print(f"$ {malloc} OMP_NUM_THREADS=1 torchrun --nproc-per-node {args.ranks} slm",
          " ".join(distill_args(args, mode, out)), flush=True)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL,
                   env={**os.environ, "OMP_NUM_THREADS": "1"})
    rep = json.loads((out / "report.json").read_text())
    rss = [json.loads((record / f"rank{r}.json").read_text())["peak_rss"]
           for r in range(args.ranks)]
    return {"peak_rss": rss, "state_bytes": rep["state_bytes_per_rank"],
            "tokens_per_s": rep["tokens_per_s"], "tokens": rep["tokens"], "steps": rep["steps"],
            "final_loss": rep["final_loss"], "val_ppl": rep["val_ppl"],
            "train_time_s": rep["train_time_s"], "params": rep["params"]}


def main() -> None:
    if "--worker" in sys.argv:
        i = sys.argv.index("--worker")
        worker(Path(sys.argv[i + 1]), sys.argv[sys.argv.index("--") + 1:])
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", default="smollm2-135m")
    ap.add_argument("--student", default="smollm2-135m")
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--val-tokens", type=int, default=2048)
    ap.add_argument("--work", default="/tmp/bench-distill-scale")
    args = ap.parse_args()
    work = Path(args.work)
    res = {mode: arm(args, mode, work) for mode in ("ddp", "fsdp")}
    mib = 2 ** 20
    print(f"\n{'':6} {'state/rank MiB':>15} " + " ".join(f"{f'rank{r} peak RSS MiB':>19}"
                                                      for r in range(args.ranks))
          + f" {'tok/s':>7} {'final loss':>11} {'val ppl':>8}")
    for mode, r in res.items():
        print(f"{mode:6} {r['state_bytes'] / mib:15.0f} "
              + " ".join(f"{b / mib:19.0f}" for b in r["peak_rss"])
              + f" {r['tokens_per_s']:7.1f} {r['final_loss']:11.4f} {r['val_ppl']:8.2f}")
    d, f = res["ddp"], res["fsdp"]
    print(f"\nfsdp / ddp: state per rank {f['state_bytes'] / d['state_bytes']:.2f}, peak RSS "
          + ", ".join(f"rank{r} {f['peak_rss'][r] / d['peak_rss'][r]:.2f}"
                      for r in range(args.ranks))
          + f", tok/s {f['tokens_per_s'] / d['tokens_per_s']:.2f}")
    (work / "results.json").write_text(json.dumps({"args": vars(args), **res}, indent=1))
    print(f"results: {work / 'results.json'}")


if __name__ == "__main__":
    main()

"""Pruning SmolLM2-135M: quality, size, speed and time per method, side by side.

Calibration: ``--nsamples`` x ``--seqlen`` tokens of python-docs (train split).
Perplexity: held-out python-docs (val split), scored as ``slm eval`` scores it.
Decode speed: greedy, PyTorch engine, each pruned model timed in rounds
interleaved with the unpruned one; ratios come from the same rounds.

    .venv/bin/python bench/prune.py --nsamples 32 --eval-tokens 4096 --bf16-calib
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from slmkit.compress.prune import PruneConfig, prune_model  # noqa: E402
from slmkit.compress.prune.calib import calib_blocks  # noqa: E402
from slmkit.compress.prune.report import heldout_perplexity, sparse_format_bytes  # noqa: E402
from slmkit.engines import open_engine  # noqa: E402
from slmkit.evaluate import measure_speed  # noqa: E402
from slmkit.models.io import SLM, count_params, dir_bytes, load, save  # noqa: E402

MODEL = "smollm2-135m"
SPARSE = [("magnitude", 0.5, None), ("wanda", 0.5, None), ("sparsegpt", 0.5, None),
          ("magnitude", None, "2:4"), ("wanda", None, "2:4"), ("sparsegpt", None, "2:4")]
STRUCT = [("depth", 0.7), ("width", 0.7), ("depth", 0.5), ("width", 0.5)]


def disk_bytes(slm: SLM) -> int:
    with tempfile.TemporaryDirectory() as d:
        return dir_bytes(save(slm, Path(d) / "m"))


def decode_ratio(base: SLM, pruned: SLM, rounds: int, gen: int) -> tuple[float, float]:
    """Best decode tok/s of each over interleaved rounds (base, pruned, base, ...)."""
    prompt = base.tokenizer("def parse(text):\n    \"\"\"Parse", add_special_tokens=False)["input_ids"]
    best = {"base": 0.0, "pruned": 0.0}
    for _ in range(rounds):
        for name, slm in (("base", base), ("pruned", pruned)):
            r = measure_speed(open_engine(slm, "pytorch"), prompt, gen_tokens=gen, repeats=1)
            best[name] = max(best[name], r["decode_tok_s"])
    return best["base"], best["pruned"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nsamples", type=int, default=128)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--eval-tokens", type=int, default=8192)
    ap.add_argument("--bf16-calib", action="store_true")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved decode-speed rounds")
    ap.add_argument("--gen-tokens", type=int, default=32)
    ap.add_argument("--only", default="", help="comma list: sparse,struct (default both)")
    ap.add_argument("--out", default="bench/results/prune.json")
    args = ap.parse_args()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    results = json.loads(out.read_text()) if out.exists() else {}
    results["setup"] = {k: v for k, v in vars(args).items()} | {
        "threads": torch.get_num_threads(), "model": MODEL}

    base = load(MODEL)
    ids = calib_blocks("python-docs", base.tokenizer, args.seqlen, args.nsamples)
    ppl = lambda m: heldout_perplexity(SLM(m, base.tokenizer, MODEL), "python-docs",  # noqa: E731
                                       args.eval_tokens)
    if "base" not in results:
        results["base"] = {"ppl": ppl(base.model), "params": count_params(base.model),
                           "bytes": dir_bytes(base.path)}
        print("base", results["base"], flush=True)
    only = set(args.only.split(",")) if args.only else {"sparse", "struct"}
    sparse = SPARSE if "sparse" in only else []
    struct = STRUCT if "struct" in only else []
    runs = sparse[:3] + struct + sparse[3:]           # the 50% table first, 2:4 last
    for method, a, b in [(r[0], r[1], r[2] if len(r) > 2 else None) for r in runs]:
        key = f"{method}-{b or a}"
        if key in results:
            continue
        cfg = (PruneConfig(method=method, target=a) if method in ("depth", "width") else
               PruneConfig(method=method, sparsity=a, pattern=b,
                           calib_autocast=args.bf16_calib))
        model = load(MODEL).model
        t0 = time.perf_counter()
        pruned, info = prune_model(model, ids, cfg)
        row = {"method": method, "setting": str(b or a), "time_s": time.perf_counter() - t0,
               "ppl": ppl(pruned), "params": count_params(pruned), "structure": info}
        slm = SLM(pruned, base.tokenizer, MODEL, dict(base.meta))
        if method in ("depth", "width"):
            row["bytes"] = disk_bytes(slm)
            row["decode_base_tok_s"], row["decode_tok_s"] = decode_ratio(
                base, slm, args.rounds, args.gen_tokens)
        else:
            row["bytes"] = results["base"]["bytes"]
            row["sparse_format_bytes"] = sparse_format_bytes(pruned, cfg.nm)
        results[key] = row
        out.write_text(json.dumps(results, indent=2))
        print(key, {k: v for k, v in row.items() if k != "structure"}, flush=True)
    print_table(results)


def print_table(results: dict) -> None:
    base = results["base"]
    print(f"\nunpruned: ppl {base['ppl']:.3f}, {base['params']:,} params, {base['bytes']:,} B")
    print("| method | setting | ppl | ppl vs unpruned | params | size on disk | "
          "decode tok/s (pruned / unpruned) | prune time s |")
    print("|---|---|---|---|---|---|---|---|")
    for k, r in results.items():
        if k in ("base", "setup"):
            continue
        dec = (f"{r['decode_tok_s']:.1f} / {r['decode_base_tok_s']:.1f} "
               f"({r['decode_tok_s'] / r['decode_base_tok_s']:.2f}x)") if "decode_tok_s" in r \
            else "same (no sparse kernels)"
        print(f"| {r['method']} | {r['setting']} | {r['ppl']:.2f} | "
              f"{r['ppl'] / base['ppl'] - 1:+.1%} | {r['params'] / base['params']:.2f}x | "
              f"{r['bytes'] / base['bytes']:.2f}x | {dec} | {r['time_s']:.0f} |")


if __name__ == "__main__":
    main()

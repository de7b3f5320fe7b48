"""The default build's figures, and `slm plan`'s predictions against measured decode speed.

    # original vs final of a finished build (runs/default), re-measured side by side
    .venv/bin/python bench/build.py build [--run runs/default] [--rounds 3]

    # plan: predicted vs measured decode tok/s of GGUF files on llama.cpp
    .venv/bin/python bench/build.py plan [--run runs/default] [--rounds 3] [--fit]

`build` reads runs/<name>/report.json (the build's own eval: perplexity on
held-out python-docs and on wordnet-glosses) and re-measures decode speed of
the original and the final GGUF (and the built-in Q4_1 file the model ships
as) round-robin, so background load hits all alike; the best round counts.

`plan` measures the machine (bandwidth, matmul) and the decode speed of each
GGUF in the same rounds, and prints measured / predicted. The built-in files
are requantized with llama.cpp (SmolLM2 to f16, q8_0, q5_0, q4_0, q4_k_m; Gemma
to f16, q8_0, q4_1, q4_0) to give points of single weight types. `--fit` refits
plan.KERNEL_RATE (per GGML type) and plan.LAYER_OVERHEAD_S by non-negative
least squares on per-token time, leaving out the files named by `--hold-out`;
`--save`/`--load` keep the measurements so a fit can be redone without them.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))


def decode_tok_s(engine, prompt: list[int], n: int) -> float:
    from slmkit.evaluate import measure_speed
    return measure_speed(engine, prompt, n, repeats=1)["decode_tok_s"]


def measure_files(files: dict[str, Path], rounds: int, n: int) -> dict[str, float]:
    """Best-of-rounds greedy decode tok/s of each GGUF, round-robin."""
    from slmkit.engines import open_engine
    engines = {k: open_engine(str(p), "llama.cpp", n_ctx=512) for k, p in files.items()}
    prompt = engines[next(iter(engines))].tokenize("The Python language reference says that")
    best = {k: 0.0 for k in files}
    for e in engines.values():
        decode_tok_s(e, prompt, 8)                       # warm-up
    for i in range(rounds):
        for k, e in engines.items():
            best[k] = max(best[k], decode_tok_s(e, prompt, n))
        print(f"round {i + 1}: " + ", ".join(f"{k} {v:.1f}" for k, v in best.items()),
              file=sys.stderr, flush=True)
    return best


def requantized(src: Path, qtype: str, out_dir: Path) -> Path:
    """The built-in GGUF re-stored as ``qtype`` by llama.cpp's quantizer (cached)."""
    import llama_cpp
    out = out_dir / f"{src.stem}.{qtype}.gguf"
    if out.exists():
        return out
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{qtype.upper()}")
    params.allow_requantize = True
    tmp = out.with_suffix(".tmp")
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), params)
    if rc != 0:
        raise RuntimeError(f"llama.cpp could not requantize {src} to {qtype}")
    tmp.replace(out)
    return out


def plan_files(run: Path | None) -> dict[str, Path]:
    from slmkit.models.io import builtin_gguf
    from slmkit.paths import cache_dir
    out_dir = cache_dir() / "bench-plan"
    out_dir.mkdir(parents=True, exist_ok=True)
    smol, gemma = builtin_gguf("smollm2-135m"), builtin_gguf("gemma3-270m")
    files = {"smollm2-135m Q4_1 (built-in)": smol, "gemma3-270m Q4_K_M (built-in)": gemma}
    for q in ("f16", "q8_0", "q5_0", "q4_0", "q4_k_m"):
        files[f"smollm2-135m {q}"] = requantized(smol, q, out_dir)
    for q in ("f16", "q8_0", "q4_1", "q4_0"):
        files[f"gemma3-270m {q}"] = requantized(gemma, q, out_dir)
    if run and (run / "report.json").exists():
        rep = json.loads((run / "report.json").read_text())
        for s in rep["steps"]:
            if s["artifact"] and str(s["artifact"]).endswith(".gguf"):
                # paths in the report are as the build was called: relative to its cwd
                path = Path(s["artifact"])
                if not path.is_absolute():
                    path = run / path.relative_to(rep["run_dir"])
                files[f"build: {s['name']}"] = path
    return files


def fit(rows: list[tuple[dict, int, float]], probe) -> tuple[dict[str, float], float]:
    """Per-type kernel rates and the per-layer overhead, by non-negative least squares.

    rows: (weights read per token by GGML type, layers, measured tok/s). Fits
    t = sum_type weights * k_type + layers * c on relative error; the rate of a type
    is then 2 / (k_type * probed fp32 FLOP/s).
    """
    import numpy as np
    types = sorted({t for w, _, _ in rows for t in w if t != "F32"})
    a = np.array([[w.get(t, 0) / 1e6 for t in types] + [layers] for w, layers, _ in rows])
    t = np.array([1.0 / r for *_, r in rows])
    a, b = a / t[:, None], np.ones(len(t))                 # relative error
    keep = list(range(a.shape[1]))
    while True:                                             # drop negative terms, refit
        x, *_ = np.linalg.lstsq(a[:, keep], b, rcond=None)
        if (x >= 0).all():
            break
        keep.pop(int(np.argmin(x)))
    coef = np.zeros(a.shape[1])
    coef[keep] = x
    rates = {ty: round(float(2e6 / (coef[i] * probe.fp32_gflops * 1e9)), 3)
             for i, ty in enumerate(types) if coef[i] > 0}
    return rates, float(coef[-1])


def cmd_plan(args) -> None:
    from slmkit import plan
    if args.load:
        saved = json.loads(args.load.read_text())
        files = {k: Path(v) for k, v in saved["files"].items()}
        probe, measured = plan.Probe(**saved["probe"]), saved["measured"]
    else:
        files = plan_files(args.run)
        if args.only_builtin:
            files = {k: v for k, v in files.items() if "built-in" in k or "f16" in k}
        probes = [plan.probe_machine() for _ in range(2)]
        measured = measure_files(files, args.rounds, args.tokens)
        probes.append(plan.probe_machine())
        # best bandwidth seen; fp32 rate as the mean, since decode speed tracks it
        probe = max(probes, key=lambda p: p.bandwidth_gbs)
        probe.fp32_gflops = round(sum(p.fp32_gflops for p in probes) / len(probes), 1)
        if args.save:
            args.save.write_text(json.dumps({"files": {k: str(v) for k, v in files.items()},
                                             "probe": probe.__dict__, "measured": measured},
                                            indent=1))
    print(f"probe: {probe.bandwidth_gbs} GB/s, fp32 {probe.fp32_gflops} GFLOP/s, "
          f"bf16 {probe.bf16_gflops} GFLOP/s, {probe.cores} cores")
    rows = [(name, plan.predict_gguf(path, probe), measured[name]) for name, path in files.items()]
    _plan_table(plan, rows)                        # the constants slmkit ships
    if args.fit:
        held = [h for h in (args.hold_out or "").split(",") if h]
        train = [(p["weights"], p["layers"], m) for n, p, m in rows
                 if not any(h in n for h in held)]
        rates, c = fit(train, probe)
        print(f"\nfit on {len(train)} files (held out: {', '.join(held) or 'none'}): "
              f"KERNEL_RATE = {rates}, LAYER_OVERHEAD_S = {c:.2e}")
        plan.KERNEL_RATE.update(rates)
        plan.LAYER_OVERHEAD_S = c
        _plan_table(plan, [(n, plan.predict_gguf(files[n], probe), m) for n, _, m in rows])


def _plan_table(plan, rows) -> None:
    print(f"constants: KERNEL_RATE = {plan.KERNEL_RATE}, "
          f"LAYER_OVERHEAD_S = {plan.LAYER_OVERHEAD_S:.2e}, EFFICIENCY = {plan.EFFICIENCY}")
    print("| GGUF | weight types (M weights read/token) | layers | predicted tok/s "
          "| measured tok/s | measured/predicted |")
    print("|---|---|---:|---:|---:|---:|")
    for name, pred, meas in rows:
        types = ", ".join(f"{t} {n / 1e6:.1f}" for t, n in
                          sorted(pred["weights"].items(), key=lambda kv: -kv[1]) if t != "F32")
        print(f"| {name} | {types} | {pred['layers']} | {pred['tok_s']:.1f} | {meas:.1f} | "
              f"{meas / pred['tok_s']:.2f} |")


def cmd_build(args) -> None:
    from slmkit.models.io import builtin_gguf
    rep = json.loads((args.run / "report.json").read_text())
    c = rep["comparison"]
    rows = {r["stage"]: r for r in rep["stages"]}
    orig, final = rows[c["original"]], rows[c["final"]]
    files = {"original": Path(rep["steps"][[s["name"] for s in rep["steps"]].index(
        c["original"])]["artifact"]), "final": Path(rep["final_artifact"]),
        "shipped Q4_1": builtin_gguf("smollm2-135m")}
    speed = measure_files(files, args.rounds, args.tokens)
    shipped = files["shipped Q4_1"].stat().st_size
    print(f"build {rep['recipe']['name']} ({rep['build_seconds'] / 60:.1f} min); "
          f"decode re-measured best of {args.rounds} rounds, {args.tokens} tokens")
    print("| model | params | bytes | decode tok/s (build eval) | decode tok/s (re-measured) "
          "| held-out python-docs ppl | wordnet-glosses ppl |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, r, key in ((f"original ({c['original']})", orig, "original"),
                          (f"final ({c['final']})", final, "final")):
        print(f"| {label} | {r['params'] / 1e6:.1f}M | {r['bytes'] / 1e6:.1f} MB | "
              f"{r['decode_tok_s']:.1f} | {speed[key]:.1f} | {r['ppl']:.3f} | "
              f"{r['ppl_general']:.3f} |")
    print(f"| shipped Q4_1 file (reference) | - | {shipped / 1e6:.1f} MB | - | "
          f"{speed['shipped Q4_1']:.1f} | - | - |")
    print(f"final vs original: {orig['bytes'] / final['bytes']:.2f}x smaller, "
          f"{speed['final'] / speed['original']:.2f}x faster (re-measured; build eval "
          f"{final['decode_tok_s'] / orig['decode_tok_s']:.2f}x), "
          f"domain ppl x{final['ppl'] / orig['ppl']:.3f}, general ppl "
          f"x{final['ppl_general'] / orig['ppl_general']:.3f}")
    print(f"final vs shipped Q4_1: {shipped / final['bytes']:.2f}x smaller, "
          f"{speed['final'] / speed['shipped Q4_1']:.2f}x faster")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=("build", "plan"))
    ap.add_argument("--run", type=Path, default=Path("runs/default"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--fit", action="store_true", help="plan: refit the kernel rates")
    ap.add_argument("--hold-out", help="plan --fit: comma-separated name parts left out of the fit")
    ap.add_argument("--save", type=Path, help="plan: write the probe and measurements as JSON")
    ap.add_argument("--load", type=Path, help="plan: use saved measurements, measure nothing")
    ap.add_argument("--only-builtin", action="store_true", help="plan: the built-in files and f16")
    args = ap.parse_args()
    cmd_build(args) if args.what == "build" else cmd_plan(args)


if __name__ == "__main__":
    main()

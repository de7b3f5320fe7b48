"""Quantization and GGUF export of SmolLM2-135M: perplexity, bytes, decode speed, one table.

Perplexity: non-overlapping 512-token blocks of python-docs' held-out split,
the same token ids for every row (PyTorch rows score them with the model,
GGUF rows with llama.cpp). Decode: greedy, from the same prompt; speed rounds
are interleaved across rows and the median is reported with its ratio to fp32
PyTorch measured in the same run.

    .venv/bin/python bench/quantize.py [--blocks 8] [--calib-samples 32] [--rounds 2]
        [--workdir DIR [--reuse]] [--no-gptq]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import tempfile
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
MODEL = "smollm2-135m"


def block_ppl(engine, held):
    """evaluate's perplexity with disjoint windows of one block each (stride = block)."""
    from slmkit.evaluate.perplexity import perplexity
    T = held.shape[1]
    return perplexity(engine, held.flatten().tolist(), T, T, progress=False)["ppl"]


def pt_ppl(slm, held):
    from slmkit.evaluate.perplexity import model_engine
    return block_ppl(model_engine(slm.model, slm.tokenizer), held)


def cpp_ppl(path, held):
    from slmkit.engines.llamacpp import LlamaCppEngine
    return block_ppl(LlamaCppEngine(path, n_ctx=held.shape[1] + 8, logits_all=True), held)


def speed(engine, n):
    from slmkit.engines import GenStats
    st = GenStats()
    ids = engine.tokenize("def parse_args(argv):\n    ")
    for _ in engine.token_ids(ids, n, 0.0, 1.0, 0, st, ignore_eos=True):
        pass
    return (st.completion_tokens - 1) / st.decode_s


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--blocks", type=int, default=8)
    ap.add_argument("--calib-samples", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--no-gptq", action="store_true", help="leave out the GPTQ rows")
    ap.add_argument("--reuse", action="store_true", help="reuse outputs already in --workdir")
    ap.add_argument("--gptq-variants", action="store_true",
                    help="add GPTQ rows with activation order, symmetric and asymmetric, "
                         "with and without the clipping search")
    args = ap.parse_args()
    import slmkit
    from slmkit.compress.quantize import QuantizeConfig, run_quantize
    from slmkit.compress.quantize import first_blocks
    from slmkit.engines import open_engine
    from slmkit.export import ExportConfig, run_export
    from slmkit.models.io import dir_bytes
    torch.set_num_threads(os.cpu_count())
    work = Path(args.workdir or tempfile.mkdtemp(prefix="slm-bench-q-"))
    base = slmkit.load(MODEL)
    held = first_blocks("python-docs", base.tokenizer, 512, "val", args.blocks)
    rows = {"fp32 (PyTorch)": {"kind": "pt", "path": base.path}}
    quant = {"int8 RTN (per-channel)": dict(method="rtn", bits=8, group_size=-1),
             "int4 RTN g128": dict(method="rtn", bits=4, group_size=128),
             "int4 GPTQ g128 sym, no clip": dict(method="gptq", bits=4, group_size=128,
                                                 clip=False),
             "int4 GPTQ g128 sym": dict(method="gptq", bits=4, group_size=128)}
    if args.gptq_variants:
        quant["int4 GPTQ g128 sym act-order"] = dict(method="gptq", bits=4, group_size=128,
                                                     act_order=True)
        quant["int4 GPTQ g128 asym act-order, no clip"] = dict(
            method="gptq", bits=4, group_size=128, act_order=True, sym=False, clip=False)
        quant["int4 GPTQ g128 asym act-order"] = dict(method="gptq", bits=4, group_size=128,
                                                      act_order=True, sym=False)
    if args.no_gptq:
        quant = {k: v for k, v in quant.items() if v["method"] != "gptq"}
    for name, q in quant.items():
        out = work / re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
        if args.reuse and (out / "report.json").exists():
            rep = json.loads((out / "report.json").read_text())
        else:
            shutil.rmtree(out, ignore_errors=True)
            rep = run_quantize(MODEL, out, QuantizeConfig(**q, calib_samples=args.calib_samples,
                                                          eval_tokens=0, speed_tokens=0))
        rows[name] = {"kind": "pt", "path": out, "quantize_s": rep["quantize_s"],
                      "peak_rss_bytes": rep["peak_rss_bytes"]}
        if "mean_output_rel_error" in rep:
            rows[name]["layer_err"] = (rep["mean_output_rel_error"], rep["mean_rtn_output_rel_error"])
    for t in ("f16", "q8_0", "q4_k_m", "q4_0"):
        out = work / f"smollm2-{t}.gguf"
        rpath = out.with_name(out.name + ".report.json")
        rep = json.loads(rpath.read_text()) if args.reuse and rpath.exists() and out.exists() \
            else run_export(base, out, ExportConfig(type=t, parity_tokens=256), overwrite=True)
        rows[f"GGUF {t} (llama.cpp)"] = {"kind": "cpp", "path": out, "parity": rep["parity"]}
    if "int4 GPTQ g128 sym" in rows:
        gq = rows["int4 GPTQ g128 sym"]["path"]
        out = work / "smollm2-gptq-q4_0.gguf"
        rep = run_export(gq, out, ExportConfig(type="q4_0", parity_tokens=256), overwrite=True)
        rows["GGUF q4_0 from GPTQ g128 (llama.cpp)"] = {"kind": "cpp", "path": out,
                                                       "parity": rep["parity"],
                                                       "packed_direct": rep["packed_direct"]}
    measure(rows, held, args)
    table(rows)
    (work / "results.json").write_text(json.dumps(rows, indent=2, default=str))


def measure(rows, held, args):
    import slmkit
    from slmkit.compress.quantize import model_bytes
    from slmkit.engines import open_engine
    from slmkit.models.io import dir_bytes
    for name, r in rows.items():
        if r["kind"] == "pt":
            slm = slmkit.load(r["path"])
            r["ppl"] = pt_ppl(slm, held)
            r["memory_bytes"] = model_bytes(slm.model)
        else:
            r["ppl"] = cpp_ppl(r["path"], held)
        r["bytes"] = dir_bytes(Path(r["path"]))
        r["tok_s"] = []
        print(name, "ppl", round(r["ppl"], 3), "bytes", r["bytes"], flush=True)
    for _ in range(args.rounds):                       # interleaved speed rounds
        for name, r in rows.items():
            eng = open_engine(slmkit.load(r["path"])) if r["kind"] == "pt" else \
                open_engine(str(r["path"]))
            r["tok_s"].append(speed(eng, args.tokens))
            del eng


def table(rows):
    ref = rows["fp32 (PyTorch)"]
    ref_s, ref_p = statistics.median(ref["tok_s"]), ref["ppl"]
    print("\n| model | perplexity | vs fp32 | bytes | decode tok/s | speed vs fp32 |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, r in rows.items():
        s = statistics.median(r["tok_s"])
        print(f"| {name} | {r['ppl']:.3f} | {100 * (r['ppl'] / ref_p - 1):+.2f}% | "
              f"{r['bytes'] / 2**20:.1f} MiB | {s:.1f} | {s / ref_s:.2f}x |")
    for name, r in rows.items():
        extra = {k: r[k] for k in ("layer_err", "quantize_s", "peak_rss_bytes", "memory_bytes",
                                   "packed_direct") if k in r}
        if "parity" in r:
            extra["argmax_agreement"] = r["parity"]["argmax_agreement"]
        print(name, json.dumps(extra))


if __name__ == "__main__":
    main()

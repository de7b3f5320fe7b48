"""slmkit's perplexity beside the tools users check it with, on SmolLM2-135M-Instruct.

One held-out text file (the python-docs validation split, topics joined by blank
lines: one document), its first ``--tokens`` tokens, windows of 512:

- the Hugging Face perplexity guide's loop in plain transformers (the model
  slmkit.load gives, weights dequantized from the shipped Q4_1 GGUF);
- slmkit's perplexity through the PyTorch and the llama.cpp engine, in the HF
  convention (stride 512 and 256) and in llama.cpp's convention;
- llama.cpp's own ``llama-perplexity`` tool on the same file and the shipped GGUF
  (``--llama-perplexity PATH``; build it from llama-cpp-python's vendored sources:
  ``cmake -B build vendor/llama.cpp -DGGML_NATIVE=OFF && cmake --build build
  --target llama-perplexity``).

    .venv/bin/python bench/perplexity_fidelity.py [--tokens 10240] \\
        [--llama-perplexity build/bin/llama-perplexity] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import tempfile
import time
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@torch.no_grad()
def hf_guide(model, ids: list[int], max_length: int, stride: int) -> dict:
    """https://huggingface.co/docs/transformers/perplexity, weighting each window by the
    labels it really scores."""
    input_ids = torch.tensor([ids])
    seq_len = input_ids.size(1)
    nll_sum, n_tokens, prev_end_loc = 0.0, 0, 0
    for begin_loc in range(0, seq_len, stride):
        end_loc = min(begin_loc + max_length, seq_len)
        trg_len = end_loc - prev_end_loc
        inp = input_ids[:, begin_loc:end_loc]
        target_ids = inp.clone()
        target_ids[:, :-trg_len] = -100
        loss = model(inp, labels=target_ids).loss.item()
        n = int((target_ids[:, 1:] != -100).sum())
        nll_sum += loss * n
        n_tokens += n
        prev_end_loc = end_loc
        if end_loc == seq_len:
            break
    return {"ppl": math.exp(nll_sum / n_tokens), "tokens": n_tokens}


def llama_tool(binary: str, gguf: str, text_file: str, n_ctx: int, chunks: int) -> dict:
    from slmkit.engines.llama_lib import repack_enabled
    cmd = [binary, "-m", gguf, "-f", text_file, "-c", str(n_ctx), "-b", str(n_ctx),
           "--chunks", str(chunks), "-t", str(os.cpu_count())]
    if not repack_enabled():          # as slmkit loads it (AMX machines, see llama_lib)
        cmd.append("--no-repack")
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    log = out.stdout + out.stderr
    m = re.search(r"Final estimate: PPL = ([0-9.]+)", log)
    return {"ppl": float(m.group(1)), "tokens": chunks * (n_ctx - n_ctx // 2 - 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=10240)
    ap.add_argument("--strides", default="512,256", help="HF-convention strides to run")
    ap.add_argument("--llama-perplexity", default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    import slmkit
    from slmkit.data import load_split, record_text
    from slmkit.engines import open_engine
    from slmkit.evaluate import engine_tokens, perplexity
    from slmkit.models.io import builtin_gguf

    text = "\n\n".join(record_text(r) for r in load_split("python-docs", "val"))
    tmp = Path(tempfile.mkdtemp()) / "held-out.txt"
    tmp.write_text(text)
    gguf = str(builtin_gguf("smollm2-135m"))
    slm = slmkit.load("smollm2-135m")
    pt = open_engine(slm)
    lc = open_engine(gguf, "llama.cpp", n_ctx=512, logits_all=True)
    ids = engine_tokens(pt, str(tmp), "all", args.tokens)
    assert ids == engine_tokens(lc, str(tmp), "all", args.tokens), "tokenizers differ"
    rows = []

    def row(name, fn):
        t0 = time.perf_counter()
        r = fn()
        rows.append({"path": name, "ppl": r["ppl"], "tokens": r["tokens"],
                     "bits_per_byte": r.get("bits_per_byte"), "s": time.perf_counter() - t0})
        print(json.dumps(rows[-1]), flush=True)

    for stride in (int(x) for x in args.strides.split(",")):
        row(f"transformers, HF guide loop, window 512 stride {stride}",
            lambda: hf_guide(slm.model, ids, 512, stride))
        row(f"slm eval, pytorch, hf 512/{stride}",
            lambda: perplexity(pt, ids, 512, stride, progress=False))
        row(f"slm eval, llama.cpp, hf 512/{stride}",
            lambda: perplexity(lc, ids, 512, stride, progress=False))
    row("slm eval, pytorch, llama.cpp convention c=512",
        lambda: perplexity(pt, ids, 512, 512, progress=False, convention="llama.cpp"))
    row("slm eval, llama.cpp, llama.cpp convention c=512",
        lambda: perplexity(lc, ids, 512, 512, progress=False, convention="llama.cpp"))
    if args.llama_perplexity:
        row("llama.cpp llama-perplexity -c 512",
            lambda: llama_tool(args.llama_perplexity, gguf, str(tmp), 512, len(ids) // 512))
    if args.json:
        Path(args.json).write_text(json.dumps({"tokens": len(ids), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()

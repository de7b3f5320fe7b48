"""slmkit's SparseGPT, Wanda and GPTQ beside the papers' own code, on the same model and data.

The reference implementations run from local checkouts of their public repositories
(none of their code is part of slmkit), given by path:

    IST-DASLab/sparsegpt  -> --sparsegpt DIR   (llama.py: llama_sequential, SparseGPT)
    locuslab/wanda        -> --wanda DIR       (lib/prune.py: prune_wanda)
    IST-DASLab/gptq       -> --gptq DIR        (llama.py: llama_sequential, GPTQ, Quantizer)

Each reference is driven through its own top-level routine, unmodified, on SmolLM2-135M
in float32 on the CPU. What is adapted, and nothing else:

* device: ``torch.cuda.synchronize`` (called unconditionally at the end of
  ``fasterprune``/``fasterquant``) is replaced by a no-op; the routines get ``"cpu"`` as their
  device (``DEV`` is never touched), and Wanda's ``model.hf_device_map`` is set to ``{}``
  (an accelerate attribute its code reads; the model is not dispatched).
* architecture: their loops call each decoder layer as ``layer(x, attention_mask=...,
  [position_ids=...])``, as transformers did in 2023. Current Llama layers take the rotary
  ``position_embeddings`` from the model instead, so a forward pre-hook on every decoder layer
  fills in the keyword arguments the model itself passes (``position_embeddings``,
  ``position_ids``) when the caller left them out. The hook changes no value the layer would
  get from the model's own forward pass.
* data: the routines' globals ``args`` (set by their ``__main__``) are set from this script's
  options, and Wanda's ``lib/data.py`` (C4 and WikiText-2 loaders through ``datasets``) is
  replaced by a module whose ``get_loaders`` returns this script's calibration sequences.
  Every method, reference and slmkit, sees the same ``--nsamples`` sequences of ``--seqlen``
  python-docs train tokens in the same order (``slm prune``'s own ``calib_blocks``).

slmkit runs the functions ``slm prune`` and ``slm quantize`` call (``prune_model``,
``quantize.gptq.quantize``) on the same tensor of calibration ids. Every model, pruned or
quantized by either side, is scored by the same function on the same held-out text:
``--eval-tokens`` of python-docs' val split, window 512, stride 256, as ``slm eval`` does.

    .venv/bin/python bench/reference_parity.py --sparsegpt ../peers/sparsegpt \\
        --wanda ../peers/wanda --gptq ../peers/gptq --nsamples 32 --seqlen 512

Results go to ``--out`` (JSON) as each run ends; a run already there is not repeated.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import importlib
import io
import json
import os
import sys
import time
from pathlib import Path
from types import ModuleType, SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from slmkit.compress.prune import PruneConfig, prune_model  # noqa: E402
from slmkit.compress.prune.calib import calib_blocks  # noqa: E402
from slmkit.compress.prune.report import heldout_perplexity  # noqa: E402
from slmkit.models.io import SLM, load  # noqa: E402

MODEL = "smollm2-135m"
PEER_MODULES = ("llama", "quant", "modelutils", "sparsegpt", "gptq", "datautils", "lib",
                "lib.prune", "lib.data", "lib.layerwrapper", "lib.sparsegpt", "lib.ablate",
                "lib.eval", "lib.prune_opt")


# ---------------------------------------------------------------- adapting the references

@contextlib.contextmanager
def peer(path: Path):
    """Import a reference checkout's top-level modules from ``path`` and nowhere else.

    The SparseGPT and GPTQ checkouts both have ``llama.py``, ``quant.py`` and
    ``modelutils.py``, so the modules of one are dropped before the other is imported.
    """
    for name in PEER_MODULES:
        sys.modules.pop(name, None)
    sys.path.insert(0, str(path))
    sync = torch.cuda.synchronize
    torch.cuda.synchronize = lambda *a, **k: None     # device: no CUDA to wait for
    try:
        yield
    finally:
        torch.cuda.synchronize = sync
        sys.path.remove(str(path))
        for name in PEER_MODULES:
            sys.modules.pop(name, None)


@contextlib.contextmanager
def model_layer_kwargs(model, seqlen: int):
    """Give every decoder layer the rotary embeddings and positions its model would pass,
    when the caller (a 2023 layer loop) calls it with only ``attention_mask``."""
    inner = model.model
    pos = torch.arange(seqlen)[None]
    with torch.no_grad():
        rope = inner.rotary_emb(torch.zeros(1, seqlen, 1, dtype=torch.float32), pos)

    def hook(_mod, args, kwargs):
        if kwargs.get("position_embeddings") is None:
            kwargs["position_embeddings"] = rope
        if kwargs.get("position_ids") is None:
            kwargs["position_ids"] = pos
        return args, kwargs

    handles = [layer.register_forward_pre_hook(hook, with_kwargs=True) for layer in inner.layers]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def quietly(fn, *args, **kwargs):
    """Run ``fn``, keeping its per-layer prints out of the bench's output."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        return fn(*args, **kwargs)


def ref_sparsegpt(model, ids, repo: Path, *, sparsity=0.0, prunen=0, prunem=0,
                  true_sequential=False):
    """IST-DASLab/sparsegpt llama.py ``llama_sequential`` (its defaults: blocksize 128, 1%
    dampening, all Linears of a layer calibrated together unless ``--true-sequential``)."""
    with peer(repo), model_layer_kwargs(model, ids.shape[1]):
        llama = importlib.import_module("llama")
        llama.args = SimpleNamespace(
            nsamples=ids.shape[0], sparsity=sparsity, prunen=prunen, prunem=prunem,
            percdamp=0.01, blocksize=128, wbits=16, minlayer=-1, maxlayer=1000,
            prune_only="", invert=False, true_sequential=true_sequential)
        model.seqlen = ids.shape[1]
        quietly(llama.llama_sequential, model, [(b[None],) for b in ids], "cpu")


def ref_wanda(model, ids, repo: Path, *, sparsity=0.0, prunen=0, prunem=0):
    """locuslab/wanda lib/prune.py ``prune_wanda`` (per-output comparison group, no variant)."""
    with peer(repo), model_layer_kwargs(model, ids.shape[1]):
        loader = [(b[None], None) for b in ids]
        data = ModuleType("lib.data")           # in place of its C4 loader (needs `datasets`)
        data.get_loaders = lambda *a, **k: (loader, None)
        sys.modules["lib.data"] = data
        prune = importlib.import_module("lib.prune")
        model.seqlen = ids.shape[1]
        model.hf_device_map = {}
        args = SimpleNamespace(nsamples=ids.shape[0], seed=0, sparsity_ratio=sparsity,
                               use_variant=False)
        quietly(prune.prune_wanda, args, model, None, torch.device("cpu"),
                prune_n=prunen, prune_m=prunem)


def ref_gptq(model, ids, repo: Path, *, wbits=4, groupsize=128, sym=False, act_order=False,
             static_groups=False, true_sequential=False):
    """IST-DASLab/gptq llama.py ``llama_sequential`` (1% dampening, blocks of 128, min-max
    grid: ``--sym`` off by default, as in its argument parser)."""
    with peer(repo), model_layer_kwargs(model, ids.shape[1]):
        llama = importlib.import_module("llama")
        llama.args = SimpleNamespace(
            nsamples=ids.shape[0], wbits=wbits, groupsize=groupsize, sym=sym,
            act_order=act_order, static_groups=static_groups, percdamp=0.01,
            true_sequential=true_sequential)
        model.seqlen = ids.shape[1]
        quietly(llama.llama_sequential, model, [(b[None],) for b in ids], "cpu")


# ---------------------------------------------------------------- slmkit

def slm_prune(model, ids, _repo, **opts):
    prune_model(model, ids, PruneConfig(**opts))


def slm_gptq(model, ids, _repo, *, bits=4, group_size=128, sym=True, act_order=False,
             clip=True):
    from slmkit.compress.quantize import gptq
    gptq.quantize(model, ids, bits, group_size, sym, act_order, clip=clip)


# name -> (reference repo option or None, function, options, what it is)
RUNS = {
    "sparsegpt-50-ref": ("sparsegpt", ref_sparsegpt, dict(sparsity=0.5), "reference"),
    "sparsegpt-50-slm": (None, slm_prune, dict(method="sparsegpt", sparsity=0.5), "slmkit"),
    "sparsegpt-24-ref": ("sparsegpt", ref_sparsegpt, dict(prunen=2, prunem=4), "reference"),
    "sparsegpt-24-slm": (None, slm_prune, dict(method="sparsegpt", pattern="2:4"), "slmkit"),
    "wanda-50-ref": ("wanda", ref_wanda, dict(sparsity=0.5), "reference"),
    "wanda-50-slm": (None, slm_prune, dict(method="wanda", sparsity=0.5), "slmkit"),
    "wanda-24-ref": ("wanda", ref_wanda, dict(prunen=2, prunem=4), "reference"),
    "wanda-24-slm": (None, slm_prune, dict(method="wanda", pattern="2:4"), "slmkit"),
    "gptq-asym-ref": ("gptq", ref_gptq, dict(sym=False), "reference"),
    "gptq-asym-slm": (None, slm_gptq, dict(sym=False, clip=False), "slmkit, reference's grid"),
    "gptq-sym-ref": ("gptq", ref_gptq, dict(sym=True), "reference"),
    "gptq-sym-slm": (None, slm_gptq, dict(sym=True, clip=False), "slmkit, reference's grid"),
    "gptq-default-slm": (None, slm_gptq, dict(), "slmkit default (sym, clip)"),
    # variants: "true sequential" / act-order on both sides
    "sparsegpt-50-seq-ref": ("sparsegpt", ref_sparsegpt, dict(sparsity=0.5,
                             true_sequential=True), "reference --true-sequential"),
    "sparsegpt-50-seq-slm": (None, slm_prune, dict(method="sparsegpt", sparsity=0.5,
                             sequential=True), "slmkit --sequential"),
    "gptq-asym-act-ref": ("gptq", ref_gptq, dict(sym=False, act_order=True, static_groups=True),
                          "reference --act-order --static-groups"),
    "gptq-asym-act-slm": (None, slm_gptq, dict(sym=False, act_order=True, clip=False),
                          "slmkit --act-order --no-clip"),
}
DEFAULT = [k for k in RUNS if "-seq-" not in k and "-act-" not in k]


def layer_check(args) -> list[dict]:
    """One Linear, the same weight and Hessian, through the reference classes
    (``SparseGPT.fasterprune``, ``GPTQ.fasterquant``) and slmkit's solvers: how many pruned
    positions agree, the largest weight difference and each side's relative output error
    ``tr(D H D^T) / tr(W H W^T)``, D the change of the weight."""
    from slmkit.compress.prune.sparsegpt import sparsify
    from slmkit.models.packed.formats import dequantize_weight
    from slmkit.compress.quantize.gptq import gptq_weight, output_error
    gen = torch.Generator().manual_seed(0)
    rows, cols, n = 192, 256, 2048
    x = torch.randn(n, cols, generator=gen) * torch.rand(cols, generator=gen) * 3
    w = torch.randn(rows, cols, generator=gen) * 0.05
    h = 2 / n * x.T @ x
    out = []

    def reference(repo, module, cls, configure, method, **opts):
        with peer(repo):
            mod = importlib.import_module(module)
            lin = torch.nn.Linear(cols, rows, bias=False)
            lin.weight.data = w.clone()
            obj = getattr(mod, cls)(lin)
            obj.H = h.clone()
            configure(obj)
            quietly(getattr(obj, method), **opts)
            return lin.weight.data

    def row(name, ref, mine):
        out.append({"check": name, "same_zeros": float(((ref == 0) == (mine == 0)).float().mean()),
                    "max_abs_diff": float((ref - mine).abs().max()),
                    "ref_error": output_error(w, ref, h), "slmkit_error": output_error(w, mine, h)})
        print(out[-1], flush=True)

    if args.sparsegpt:
        for name, opts, pattern in (("sparsegpt 50%", dict(sparsity=0.5), None),
                                    ("sparsegpt 2:4", dict(sparsity=0, prunen=2, prunem=4),
                                     (2, 4))):
            ref = reference(args.sparsegpt, "sparsegpt", "SparseGPT", lambda o: None,
                            "fasterprune", **opts)
            row(name, ref, sparsify(w, h, sparsity=opts["sparsity"] or 0.5, pattern=pattern))
    if args.gptq:
        for sym in (False, True):
            def configure(obj, sym=sym):
                obj.quantizer = importlib.import_module("quant").Quantizer()
                obj.quantizer.configure(4, perchannel=True, sym=sym, mse=False)
            ref = reference(args.gptq, "gptq", "GPTQ", configure, "fasterquant", groupsize=128)
            q, sc, z = gptq_weight(w, h, 4, 128, sym)
            row(f"gptq 4-bit g128 {'sym' if sym else 'asym'}", ref,
                dequantize_weight(q, sc, z, 4))
    return out


def table(files: list[Path]) -> str:
    """The markdown parity table from one or more result files (runs of one setup)."""
    runs: dict = {}
    for f in files:
        runs.update(json.loads(f.read_text()))
    dense = runs["dense"]["ppl"]
    lines = [f"dense: {dense:.3f}", "",
             "| run | slmkit side | reference ppl | time s | slmkit ppl | time s | slmkit vs ref |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for name in RUNS:
        if not name.endswith("-slm") or name not in runs:
            continue
        ref = runs.get(name[:-4] + "-ref")
        slm = runs[name]
        cells = ([f"{ref['ppl']:.3f}", f"{ref['seconds']:.0f}"] if ref else ["", ""])
        cells += [f"{slm['ppl']:.3f}", f"{slm['seconds']:.0f}"]
        cells.append(f"{100 * (slm['ppl'] / ref['ppl'] - 1):+.2f}%" if ref else "")
        lines.append(f"| {name[:-4]} | {slm['what']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sparsegpt", type=Path, help="checkout of IST-DASLab/sparsegpt")
    ap.add_argument("--wanda", type=Path, help="checkout of locuslab/wanda")
    ap.add_argument("--gptq", type=Path, help="checkout of IST-DASLab/gptq")
    ap.add_argument("--nsamples", type=int, default=32)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--eval-tokens", type=int, default=4096)
    ap.add_argument("--only", default="", help=f"comma list of runs (default: {','.join(DEFAULT)};"
                    f" all: {','.join(RUNS)})")
    ap.add_argument("--out", type=Path, default=Path("bench/results/reference_parity.json"))
    ap.add_argument("--table", type=Path, nargs="+", metavar="JSON",
                    help="print the markdown table of these result files and exit")
    ap.add_argument("--layer-check", action="store_true",
                    help="compare the per-Linear solvers on one random layer and exit")
    args = ap.parse_args()
    if args.layer_check:
        layer_check(args)
        return
    if args.table:
        print(table(args.table))
        return
    names = args.only.split(",") if args.only else DEFAULT
    for name in names:
        if name not in RUNS:
            ap.exit(2, f"error: --only: unknown run '{name}'; choose from {', '.join(RUNS)}\n")
        repo = RUNS[name][0]
        path = getattr(args, repo) if repo else None
        if repo and (path is None or not path.is_dir()):
            ap.exit(2, f"error: run '{name}' needs --{repo} DIR, a checkout of its repository\n")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    setup = {"model": MODEL, "nsamples": args.nsamples, "seqlen": args.seqlen,
             "eval_tokens": args.eval_tokens, "threads": torch.get_num_threads(),
             "torch": torch.__version__}
    if results.get("setup", setup) != setup:
        ap.exit(2, f"error: {args.out} holds runs of another setup; pass another --out\n")
    results["setup"] = setup

    base = load(MODEL)
    base.model.float().eval()
    ids = calib_blocks("python-docs", base.tokenizer, args.seqlen, args.nsamples)

    def ppl(model):
        return heldout_perplexity(SLM(model, base.tokenizer, MODEL), "python-docs",
                                  args.eval_tokens)

    def save():
        args.out.write_text(json.dumps(results, indent=2))

    if "dense" not in results:
        results["dense"] = {"ppl": ppl(base.model)}
        save()
    print(f"dense ppl {results['dense']['ppl']:.3f}", flush=True)
    for name in names:
        if name in results:
            print(name, results[name], flush=True)
            continue
        repo, fn, opts, what = RUNS[name]
        model = copy.deepcopy(base.model)
        t0 = time.perf_counter()
        fn(model, ids, getattr(args, repo) if repo else None, **opts)
        seconds = time.perf_counter() - t0
        zeros = sum(int((lin.weight == 0).sum()) for layer in model.model.layers
                    for lin in layer.modules() if isinstance(lin, torch.nn.Linear))
        total = sum(lin.weight.numel() for layer in model.model.layers
                    for lin in layer.modules() if isinstance(lin, torch.nn.Linear))
        results[name] = {"what": what, "options": opts, "ppl": ppl(model),
                         "seconds": round(seconds, 1),
                         "linear_zeros": round(zeros / max(total, 1), 4)}
        save()
        print(name, results[name], flush=True)
        del model


if __name__ == "__main__":
    main()

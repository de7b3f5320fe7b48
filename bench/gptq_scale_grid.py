"""slmkit's GPTQ solver against the paper's algorithm on real Hessians of SmolLM2-135M.

The paper's algorithm (asymmetric min-max groups of 128, float32 scales) is the transcription
in ``tests/compress/test_quant_gptq_reference.py``. For Linears of one decoder layer, on the
Hessian of 16 x 512 python-docs calibration tokens (``slm prune``'s ``calib_blocks``, the
parity bench's), it prints: the share of weights where slmkit equals the transcription on
slmkit's float16 scale grid, where the transcription's float16 and float32 grids agree, where a
1e-6 relative change of the weight leaves the float32 result unchanged, and each output error.

    .venv/bin/python bench/gptq_scale_grid.py --layer 0
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from slmkit.compress.prune.calib import calib_blocks
from slmkit.compress.quantize import gptq
from slmkit.models.io import load

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "compress"))
from test_quant_gptq_reference import _slmkit, paper_gptq  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layer", type=int, default=0)
    ap.add_argument("--linears", default="self_attn.q_proj,self_attn.v_proj")
    args = ap.parse_args()
    base = load("smollm2-135m")
    base.model.float().eval()
    ids = calib_blocks("python-docs", base.tokenizer, 512, 16)
    layers = base.model.model.layers
    hidden, kwargs = gptq.capture_inputs(base.model, ids)
    with torch.no_grad():
        for li in range(args.layer):          # dense inputs of the chosen layer
            hidden = [gptq._layer_out(layers[li](x, **kw[li])) for x, kw in zip(hidden, kwargs)]
    layer = layers[args.layer]
    lins = {n: m for n, m in layer.named_modules() if isinstance(m, torch.nn.Linear)}
    hess = gptq._hessians(layer, lins, hidden, [kw[args.layer] for kw in kwargs])
    gen = torch.Generator().manual_seed(1)
    for name in args.linears.split(","):
        w, h = lins[name].weight.detach().float(), hess[name]
        mine, p16, p32 = _slmkit(w, h), paper_gptq(w, h, fp16_scale=True), paper_gptq(w, h)
        p32n = paper_gptq(w * (1 + 1e-6 * torch.randn(w.shape, generator=gen)), h)

        def agree(a, b):
            return float(((a - b).abs() <= 1e-2 * (a - w).abs().max()).float().mean())

        print(f"layer {args.layer} {name}: slmkit = paper on fp16 grid "
              f"{float((mine == p16).float().mean()):.4f}, fp16 ~ fp32 grid {agree(p16, p32):.3f}, "
              f"fp32 ~ fp32 of w(1+1e-6 noise) {agree(p32, p32n):.3f}; output error slmkit "
              f"{gptq.output_error(w, mine, h):.6f}, paper fp32 {gptq.output_error(w, p32, h):.6f}",
              flush=True)


if __name__ == "__main__":
    main()

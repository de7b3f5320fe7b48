"""GPTQ int4 g128 on SmolLM2-135M with more calibration: one row in the quantization table.

Same perplexity measurement as bench/quantize.py (non-overlapping 512-token blocks of the
python-docs val split), so the row compares with that table.

    .venv/bin/python bench/gptq_calib.py --calib-samples 128 --asym --act-order
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    import slmkit
    from quantize import MODEL, pt_ppl
    from slmkit.compress.quantize import QuantizeConfig, first_blocks, run_quantize
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calib-samples", type=int, default=128)
    ap.add_argument("--group-size", type=int, default=128)
    ap.add_argument("--asym", action="store_true")
    ap.add_argument("--act-order", action="store_true")
    ap.add_argument("--clip", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--blocks", type=int, default=8)
    args = ap.parse_args()
    base = slmkit.load(MODEL)
    held = first_blocks("python-docs", base.tokenizer, 512, "val", args.blocks)
    with tempfile.TemporaryDirectory() as d:
        rep = run_quantize(MODEL, Path(d) / "q", QuantizeConfig(
            method="gptq", bits=4, group_size=args.group_size, sym=not args.asym,
            act_order=args.act_order, clip=args.clip, calib_samples=args.calib_samples, eval_tokens=0,
            speed_tokens=0))
        ppl = pt_ppl(slmkit.load(Path(d) / "q").model, held)
    print(f"GPTQ int4 g{args.group_size} {'asym' if args.asym else 'sym'}"
          f"{' act-order' if args.act_order else ''}{'' if args.clip else ' no-clip'}, "
          f"{args.calib_samples} calibration "
          f"sequences: ppl {ppl:.3f}, quantize {rep['quantize_s']:.0f} s, "
          f"layer-output error {rep['mean_output_rel_error']:.3e} "
          f"(RTN {rep['mean_rtn_output_rel_error']:.3e})")


if __name__ == "__main__":
    main()

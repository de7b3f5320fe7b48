"""A LoRA on SmolLM2-135M exported as a llama.cpp adapter GGUF: does llama.cpp, applying it to
the base, compute what PyTorch computes with the adapter?

The adapter is r=16, alpha 32 on all seven decoder linear layers, with ``lora_B`` drawn from
N(0, 0.02) (seed 0) so that it moves the outputs the way a short fine-tune does; it is saved
unmerged and exported with ``--format gguf-lora``, whose parity check (256 held-out
python-docs tokens) is printed.

    .venv/bin/python bench/lora_gguf.py --out /tmp/lora-bench
"""
from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

import slmkit  # noqa: E402
from slmkit.export import ExportConfig, run_export  # noqa: E402
from slmkit.tune import adapters  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="work directory (adapter and GGUF)")
    ap.add_argument("--std", type=float, default=0.02, help="std of the random lora_B")
    args = ap.parse_args()
    m = adapters.setup_model(slmkit.load("smollm2-135m").model, "lora", rank=16, alpha=32)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "lora_B" in n:
                p.copy_(args.std * torch.randn(p.shape, generator=g))
    ad = adapters.save_adapter(m, f"{args.out}/adapter", "smollm2-135m",
                               adapters.base_fingerprint(m), "lora")
    rep = run_export(str(ad), f"{args.out}/lora.gguf",
                     ExportConfig(format="gguf-lora", type="f32"), overwrite=True)
    keys = ("lora_layers", "rank", "alpha", "bytes_on_disk", "parity")
    print(json.dumps({k: rep[k] for k in keys}, indent=1))


if __name__ == "__main__":
    main()

"""Does the exported file compute what the PyTorch model computes?

Both models score the same token ids of a fixed held-out text; we compare the
next-token argmax at every position and the perplexity of each (evaluate's, over
one window of all the ids).
"""
from __future__ import annotations

import math

import torch

from ..data import load_split, tokenize_records
from ..device import model_device, resolve_device
from ..evaluate.perplexity import logits_nll

PARITY_TEXT = "python-docs"


def parity_ids(tok, n_tokens: int, text: str = PARITY_TEXT) -> list[int]:
    """The first ``n_tokens`` ids of the held-out split of ``text`` (a corpus or path)."""
    ids: list[int] = []
    for rec in load_split(text, "val"):                 # tokenize only what is needed
        ids += tokenize_records([rec], tok)[0]
        if len(ids) >= n_tokens:
            break
    return ids[:n_tokens]


@torch.no_grad()
def compare(ref: torch.Tensor, got: torch.Tensor, ids: list[int]) -> dict:
    """Argmax agreement and perplexities of two (T, V) logit matrices over ``ids``."""
    v = min(ref.shape[-1], got.shape[-1])
    ref, got = ref[:, :v].float(), got[:, :v].float()
    agree = float((ref.argmax(-1) == got.argmax(-1)).float().mean())
    # one window over all of ids: evaluate's perplexity with max_length = stride = len(ids)
    ppl_ref, ppl_got = (math.exp(logits_nll(x, ids) / (len(ids) - 1)) for x in (ref, got))
    return {"tokens": len(ids), "argmax_agreement": round(agree, 4),
            "max_abs_logit_diff": round(float((ref - got).abs().max()), 5),
            "ppl_pytorch": round(ppl_ref, 4), "ppl_export": round(ppl_got, 4),
            "ppl_diff": round(ppl_got - ppl_ref, 4),
            "ppl_diff_pct": round(100 * (ppl_got / ppl_ref - 1), 3)}


@torch.no_grad()
def pytorch_logits(model, ids: list[int], device: str | None = None) -> torch.Tensor:
    """(T, V) fp32 logits on the CPU; with ``device`` the forward runs there (the model
    returns to where it was)."""
    home = model_device(model)
    run_on = resolve_device(device) if device is not None else home
    model.to(run_on)
    try:
        return model(torch.tensor([ids], device=run_on)).logits[0].float().cpu()
    finally:
        model.to(home)


def gguf_parity(slm, path, ids: list[int], text: str, device: str | None = None) -> dict:
    """Score ``ids`` with llama.cpp on ``path`` and with ``slm``; also compare tokenizers."""
    from ..engines.llamacpp import LlamaCppEngine
    eng = LlamaCppEngine(path, n_ctx=max(64, len(ids) + 8), n_threads=None, logits_all=True)
    try:
        res = compare(pytorch_logits(slm.model, ids, device), eng.logits(ids), ids)
        sample = slm.tokenizer.decode(ids[: min(len(ids), 128)])
        hf_ids = slm.tokenizer(sample, add_special_tokens=False)["input_ids"]
        cpp_ids = eng.llm.tokenize(sample.encode(), add_bos=False, special=True)
        res["tokenizer_match"] = hf_ids == cpp_ids
    finally:
        del eng
    res["engine"] = "llama.cpp"
    res["text"] = text
    return res

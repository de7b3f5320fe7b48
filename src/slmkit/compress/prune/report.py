"""What a prune measured: perplexity, sizes, and the table the CLI prints."""
from __future__ import annotations

import math

from torch import nn

from ...engines import open_engine
from ...evaluate import eval_text, text_perplexity
from ...evaluate.perplexity import heldout_perplexity as model_heldout_perplexity
from ...models.arch import decoder_layers, linear_layers
from ...models.io import tensor_bytes as state_bytes  # bytes as safetensors stores them

SPARSE_NOTE = ("unstructured and N:M sparsity keep every weight's slot: the model on disk is "
               "the same size and runs at the same speed without sparse kernels or "
               "compression; sparse_format_bytes estimates a sparse encoding (nonzeros + index)")


def heldout_perplexity(slm, data: str, max_tokens: int, max_length: int = 512,
                       stride: int = 256, reference=None) -> float:
    """Perplexity of an in-memory SLM on the val split of ``data``, exactly as ``slm eval``
    scores it (same tokens, sliding window of ``max_length`` moving by ``stride``).

    ``reference``: a tokenizer that picks the text and counts its tokens (``slm eval
    --reference``), for models whose own vocabulary differs from it.
    """
    if reference is not None:
        text = eval_text(reference, data, "val", max_tokens)
        return text_perplexity(open_engine(slm, "pytorch"), text, max_length, stride,
                               progress=False)["ppl"]
    return model_heldout_perplexity(slm.model, slm.tokenizer, data, max_tokens, max_length,
                                    stride)["ppl"]


def sparse_format_bytes(model: nn.Module, pattern: tuple[int, int] | None) -> int:
    """Bytes if every pruned Linear were stored sparse: values of nonzeros plus an index.

    Index: a 1-bit mask per weight (unstructured) or log2(M) bits per kept weight (N:M).
    """
    dense = state_bytes(model)
    for layer in decoder_layers(model):
        for m in linear_layers(layer).values():
            w = m.weight
            nnz = int((w != 0).sum())
            index_bits = nnz * math.ceil(math.log2(pattern[1])) if pattern else w.numel()
            dense -= w.numel() * w.element_size()
            dense += nnz * w.element_size() + math.ceil(index_bits / 8)
    return dense


def print_report(report: dict, console) -> None:
    """A rich table of the report: before/after side by side, then per-layer sparsity."""
    from rich.table import Table
    t = Table(title=f"prune: {report['method']}")
    for col in ("", "before", "after", "ratio"):
        t.add_column(col, justify="left" if not col else "right")

    def row(name, a, b, fmt):
        ratio = f"{b / a:.3f}" if a and b is not None else "-"
        t.add_row(name, fmt(a) if a is not None else "-", fmt(b) if b is not None else "-", ratio)

    row("parameters", report["params_before"], report["params_after"], lambda v: f"{v:,}")
    row("bytes on disk", report["bytes_before"], report["bytes_after"], lambda v: f"{v:,}")
    if report.get("sparse_format_bytes"):
        row("sparse format (est.)", report["bytes_before"], report["sparse_format_bytes"],
            lambda v: f"{v:,}")
    row("perplexity", report.get("ppl_before"), report.get("ppl_after"), lambda v: f"{v:.3f}")
    console.print(t)
    if report.get("layer_sparsity"):
        lt = Table(title="sparsity per decoder layer")
        lt.add_column("layer", justify="right")
        lt.add_column("sparsity", justify="right")
        for r in report["layer_sparsity"]:
            lt.add_row(str(r["layer"]), f"{r['sparsity']:.4f}")
        console.print(lt)
    if report["method"] == "vocab":
        st = report["structure"]
        console.print(f"vocabulary {st['vocab_size'][0]:,} -> {st['vocab_size'][1]:,} tokens "
                      f"({st['domain_tokens']:,} used by the domain, covering "
                      f"{st['domain_token_coverage']:.1%} of its tokens); merges "
                      f"{st['merges'][0]:,} -> {st['merges'][1]:,}; perplexity per "
                      "token of the original tokenizer")
    for k in ("removed_layers", "heads", "kv_heads", "intermediate_size"):
        if k in report.get("structure", {}):
            console.print(f"{k}: {report['structure'][k]}")
    console.print(f"prune time {report['prune_time_s']:.1f} s on {report['calib_tokens']:,} "
                  f"calibration tokens; total {report['total_time_s']:.1f} s")
    if report.get("note"):
        console.print(f"[yellow]note:[/] {report['note']}")

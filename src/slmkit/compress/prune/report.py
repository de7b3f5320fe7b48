"""What a prune measured: perplexity, sizes, and the table the CLI prints."""
from __future__ import annotations

import math

import torch
from torch import nn

from ...models.arch import decoder_layers, linear_layers

SPARSE_NOTE = ("unstructured and N:M sparsity keep every weight's slot: the model on disk is "
               "the same size and runs at the same speed without sparse kernels or "
               "compression; sparse_format_bytes estimates a sparse encoding (nonzeros + index)")


@torch.no_grad()
def perplexity(model: nn.Module, ids: list[int] | torch.Tensor, seqlen: int = 512,
               batch_size: int = 4) -> float:
    """exp(mean next-token NLL) over non-overlapping windows of ``seqlen`` tokens.

    Args:
        model: an HF CausalLM.
        ids: token ids of held-out text (at least 2).
        seqlen: window length; a shorter last window is scored too.
    """
    ids = torch.as_tensor(ids, dtype=torch.long).flatten()
    nll, count = 0.0, 0
    n_full = len(ids) // seqlen
    windows = list(ids[: n_full * seqlen].view(n_full, seqlen).split(batch_size)) if n_full else []
    if len(ids) - n_full * seqlen > 1:
        windows.append(ids[n_full * seqlen:][None])
    for x in windows:
        logits = model(x, use_cache=False).logits.float()                 # (B, T, vocab)
        loss = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="sum")
        nll += float(loss)
        count += x[:, 1:].numel()
    return math.exp(nll / max(count, 1))


def state_bytes(model: nn.Module) -> int:
    """Bytes of the model's tensors (tied tensors once), as safetensors would store them."""
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


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
    for k in ("removed_layers", "heads", "kv_heads", "intermediate_size"):
        if k in report.get("structure", {}):
            console.print(f"{k}: {report['structure'][k]}")
    console.print(f"prune time {report['prune_time_s']:.1f} s on {report['calib_tokens']:,} "
                  f"calibration tokens; total {report['total_time_s']:.1f} s")
    if report.get("note"):
        console.print(f"[yellow]note:[/] {report['note']}")

"""Token losses that never hold the full (B, T, vocab) logits at once.

A causal LM's output head turns hidden states (N, H) into logits (N, V). For
SmolLM2 (V = 49,152) a batch of 4 x 512 tokens gives 100 M logits, 400 MB in
fp32, and autograd would keep that tensor (and its softmax) for the backward
pass. Here the head is applied to ``chunk_tokens`` rows at a time; each chunk's
loss and its gradients (w.r.t. the hidden states and the head's weights) are
computed right away inside the forward pass and the chunk's logits are freed,
so peak memory is O(chunk_tokens x V) instead of O(N x V), and nothing is
recomputed in the backward pass (it only scales the stored gradients). A chunk
holds at most ``CHUNK_LOGITS`` logits: 1,024 rows for SmolLM2, 192 for Gemma 3
(V = 262,144), so a big vocabulary costs no more memory per chunk than a small one.

``causal_lm_loss(model, batch)`` is the plain next-token cross-entropy used by
fine-tuning; distillation passes its own per-chunk function to
``chunked_head_loss``.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable

import torch
from torch import nn

IGNORE_INDEX = -100
CHUNK_LOGITS = 1024 * 49152      # logits per head chunk: SmolLM2's 1,024 rows, ~100 MB in bf16

# fn(logits (n, V), rows: slice into the N flattened tokens) -> summed loss (scalar); the
# logits are fp32, or the head's own dtype where ``chunked_head_loss(upcast=False)``
ChunkFn = Callable[[torch.Tensor, slice], torch.Tensor]


def unwrap_causal_lm(model: nn.Module) -> nn.Module:
    """The HF CausalLM inside a PEFT or DDP wrapper (adapter layers stay in place)."""
    if hasattr(model, "module") and isinstance(model.module, nn.Module):
        model = model.module
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model


def backbone_and_head(model: nn.Module) -> tuple[nn.Module, nn.Module, float | None]:
    """(decoder backbone, output head, final logit soft-cap or None) of a CausalLM."""
    lm = unwrap_causal_lm(model)
    backbone = getattr(lm, lm.base_model_prefix)
    softcap = getattr(lm.config, "final_logit_softcapping", None)
    return backbone, lm.get_output_embeddings(), softcap


def hidden_states(model: nn.Module, input_ids: torch.Tensor,
                  attention_mask: torch.Tensor | None = None,
                  all_layers: bool = False) -> tuple[torch.Tensor, tuple | None]:
    """Final-norm hidden states (B, T, H) without computing logits.

    Args:
        model: an HF CausalLM (or a PEFT/DDP wrapper of one).
        input_ids: (B, T) token ids.
        attention_mask: (B, T) 1 for real tokens, or None.
        all_layers: also return every layer's output (embeddings first), for
            hidden-state matching.
    """
    backbone, _, _ = backbone_and_head(model)
    out = backbone(input_ids=input_ids, attention_mask=attention_mask,
                   output_hidden_states=all_layers, use_cache=False)
    return out.last_hidden_state, (out.hidden_states if all_layers else None)


class _ChunkedHeadLoss(torch.autograd.Function):
    """sum_chunks fn(head(h[chunk])): value and gradients computed chunk by chunk."""

    @staticmethod
    def forward(ctx, h, head, fn, chunk_tokens, softcap, upcast, *params):
        grad_h = torch.zeros_like(h)
        grad_p = [torch.zeros_like(p) for p in params]
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        with torch.enable_grad():
            for start in range(0, h.shape[0], chunk_tokens):
                rows = slice(start, min(start + chunk_tokens, h.shape[0]))
                hc = h[rows].detach().requires_grad_(h.requires_grad)
                logits = head(hc)                                  # (n, V)
                if upcast or softcap:
                    logits = logits.float()
                if softcap:
                    logits = softcap * torch.tanh(logits / softcap)
                loss = fn(logits, rows)
                wrt = ([hc] if h.requires_grad else []) + list(params)
                if wrt and loss.requires_grad:
                    grads = torch.autograd.grad(loss, wrt, allow_unused=True)
                    if h.requires_grad:
                        grad_h[rows] = grads[0]
                        grads = grads[1:]
                    for acc, g in zip(grad_p, grads):
                        if g is not None:
                            acc += g
                total += loss.detach()
        ctx.save_for_backward(grad_h, *grad_p)
        return total

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, *grad_p = ctx.saved_tensors
        return (grad_h * grad_out, None, None, None, None, None,
                *(g * grad_out for g in grad_p))


def chunked_head_loss(h: torch.Tensor, head: nn.Module, fn: ChunkFn,
                      chunk_tokens: int = 1024, softcap: float | None = None,
                      upcast: bool = True) -> torch.Tensor:
    """Sum over chunks of ``fn(logits_chunk, rows)`` with logits = head(h), memory O(chunk x V).

    Args:
        h: (N, H) hidden states of the N tokens that carry a loss.
        head: the output projection (``nn.Linear`` or any module mapping H -> V).
        fn: per-chunk loss; gets the logits (n, V) and the slice of rows of ``h``
            they belong to; returns a scalar SUM over those rows.
        chunk_tokens: rows per chunk at most (fewer for a vocabulary above 49,152 tokens,
            see ``chunk_rows``).
        softcap: Gemma-2/3 style final logit soft-cap (``c * tanh(z / c)``).
        upcast: hand ``fn`` fp32 logits; False keeps the head's output dtype (bf16 under
            autocast: half the memory traffic) for a ``fn`` that upcasts where it
            needs to, as ``fused_ce_kl`` does. With a soft-cap the logits are fp32.

    Returns:
        The scalar sum; differentiable w.r.t. ``h`` and the head's trainable params.
    """
    params = [p for p in head.parameters() if p.requires_grad]
    return _ChunkedHeadLoss.apply(h, head, fn, chunk_rows(chunk_tokens, head), softcap,
                                  bool(upcast), *params)


def chunk_rows(chunk_tokens: int, head: nn.Module) -> int:
    """Rows per chunk: ``chunk_tokens``, fewer where the vocabulary would make a chunk's
    logits exceed ``CHUNK_LOGITS`` (at least 16)."""
    vocab = getattr(head, "out_features", None) or getattr(head, "weight").shape[0]
    return max(1, min(int(chunk_tokens), max(16, CHUNK_LOGITS // int(vocab))))


def _softmax_lse(x: torch.Tensor, logs: bool = False):
    """(softmax(x), logsumexp(x) (n, 1)), or with ``logs`` (softmax, log_softmax), in few
    passes over x (rows max, one exp written in place, one sum)."""
    m = x.amax(-1, keepdim=True)
    shifted = x - m
    e = shifted.exp() if logs else shifted.exp_()
    z = e.sum(-1, keepdim=True)
    e.div_(z)
    if logs:
        return e, shifted.sub_(z.log_())
    return e, m + z.log_()


def _rowdot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise dot products (n,) of two (n, V) tensors, without an (n, V) temporary."""
    return torch.bmm(a.unsqueeze(1), b.unsqueeze(2)).reshape(-1)


def _ce_value_and_grad(s: torch.Tensor, y: torch.Tensor, a: torch.Tensor):
    """(sum of CE over rows with a target, ``a * (softmax(s) - onehot(y))`` on those rows in
    s's dtype), computed in fp32. Written as one expression so that ``torch.compile``
    turns it into two passes over ``s`` (row max and sum of exponentials, then the
    gradient) with no (n, V) temporary in between."""
    x = s.float()
    m = x.amax(-1, keepdim=True)
    e = (x - m).exp()
    z = e.sum(-1, keepdim=True)
    valid = y != IGNORE_INDEX
    yc = y.clamp_min(0)[:, None]
    ce = ((m + z.log() - x.gather(1, yc)).squeeze(1) * valid).sum()
    onehot = torch.arange(x.shape[1], device=x.device)[None, :] == yc
    g = (e / z - onehot.to(e.dtype)) * (a * valid)[:, None]
    return ce, g.to(s.dtype)


def _ce_eager(s: torch.Tensor, y: torch.Tensor, a: torch.Tensor):
    """``_ce_value_and_grad`` for eager mode: in place, one (n, V) temporary."""
    x = s.float()
    valid = y != IGNORE_INDEX
    g, lse = _softmax_lse(x)
    ce = ((lse.squeeze(1) - x.gather(1, y.clamp_min(0)[:, None]).squeeze(1)) * valid).sum()
    g.mul_((a * valid)[:, None].to(g.dtype))
    rows = valid.nonzero().squeeze(1)
    g[rows, y[rows]] -= a
    return ce, g.to(s.dtype)


_ce_kernel = {"compiled": None, "on": 0}


@contextmanager
def compiled_ce(enabled: bool = True):
    """Within the block, cross-entropy without a teacher term runs as a compiled kernel
    (the training loop turns this on together with its compiled decoder layers)."""
    if enabled and _ce_kernel["compiled"] is None:
        _ce_kernel["compiled"] = torch.compile(_ce_value_and_grad, dynamic=True)
    _ce_kernel["on"] += bool(enabled)
    try:
        yield
    finally:
        _ce_kernel["on"] -= bool(enabled)


def _ce_fn():
    return _ce_kernel["compiled"] if _ce_kernel["on"] else _ce_eager


class _FusedCeKl(torch.autograd.Function):
    """Cross-entropy and forward KL to a teacher on one chunk of logits, value and gradient
    in one sweep: d/ds of CE is ``softmax(s) - onehot(y)`` and of ``T^2 KL(p_T || q_T)`` it
    is ``T (q_T - p_T)``, so no autograd graph over the (n, V) tensor is kept and no
    log-softmax is stored or differentiated. Returns (weighted loss, CE sum, KL sum)."""

    @staticmethod
    def forward(ctx, s, t, y, a_ce, a_kl, temperature):
        if t is None or not a_kl:
            ce, g = _ce_fn()(s, y, torch.tensor(a_ce, dtype=torch.float32, device=s.device))
            ctx.save_for_backward(g)
            kl = torch.zeros((), dtype=torch.float32, device=s.device)
            ctx.mark_non_differentiable(ce, kl)
            return a_ce * ce, ce, kl
        dtype, s = s.dtype, s.float()
        valid = y != IGNORE_INDEX
        g, lse = _softmax_lse(s)                                    # softmax(s), logsumexp
        picked = s.gather(1, y.clamp_min(0)[:, None]).squeeze(1)
        ce = ((lse.squeeze(1) - picked) * valid).sum()
        T = temperature
        st = s if T == 1 else s / T
        q_t, lse_st = (g, lse) if T == 1 else _softmax_lse(st)
        prob, log_p = _softmax_lse(t.float() if T == 1 else t.float() / T, logs=True)
        # KL = sum p (log p - log q_T) = sum p (log p - s/T) + lse(s/T), as sum p = 1
        kl = (_rowdot(prob, log_p.sub_(st)) + lse_st.squeeze(1)).sum()
        del log_p
        coef = a_kl * T                                          # d(T^2 KL)/ds = T (q_T - p)
        if T == 1:
            g.mul_((a_ce * valid + coef)[:, None].to(g.dtype)).add_(prob, alpha=-coef)
        else:
            g.mul_((a_ce * valid)[:, None].to(g.dtype)).add_(q_t.sub_(prob), alpha=coef)
        rows = valid.nonzero().squeeze(1)
        g[rows, y[rows]] -= a_ce
        ctx.save_for_backward(g.to(dtype))
        ctx.mark_non_differentiable(ce, kl)
        return a_ce * ce + a_kl * temperature ** 2 * kl, ce, kl

    @staticmethod
    def backward(ctx, grad_loss, _g_ce, _g_kl):
        (g,) = ctx.saved_tensors
        if grad_loss.numel() == 1 and float(grad_loss) == 1.0:     # the usual case: no copy
            return g, None, None, None, None, None
        return g * grad_loss, None, None, None, None, None


def fused_ce_kl(logits: torch.Tensor, targets: torch.Tensor, *, w_ce: float = 1.0,
                teacher_logits: torch.Tensor | None = None, w_kl: float = 0.0,
                temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``w_ce * sum CE(logits, targets) + w_kl * T^2 * sum KL(teacher || student)`` over rows.

    Args:
        logits: (n, V) student logits (any float dtype; the math is fp32, the gradient
            has the logits' dtype).
        targets: (n,) token ids, -100 for rows without a CE term (their KL still counts).
        w_ce, w_kl: weights applied to the row sums.
        teacher_logits: (n, V) teacher logits (any float dtype) or None for CE alone.
        temperature: KL temperature T (both distributions softened by T).

    Returns:
        (weighted loss, CE sum, KL sum); only the first carries a gradient.
    """
    return _FusedCeKl.apply(logits, teacher_logits, targets, float(w_ce), float(w_kl),
                            float(temperature))


def shift_labels(batch: dict) -> torch.Tensor:
    """(B, T) targets: labels[t + 1] predicted at position t; last position ignored."""
    labels = batch.get("labels", batch["input_ids"])
    if "attention_mask" in batch and "labels" not in batch:
        labels = labels.masked_fill(batch["attention_mask"] == 0, IGNORE_INDEX)
    out = torch.full_like(labels, IGNORE_INDEX)
    out[:, :-1] = labels[:, 1:]
    return out


def causal_lm_loss(model: nn.Module, batch: dict, chunk_tokens: int = 1024
                   ) -> tuple[torch.Tensor, dict]:
    """Mean next-token cross-entropy of ``batch`` (``input_ids``, optional ``labels`` with -100
    for tokens without loss, optional ``attention_mask``), computed in chunks.

    The signature is the training loop's ``loss_fn(model, batch)``.
    """
    h, _ = hidden_states(model, batch["input_ids"], batch.get("attention_mask"))
    targets = shift_labels(batch).reshape(-1)                       # (B*T,)
    keep = targets != IGNORE_INDEX
    n = int(keep.sum())
    if n == 0:
        zero = h.sum() * 0.0
        return zero, {"loss_tokens": 0}
    h = h.reshape(-1, h.shape[-1])[keep]                            # (N, H)
    targets = targets[keep]
    _, head, softcap = backbone_and_head(model)

    def ce(logits: torch.Tensor, rows: slice) -> torch.Tensor:
        return fused_ce_kl(logits, targets[rows], w_ce=1.0 / n)[0]

    loss = chunked_head_loss(h, head, ce, chunk_tokens, softcap, upcast=False)
    return loss, {"loss_tokens": n}

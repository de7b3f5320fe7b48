"""What a LoRA step holds in memory: the output head's loss in chunks (never the whole
(tokens, vocab) logits), and a bf16 checkpoint's frozen weights held once, in bf16."""
import torch
import torch.nn.functional as F

from slmkit.models.tiny import tiny_slm
from slmkit.tune.adapters import setup_model
from slmkit.tune.finetune import sft_loss
from slmkit.tune.loop import frozen_weights_in_bf16
from slmkit.tune.losses import chunk_rows, chunked_head_loss


def _lora_gemma(seed: int = 0):
    """A tiny Gemma 3 (tied head, soft-capped logits) with LoRA, weights rounded to bf16
    as a shipped checkpoint's are, and a non-zero adapter so every LoRA weight has a
    gradient."""
    slm = tiny_slm("gemma3_text", final_logit_softcapping=30.0)
    with torch.no_grad():
        for p in slm.model.parameters():
            p.copy_(p.to(torch.bfloat16).float())
    net = setup_model(slm.model, "lora", rank=4, alpha=8, dropout=0.0)
    g = torch.Generator().manual_seed(seed)
    for n, p in net.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.02, generator=g)
    return net, len(slm.tokenizer)


def _loss_and_grads(net, ids, chunk_tokens):
    net.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, m = sft_loss(net, {"input_ids": ids}, chunk_tokens)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in net.named_parameters() if p.requires_grad}
    return float(loss), m["loss_tokens"], grads


def test_chunked_head_loss_equals_one_chunk_in_bf16_on_gemma3():
    """Loss and LoRA gradients with the head applied 7 rows at a time equal those of one
    chunk holding every row's logits, in bf16 autocast with the whole base in bf16."""
    net, vocab = _lora_gemma()
    ids = torch.randint(3, vocab, (2, 40), generator=torch.Generator().manual_seed(0))
    with frozen_weights_in_bf16(net, True, whole_base=True):
        whole, n, want = _loss_and_grads(net, ids, 10**6)
        chunked, n2, got = _loss_and_grads(net, ids, 7)
    assert n == n2 == 2 * 39
    assert 4 < whole < 10                               # ~ln(vocab) for random weights
    assert abs(chunked - whole) < 1e-4 * whole
    assert want and set(got) == set(want)
    for k in want:
        assert want[k].abs().sum() > 0, k
        torch.testing.assert_close(got[k], want[k], rtol=1e-3, atol=1e-6)


def test_chunked_head_loss_matches_plain_cross_entropy_and_its_gradient():
    """The chunked sum equals cross-entropy over the full logits, and so do the gradients
    w.r.t. the hidden states and a trainable head (fp32)."""
    g = torch.Generator().manual_seed(0)
    h = torch.randn(50, 16, generator=g, requires_grad=True)
    head = torch.nn.Linear(16, 300, bias=False)
    y = torch.randint(0, 300, (50,), generator=g)
    ref = F.cross_entropy(head(h), y, reduction="sum")
    ref.backward()
    want_h, want_w = h.grad.clone(), head.weight.grad.clone()
    h.grad, head.weight.grad = None, None
    got = chunked_head_loss(h, head, lambda s, rows: F.cross_entropy(s, y[rows], reduction="sum"),
                            chunk_tokens=16)
    got.backward()
    assert float(got) == float(ref) or abs(float(got) - float(ref)) < 1e-4 * float(ref)
    torch.testing.assert_close(h.grad, want_h, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(head.weight.grad, want_w, rtol=1e-4, atol=1e-6)


def test_a_big_vocabulary_gets_fewer_rows_per_chunk():
    """A chunk's logits are bounded whatever the vocabulary: 1,024 rows at 49,152 tokens,
    192 at Gemma 3's 262,144."""
    assert chunk_rows(1024, torch.nn.Linear(8, 49152, bias=False, device="meta")) == 1024
    assert chunk_rows(1024, torch.nn.Linear(8, 262144, bias=False, device="meta")) == 192


def test_bf16_valued_frozen_weights_are_held_once_and_come_back_exactly():
    """Frozen weights that hold bf16 values come back from their bf16 copies as the same
    fp32 values (their fp32 tensors are not kept meanwhile); a weight with values outside
    bf16 gets its own fp32 values back, from the temporary file they waited in."""
    net, _ = _lora_gemma()
    frozen = {n: p.detach().clone() for n, p in net.named_parameters() if not p.requires_grad}
    odd = next(p for n, p in net.named_parameters() if not p.requires_grad and p.ndim == 2
               and "layers" in n)
    with torch.no_grad():
        odd.add_(1e-7 * torch.randn_like(odd))         # not representable in bf16 now
    frozen_odd = odd.detach().clone()
    with frozen_weights_in_bf16(net, True, whole_base=True) as n_held:
        assert n_held == len(frozen)
        inside = {n: p for n, p in net.named_parameters()}
        assert all(inside[k].dtype == torch.bfloat16 for k in frozen)
    params = dict(net.named_parameters())
    assert odd.dtype == torch.float32 and torch.equal(odd, frozen_odd)    # back from disk
    for k, v in frozen.items():
        assert params[k].dtype == torch.float32
        if params[k] is not odd:
            assert torch.equal(params[k], v), k

"""The training loop's CPU kernels: blocked causal attention, the fused cross-entropy,
and the heap setting that keeps big tensors on warm pages."""
import sys

import pytest
import torch
import torch.nn.functional as F

from slmkit.models.tiny import tiny_slm
from slmkit.tune.attention import (NAME, attention_forward, blocked_attention_for,
                                   blocked_causal_attention, mask_bias)
from slmkit.tune.losses import _ce_eager, _ce_value_and_grad, causal_lm_loss


def _doc_mask(pos: torch.Tensor, window: int | None = None) -> torch.Tensor:
    """(B, 1, T, T) bool: causal within each packed document (position ids restart at 0)."""
    doc = (pos == 0).cumsum(-1)
    t = pos.shape[1]
    i, j = torch.arange(t)[:, None], torch.arange(t)[None, :]
    keep = (doc[:, :, None] == doc[:, None, :]) & (j <= i)
    if window:
        keep &= (i - j) < window
    return keep[:, None]


def _qkv(b=2, hq=6, hkv=2, t=37, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, h, t, d, generator=g, requires_grad=True) for h in (hq, hkv, hkv)]


def _reference(q, k, v, mask, softcap=None):
    """Plain attention with the key heads repeated: scores, mask, softmax, values."""
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    s = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5
    if softcap:
        s = softcap * torch.tanh(s / softcap)
    if mask is None:
        mask = torch.ones(q.shape[2], q.shape[2], dtype=torch.bool).tril()
    return s.masked_fill(~mask, float("-inf")).softmax(-1) @ v


@pytest.mark.parametrize("case", ["causal", "packed", "packed-bias", "window", "softcap"])
def test_blocked_attention_matches_plain_attention(case):
    """Value and gradients equal plain attention for causal, packed-document and
    sliding-window masks, grouped query heads and a length that is not a multiple of
    the block."""
    pos = torch.tensor([list(range(10)) + list(range(20)) + list(range(7)),
                        list(range(37))])
    mask = {"causal": None, "packed": _doc_mask(pos), "packed-bias": _doc_mask(pos),
            "window": _doc_mask(pos, 5), "softcap": _doc_mask(pos)}[case]
    cap = 2.0 if case == "softcap" else None
    q, k, v = _qkv()
    go = torch.randn(2, 6, 37, 8, generator=torch.Generator().manual_seed(1))
    want = _reference(q, k, v, mask, cap)
    want_grads = torch.autograd.grad(want, (q, k, v), go)
    given = mask_bias(mask) if case == "packed-bias" else mask    # what bias_mask hands it
    got = blocked_causal_attention(q, k, v, given, 8 ** -0.5, block=16, softcap=cap)
    got_grads = torch.autograd.grad(got, (q, k, v), go)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    for a, b in zip(got_grads, want_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_attention_forward_hands_inference_to_sdpa():
    """Without gradients (evaluation, generation) the call is transformers' sdpa exactly."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    module = torch.nn.Module()
    module.num_key_value_groups, module.is_causal = 3, True
    q, k, v = (x.detach() for x in _qkv())
    with torch.no_grad():
        got, _ = attention_forward(module, q, k, v, None, scaling=0.3)
        want, _ = sdpa_attention_forward(module, q, k, v, None, scaling=0.3)
        assert torch.equal(got, want)
        pos = torch.tensor([list(range(10)) + list(range(27)), list(range(37))])
        keep = _doc_mask(pos)                         # a bias mask goes to sdpa as a bias
        got, _ = attention_forward(module, q, k, v, mask_bias(keep), scaling=0.3)
        want, _ = sdpa_attention_forward(module, q, k, v, keep, scaling=0.3)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    with torch.enable_grad():                         # and with them, the blocked form
        got, _ = attention_forward(module, *_qkv(), None, scaling=8 ** -0.5)
    torch.testing.assert_close(got, _reference(*_qkv(), None).transpose(1, 2),
                               rtol=1e-5, atol=1e-5)


def test_blocked_attention_in_a_model_keeps_loss_and_grads():
    """A tiny Llama on a packed batch: same loss and gradients with the blocked form as
    with sdpa, and the model's setting is back to sdpa afterwards."""
    model = tiny_slm("llama").model.train()
    ids = torch.randint(3, 512, (2, 40), generator=torch.Generator().manual_seed(0))
    pos = torch.tensor([list(range(15)) + list(range(25)), list(range(40))])
    batch = {"input_ids": ids, "position_ids": pos, "labels": ids}
    from slmkit.tune.finetune import sft_loss

    def loss_and_grads():
        model.zero_grad()
        loss, _ = sft_loss(model, batch, chunk_tokens=16)
        loss.backward()
        return float(loss.detach()), {n: p.grad.clone() for n, p in model.named_parameters()}

    assert model.config._attn_implementation == "sdpa"
    want, want_g = loss_and_grads()
    with blocked_attention_for(model) as n:
        assert n == 1 and model.config._attn_implementation == NAME
        got, got_g = loss_and_grads()
    assert model.config._attn_implementation == "sdpa"
    assert got == pytest.approx(want, rel=1e-5)
    for name, g in want_g.items():
        torch.testing.assert_close(got_g[name], g, rtol=1e-4, atol=1e-6)


def test_cross_entropy_kernels_agree_with_torch():
    """The compiled-form and in-place cross-entropy give torch's value and gradient,
    skip ignored rows, and return the gradient in the logits' dtype."""
    g = torch.Generator().manual_seed(0)
    s = torch.randn(33, 301, generator=g) * 4
    y = torch.randint(0, 301, (33,), generator=g)
    y[[0, 7]] = -100
    a = torch.tensor(0.25)
    ref = s.clone().requires_grad_()
    want = F.cross_entropy(ref, y, ignore_index=-100, reduction="sum")
    (a * want).backward()
    for fn in (_ce_value_and_grad, _ce_eager, torch.compile(_ce_value_and_grad, dynamic=True)):
        ce, grad = fn(s, y, a)
        assert float(ce) == pytest.approx(float(want), rel=1e-5)
        torch.testing.assert_close(grad, ref.grad, rtol=1e-5, atol=1e-7)
        ce, grad = fn(s.bfloat16(), y, a)
        assert grad.dtype == torch.bfloat16
        assert float(ce) == pytest.approx(float(want), rel=1e-2)


def test_bf16_head_logits_keep_the_loss():
    """causal_lm_loss hands the loss bf16 logits under autocast; the loss stays that of
    fp32 logits to bf16 precision."""
    model = tiny_slm("llama").model
    ids = torch.randint(3, 512, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = model(input_ids=ids, labels=ids).loss
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got, _ = causal_lm_loss(model, {"input_ids": ids}, chunk_tokens=7)
    assert float(got) == pytest.approx(float(want), rel=2e-2)


_FAULTS_SCRIPT = """
import ctypes, resource, torch
from slmkit.tune.heap import reuse_heap

def step():
    # a training step's pattern: big tensors (128, 64, 32, 128 MB, written) among small
    # ones, all freed at the end
    held = [t for n in (2**25, 2**24, 2**23, 2**25) for t in (torch.empty(n).fill_(1.0),
                                                             torch.ones(100))]
    return len(held)

def faults(steps=8):
    step()                                                    # the first one faults
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(steps):
        step()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena ordblks smblks hblks hblkhd usmblks "
                                               "fsmblks uordblks fordblks keepcost").split()]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info

def mmapped_bytes_holding(n):
    x = torch.empty(n)                                      # not written: no pages used
    return libc.mallinfo2().hblkhd

before = faults()
with reuse_heap() as on:
    inside = faults()
    mapped_inside = mmapped_bytes_holding(2**29)           # 2 GB
# 4 GB: more than the heap holds free, so a new block either way
print(before, int(on), inside, mapped_inside, mmapped_bytes_holding(2**30))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc")
def test_reuse_heap_avoids_page_faults_on_big_tensors():
    """Steps that allocate and free big tensors: fresh pages every step under the
    default malloc (one fault per 4 KiB page), mostly warm pages inside reuse_heap, where
    big blocks come from the heap instead of mmap; afterwards mmap is back. Run in a
    fresh interpreter: malloc's state is the whole process's, and other tests'
    allocations would blur the counts."""
    import subprocess
    out = subprocess.run([sys.executable, "-c", _FAULTS_SCRIPT], capture_output=True,
                         text=True, timeout=120, check=True).stdout.split()
    before, on, inside, mapped_inside, mapped_after = map(int, out)
    pages = 8 * (2 * 2**27 + 2**26 + 2**25) // 4096              # 8 steps of 352 MB
    assert before > pages * 9 // 10
    assert on
    assert inside < pages // 4          # the heap grows now and then, most steps reuse it
    assert mapped_inside < 2**31 and mapped_after >= 2**32      # mmap is back afterwards


def test_frozen_weights_in_bf16_give_the_same_autocast_numbers_and_come_back():
    """LoRA's frozen base held in bf16: the same logits under bf16 autocast as casting on
    every matmul, trainable weights untouched, and the fp32 tensors back afterwards."""
    from slmkit.tune.adapters import setup_model
    from slmkit.tune.speedups import frozen_weights_in_bf16
    net = setup_model(tiny_slm("llama").model, "lora", rank=4, alpha=8)
    ids = torch.randint(3, 512, (2, 16), generator=torch.Generator().manual_seed(0))
    frozen = {n: p.detach().clone() for n, p in net.named_parameters()
              if not p.requires_grad and p.ndim == 2 and "layers" in n}
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        want = net(input_ids=ids).logits
        with frozen_weights_in_bf16(net, True) as n:
            assert n == len(frozen) > 0
            params = dict(net.named_parameters())
            assert all(params[k].dtype == torch.bfloat16 for k in frozen)
            assert all(p.dtype == torch.float32 for p in params.values() if p.requires_grad)
            got = net(input_ids=ids).logits
    assert torch.equal(got, want)
    params = dict(net.named_parameters())
    assert all(params[k].dtype == torch.float32 and torch.equal(params[k], v)
               for k, v in frozen.items())


def test_whole_frozen_base_in_bf16_trains_close_to_fp32_hidden_states():
    """``whole_base``: every frozen weight (embeddings, norms, tied head) in bf16, so the
    hidden states run in bf16; the logits stay within bf16 rounding of the fp32-hidden
    ones, the LoRA gradients point the same way, and all fp32 tensors come back."""
    from slmkit.tune.adapters import setup_model
    from slmkit.tune.speedups import frozen_weights_in_bf16
    net = setup_model(tiny_slm("llama").model, "lora", rank=4, alpha=8, dropout=0.0)
    for n, p in net.named_parameters():            # a non-zero adapter, so B gets gradients
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.02, generator=torch.Generator().manual_seed(1))
    ids = torch.randint(3, 512, (2, 16), generator=torch.Generator().manual_seed(0))
    frozen = {n: p.detach().clone() for n, p in net.named_parameters() if not p.requires_grad}

    def run():
        net.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = net(input_ids=ids, labels=ids)
        out.loss.backward()
        grads = torch.cat([p.grad.flatten() for p in net.parameters() if p.requires_grad])
        return out.logits.float(), grads

    want, want_g = run()
    with frozen_weights_in_bf16(net, True, whole_base=True) as n:
        assert n == len(frozen)                    # embeddings and norms too, not just Linears
        assert all(p.dtype == torch.bfloat16 for p in net.parameters() if not p.requires_grad)
        assert all(p.dtype == torch.float32 for p in net.parameters() if p.requires_grad)
        got, got_g = run()
    assert got.dtype == torch.float32 and not torch.equal(got, want)     # bf16 hidden states
    assert (got - want).abs().max() < 0.05 * want.abs().max()
    assert F.cosine_similarity(got_g, want_g, dim=0) > 0.99
    params = dict(net.named_parameters())
    assert all(params[k].dtype == torch.float32 and torch.equal(params[k], v)
               for k, v in frozen.items())

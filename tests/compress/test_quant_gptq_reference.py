"""``gptq_weight`` against the GPTQ paper's algorithm, written out here step by step.

The transcription follows IST-DASLab/gptq's ``GPTQ.fasterquant`` with ``Quantizer(mse=False)``
(asymmetric, groups of 128, 1% dampening, blocks of 128, no act-order): the group's range
always includes zero, ``scale = (max - min) / 15``, ``zero = round(-min / scale)``, codes
clamped to ``[0, 15]``; a group's scale is taken when its first column comes up, from the
weights as already updated; dead inputs are zeroed. It is the test's own code, not theirs.

The one deliberate difference: slmkit stores each scale as float16, rounded up. With that
storage step applied to the transcription the two give the same codes; with the paper's
float32 scales they reach the same output error.
"""
import torch

from slmkit.models.packed.formats import _scale_up_fp16
from slmkit.compress.quantize.gptq import gptq_weight, output_error
from slmkit.models.packed.qlinear import QuantLinear


def paper_gptq(w, h, group=128, bits=4, block=128, percdamp=0.01, fp16_scale=False):
    """The dequantized weight the paper's algorithm gives (asymmetric min-max groups)."""
    maxq = 2 ** bits - 1
    W = w.clone().float()
    H = h.clone().float()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    n = W.shape[1]
    idx = torch.arange(n)
    H[idx, idx] += percdamp * torch.mean(torch.diag(H))
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    Q = torch.zeros_like(W)
    scale = zero = None
    for i1 in range(0, n, block):
        i2 = min(i1 + block, n)
        W1, Err1, Hinv1 = W[:, i1:i2].clone(), torch.zeros(W.shape[0], i2 - i1), Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            if (i1 + i) % group == 0:                  # group starts: range of updated weights
                x = W1[:, i:i + group] if i else W[:, i1:i1 + group]
                lo = torch.minimum(x.min(1).values, torch.zeros(1))
                hi = torch.maximum(x.max(1).values, torch.zeros(1))
                both0 = (lo == 0) & (hi == 0)
                lo[both0], hi[both0] = -1, 1
                scale = ((hi - lo) / maxq)[:, None]
                if fp16_scale:
                    scale = _scale_up_fp16(scale).float()
                zero = torch.round(-lo[:, None] / scale)
            col = W1[:, i:i + 1]
            q = scale * (torch.clamp(torch.round(col / scale) + zero, 0, maxq) - zero)
            Q[:, i1 + i] = q[:, 0]
            err = (col[:, 0] - q[:, 0]) / Hinv1[i, i]
            W1[:, i:] -= err[:, None].matmul(Hinv1[i, i:][None, :])
            Err1[:, i] = err
        W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])
    return Q


def _layer(rows=96, cols=320, n=1024, seed=0):
    """A weight and Hessian ``2 X X^T / n`` with unequal input scales, one dead input and a
    short last group (320 = 2 x 128 + 64, as SmolLM2's 576 = 4 x 128 + 64)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, cols, generator=g) * (torch.rand(cols, generator=g) * 3 + 0.1)
    x[:, 7] = 0
    w = torch.randn(rows, cols, generator=g) * 0.05
    return w, 2 / n * x.T @ x


def _slmkit(w, h):
    q, s, z = gptq_weight(w, h, 4, 128, sym=False)
    return QuantLinear.from_codes(q, s, z, 4, 128).dequantize()


def test_same_codes_as_the_paper_algorithm_on_the_stored_scale_grid():
    w, h = _layer()
    mine, paper = _slmkit(w, h), paper_gptq(w, h, fp16_scale=True)
    assert torch.equal(mine, paper), float((mine - paper).abs().max())


def test_same_output_error_as_the_paper_algorithm_with_float32_scales():
    for seed in range(3):
        w, h = _layer(seed=seed)
        mine = output_error(w, _slmkit(w, h), h)
        paper = output_error(w, paper_gptq(w, h), h)
        assert abs(mine / paper - 1) < 0.01, (seed, mine, paper)

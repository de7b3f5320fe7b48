"""Quantize -> dequantize stays inside the analytical bound |w - w'| <= s/2."""
import pytest
import torch

from slmkit.compress.quantize import QuantizeConfig
from slmkit.models.packed.formats import get_format, quantize_weight, dequantize_weight
from slmkit.models.packed.qlinear import QuantLinear
from slmkit.errors import SlmError


def _layers():
    g = torch.Generator().manual_seed(0)
    normal = torch.randn(48, 96, generator=g) * 0.05
    outlier = normal.clone()
    outlier[3, 17] = 40.0                              # one huge weight
    outlier[10, 64:] *= 100                            # a loud stretch of one row
    return {"normal": normal, "zeros": torch.zeros(48, 96), "outlier": outlier}


def _bound_check(w, bits, group, sym):
    q, s, z = quantize_weight(w, bits, group, sym)
    n_in = w.shape[1]
    g = n_in if group <= 0 else group
    pad = -n_in % g
    qp = torch.nn.functional.pad(q, (0, pad))
    deq = dequantize_weight(qp, s, z, bits)[:, :n_in]
    step = s.float().repeat_interleave(g, 1)[:, :n_in]              # scale of each weight
    err = (deq - w).abs()
    assert q.max() <= 2 ** bits - 1
    assert torch.all(err <= step / 2 * (1 + 1e-5) + 1e-7), float((err - step / 2).max())
    return err, s


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("sym", [True, False])
@pytest.mark.parametrize("group", [32, 64, -1, 40])
@pytest.mark.parametrize("kind", ["normal", "zeros", "outlier"])
def test_error_within_half_step(bits, sym, group, kind):
    w = _layers()[kind]
    err, s = _bound_check(w, bits, group, sym)
    if kind == "zeros":
        assert float(err.max()) == 0.0
    if kind == "normal":                               # the bound is tight, not vacuous
        levels = 2 ** bits - 1
        assert float(s.float().max()) <= 2 * float(w.abs().max()) / levels * 1.01 + 1e-8


def test_outlier_only_hurts_its_group():
    w = _layers()["outlier"]
    grouped, _ = _bound_check(w, 4, 32, True)
    per_row, _ = _bound_check(w, 4, -1, True)
    # row 3 holds a 40.0 weight: per-row scaling wrecks the whole row, groups only one block
    assert grouped[3, 32:].max() < per_row[3, 32:].max() / 10


@pytest.mark.parametrize("bits", [8, 4])
def test_pack_roundtrip(bits):
    fmt = get_format(bits)
    q = torch.randint(0, 2 ** bits, (7, 64), dtype=torch.uint8)
    packed = fmt.pack(q)
    assert packed.shape == (7, 64 * bits // 8)
    assert torch.equal(fmt.unpack(packed), q)


@pytest.mark.parametrize("bits,sym", [(4, True), (4, False), (8, True)])
def test_quantlinear_matches_dequantized_linear(bits, sym):
    torch.manual_seed(0)
    lin = torch.nn.Linear(96, 40, bias=True)
    q, s, z = quantize_weight(lin.weight.detach(), bits, 32, sym)
    ql = QuantLinear.from_codes(q, s, z, bits, 32, lin.bias)
    assert ql.qweight.numel() == 40 * 96 * bits // 8
    x = torch.randn(3, 5, 96)
    ref = torch.nn.functional.linear(x, ql.dequantize(), lin.bias)
    assert torch.allclose(ql(x), ref, atol=1e-6)
    # bfloat16 activations use the packed CPU kernels where the layout allows
    got = ql(x.bfloat16()).float()
    assert torch.allclose(got, ref, atol=0.05 * float(ref.abs().max()))


def test_bad_bits_and_group_size():
    with pytest.raises(ValueError, match="bits"):
        QuantizeConfig(bits=3)
    with pytest.raises(ValueError, match="group_size"):
        QuantizeConfig(group_size=7)
    from slmkit.compress.quantize.rtn import check_targets
    from slmkit.models.tiny import tiny_slm
    model = tiny_slm("llama").model
    with pytest.raises(SlmError, match="fewer than group size 256"):
        check_targets(model, 4, 256)                     # hidden size is 64


def test_quantized_model_counts_its_weights():
    import tempfile

    import slmkit
    from slmkit.compress.quantize import run_quantize
    from slmkit.models.io import count_params
    from slmkit.models.tiny import tiny_slm
    slm = tiny_slm("llama")
    before = count_params(slm.model)
    with tempfile.TemporaryDirectory() as d:
        run_quantize(slm, f"{d}/q", QuantizeConfig(method="rtn", bits=4, group_size=32,
                                                   eval_tokens=0, speed_tokens=0))
        assert count_params(slmkit.load(f"{d}/q").model) == before

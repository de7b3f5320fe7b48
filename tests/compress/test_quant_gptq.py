"""GPTQ beats RTN at 4 bits; quantized models save small and reload identically."""
import torch

import slmkit
from slmkit.compress.quantize import QuantizeConfig, run_quantize
from slmkit.compress.quantize import gptq, rtn
from slmkit.models.io import dir_bytes, save
from slmkit.models.tiny import tiny_slm


def _calib(tok, n=8, T=64):
    from slmkit.compress.quantize import first_blocks
    return first_blocks("python-docs", tok, T, "train", n)


@torch.no_grad()
def _kl(ref, model, ids):
    """Mean KL(fp || quantized) of next-token distributions over the calibration blocks."""
    p = torch.log_softmax(ref(ids).logits.float(), -1)
    q = torch.log_softmax(model(ids).logits.float(), -1)
    return float((p.exp() * (p - q)).sum(-1).mean())


def test_gptq_beats_rtn_at_4_bits():
    ref = tiny_slm("llama", initializer_range=0.2)
    ids = _calib(ref.tokenizer)
    m_rtn = tiny_slm("llama", initializer_range=0.2).model
    m_gptq = tiny_slm("llama", initializer_range=0.2).model
    rtn.quantize(m_rtn, 4, 32, True)
    stats = gptq.quantize(m_gptq, ids, 4, 32, True)
    # the objective GPTQ minimises, layer by layer ...
    assert sum(stats.gptq.values()) < 0.8 * sum(stats.rtn.values())
    # ... and the calibration loss of the whole model
    kl_rtn, kl_gptq = _kl(ref.model, m_rtn, ids), _kl(ref.model, m_gptq, ids)
    assert kl_gptq < kl_rtn, (kl_gptq, kl_rtn)


def test_gptq_act_order_and_asym_run():
    ref = tiny_slm("qwen2", initializer_range=0.2)
    ids = _calib(ref.tokenizer, n=4)
    m = tiny_slm("qwen2", initializer_range=0.2).model
    stats = gptq.quantize(m, ids, 4, 32, False, act_order=True)
    assert max(stats.gptq.values()) < 0.05
    assert sum(stats.gptq.values()) < sum(stats.rtn.values())


def test_clip_search_never_loses_and_helps_heavy_tails():
    from slmkit.models.packed.formats import get_format
    fmt = get_format(4)
    torch.manual_seed(0)
    w = torch.distributions.StudentT(2.0).sample((64, 128))     # heavy-tailed rows
    imp = torch.rand(128) + 0.1

    def err(s, z):
        q, _, _ = fmt.quantize_blocks(w, s, z)
        return ((fmt.dequantize_blocks(q, s, z) - w) ** 2 * imp).sum(1)

    for sym in (True, False):
        plain = err(*fmt.params(w, sym))
        clipped = err(*gptq.clipped_params(w, 4, sym, imp))
        assert (clipped <= plain + 1e-6).all()                 # the unclipped range is a candidate
        assert clipped.sum() < 0.97 * plain.sum()


def test_gptq_with_clip_search_lowers_the_layer_error():
    ref = tiny_slm("llama", initializer_range=0.2)
    ids = _calib(ref.tokenizer, n=4)
    errs = {}
    for clip in (False, True):
        m = tiny_slm("llama", initializer_range=0.2).model
        stats = gptq.quantize(m, ids, 4, 32, True, act_order=True, clip=clip)
        errs[clip] = sum(stats.gptq.values())
    assert errs[True] < errs[False]


def test_saved_quantized_model_reloads_identically(tmp_path):
    x = torch.tensor([[5, 17, 99, 3, 250, 7, 8]])
    for cfg in (QuantizeConfig(method="rtn", bits=4, group_size=32, sym=False,
                               eval_tokens=0, speed_tokens=0),
                QuantizeConfig(method="gptq", bits=8, group_size=-1, calib_samples=4,
                               seq_len=64, eval_tokens=256, speed_tokens=0)):
        src = tiny_slm("gemma3_text")
        plain = tmp_path / f"plain-{cfg.method}"
        save(src, plain)
        out = tmp_path / cfg.method
        rep = run_quantize(str(plain), out, cfg)
        re = slmkit.load(out)
        quantized = run_quantize.__globals__["load_quantized"](out)
        with torch.no_grad():
            assert torch.equal(re.model(x).logits, quantized(x).logits)
        assert type(re.model.model.layers[0].mlp.down_proj).__name__ == "QuantLinear"
        assert dir_bytes(out) < dir_bytes(plain)
        assert rep["after"]["memory_bytes"] < rep["before"]["memory_bytes"]
        assert (out / "report.json").exists()
        assert re.meta["history"][-1]["step"] == "quantize"


def test_quantized_weights_really_packed(tmp_path):
    from safetensors import safe_open
    out = tmp_path / "q4"
    run_quantize(tiny_slm("llama"), out, QuantizeConfig(method="rtn", bits=4, group_size=64,
                                                        eval_tokens=0, speed_tokens=0))
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        qw = f.get_tensor("model.layers.0.mlp.down_proj.qweight")
        assert qw.dtype == torch.uint8 and qw.shape == (64, 64)      # 128 inputs, 2 per byte
        assert "model.layers.0.mlp.down_proj.weight" not in f.keys()

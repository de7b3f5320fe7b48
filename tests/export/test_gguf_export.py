"""GGUF export: llama.cpp reproduces the PyTorch logits; bad input is refused cleanly.

Tiny models use ``initializer_range=0.3`` so attention is sharp: with the default
0.02 init a wrong Q/K permutation or norm offset would hardly change the logits.
"""
import pytest
import torch

import slmkit
from slmkit.compress.quantize import QuantizeConfig, run_quantize
from slmkit.errors import SlmError
from slmkit.export import ExportConfig, run_export
from slmkit.models.tiny import tiny_slm

F16 = ExportConfig(type="f16", parity_tokens=48)


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma3_text"])
def test_f16_matches_pytorch(family, tmp_path):
    slm = tiny_slm(family, initializer_range=0.3)
    rep = run_export(slm, tmp_path / "m.gguf", F16)
    p = rep["parity"]
    assert p["argmax_agreement"] >= 0.99, p
    assert p["max_abs_logit_diff"] < 0.1, p
    assert abs(p["ppl_diff_pct"]) < 0.5, p
    assert p["tokenizer_match"]
    assert (tmp_path / "m.gguf.report.json").exists()


def _pruned_llama():
    """Depth- and width-pruned by hand: one layer dropped, FFNs of different widths."""
    slm = tiny_slm("llama", initializer_range=0.3, num_hidden_layers=3)
    m = slm.model
    del m.model.layers[1]
    m.config.num_hidden_layers = 2
    for i, layer in enumerate(m.model.layers):
        layer.self_attn.layer_idx = i
    mlp = m.model.layers[0].mlp                       # keep 96 of 128 channels in layer 0
    keep = torch.arange(96)
    for name in ("gate_proj", "up_proj"):
        old = getattr(mlp, name)
        new = torch.nn.Linear(64, 96, bias=False)
        new.weight.data = old.weight.data[keep].clone()
        setattr(mlp, name, new)
    new = torch.nn.Linear(96, 64, bias=False)
    new.weight.data = mlp.down_proj.weight.data[:, keep].clone()
    mlp.down_proj = new
    return slm


def test_pruned_llama_matches_pytorch(tmp_path):
    slm = _pruned_llama()
    rep = run_export(slm, tmp_path / "p.gguf", F16)
    assert rep["parity"]["argmax_agreement"] >= 0.99, rep["parity"]
    import gguf
    r = gguf.GGUFReader(str(tmp_path / "p.gguf"))
    assert r.fields["llama.block_count"].contents() == 2
    assert r.fields["llama.feed_forward_length"].contents() == 128      # layer 0 zero-padded


def test_gguf_loads_in_both_engines(tmp_path):
    from slmkit.engines import open_engine
    slm = tiny_slm("llama", initializer_range=0.3)
    path = tmp_path / "t.gguf"
    run_export(slm, path, ExportConfig(type="f32", parity_tokens=0))
    ids = slm.tokenizer("def f(x):\n    return x")["input_ids"]
    with torch.no_grad():
        ref = slm.model(torch.tensor([ids])).logits[0]
    via_hf = slmkit.load(path)                                  # transformers' GGUF reader
    with torch.no_grad():
        got = via_hf.model(torch.tensor([ids])).logits[0]
    assert torch.allclose(got, ref, atol=1e-4)
    assert via_hf.tokenizer("def f(x):\n    return x")["input_ids"] == ids
    cpp = open_engine(str(path), logits_all=True)
    assert cpp.name == "llama.cpp"
    assert torch.allclose(cpp.logits(ids), ref, atol=0.05)        # f16 KV cache in llama.cpp


def test_quantized_types_report_perplexity(tmp_path):
    slm = tiny_slm("qwen2", initializer_range=0.3)
    # random weights at this scale amplify rounding: 4-bit agrees far less than 8-bit,
    # but far above chance (1/512)
    for t, min_agree in (("q8_0", 0.9), ("q4_k_m", 0.3)):
        rep = run_export(slm, tmp_path / f"{t}.gguf", ExportConfig(type=t, parity_tokens=48))
        p = rep["parity"]
        assert p["argmax_agreement"] >= min_agree, (t, p)
        assert p["ppl_diff"] == pytest.approx(p["ppl_export"] - p["ppl_pytorch"], abs=1e-3)
    assert (tmp_path / "q4_k_m.gguf").stat().st_size < (tmp_path / "q8_0.gguf").stat().st_size


def test_gptq_model_exports_blocks_without_requantizing(tmp_path):
    slm = tiny_slm("llama", initializer_range=0.3)
    q = tmp_path / "q"
    run_quantize(slm, q, QuantizeConfig(method="gptq", bits=4, group_size=64, calib_samples=4,
                                        seq_len=64, eval_tokens=0, speed_tokens=0))
    rep = run_export(str(q), tmp_path / "q.gguf", ExportConfig(type="q4_0", parity_tokens=48))
    assert rep["packed_direct"] == 14 and rep["packed_dequantized"] == 0
    # the reference is the quantized PyTorch model: identical decoder weights, so only
    # llama.cpp's 8-bit activation rounding and the 8-bit embedding separate them
    assert rep["parity"]["argmax_agreement"] >= 0.85, rep["parity"]
    assert abs(rep["parity"]["ppl_diff_pct"]) < 5, rep["parity"]
    import gguf
    import numpy as np
    from slmkit.models.packed.qlinear import QuantLinear  # noqa: F401
    r = gguf.GGUFReader(str(tmp_path / "q.gguf"))
    t = next(t for t in r.tensors if t.name == "blk.0.ffn_down.weight")
    deq = gguf.quants.dequantize(t.data, t.tensor_type)
    want = slmkit.load(q).model.model.layers[0].mlp.down_proj.dequantize().numpy()
    assert np.array_equal(deq.reshape(want.shape), want)        # bit-exact copy


def test_hf_export_of_quantized_model(tmp_path):
    from transformers import AutoModelForCausalLM
    slm = tiny_slm("gemma3_text")
    q = tmp_path / "q"
    run_quantize(slm, q, QuantizeConfig(method="rtn", bits=8, group_size=32, eval_tokens=0,
                                        speed_tokens=0))
    rep = run_export(str(q), tmp_path / "hf", ExportConfig(format="hf", parity_tokens=48))
    assert rep["dequantized_layers"] == 14
    assert rep["parity"]["argmax_agreement"] == 1.0
    m = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    assert not hasattr(m.config, "slmkit_quantization")


def test_unknown_architecture_names_supported(tmp_path):
    with pytest.raises(SlmError, match="supported: gemma3_text, llama"):
        run_export(tiny_slm("phi3"), tmp_path / "x.gguf", F16)
    assert not list(tmp_path.iterdir())


def test_existing_output_refused_without_force(tmp_path):
    out = tmp_path / "m.gguf"
    out.write_bytes(b"keep me")
    with pytest.raises(SlmError, match="already exists"):
        run_export(tiny_slm("llama"), out, F16)
    assert out.read_bytes() == b"keep me"


def test_crash_mid_write_leaves_nothing(tmp_path, monkeypatch):
    import gguf

    def boom(self, *a, **k):
        raise RuntimeError("disk full")
    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        run_export(tiny_slm("llama"), tmp_path / "m.gguf", F16)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.real
def test_smollm2_f16_parity(tmp_path):
    rep = run_export("smollm2-135m", tmp_path / "s.gguf",
                     ExportConfig(type="f16", parity_tokens=128))
    assert rep["parity"]["argmax_agreement"] >= 0.99, rep["parity"]
    assert rep["parity"]["tokenizer_match"]
    assert rep["tokenizer"]["pre"] == "smollm"             # kept from the shipped GGUF


# ------------------------------------------------ width-pruned heads; every export loads

def _width_pruned(family: str, tmp_path):
    from slmkit.compress.prune import PruneConfig, run_prune
    slm = tiny_slm(family, initializer_range=0.3)
    cfg = PruneConfig(method="width", target=0.6, nsamples=4, seqlen=64, eval_tokens=0)
    run_prune(slm, tmp_path / "w", cfg)
    return slmkit.load(tmp_path / "w")


@pytest.mark.parametrize("family", ["qwen2", "llama", "gemma3_text"])
def test_width_pruned_heads_load_in_llamacpp(family, tmp_path):
    slm = _width_pruned(family, tmp_path)
    cfg = slm.model.config
    assert cfg.num_attention_heads * cfg.head_dim < cfg.hidden_size        # heads were cut
    rep = run_export(slm, tmp_path / "w.gguf", ExportConfig(type="f16", parity_tokens=0))
    assert rep["llamacpp_load"]["ok"] and "parity" not in rep
    assert rep["architecture"] == ("llama" if family == "qwen2" else rep["architecture"])
    rep = run_export(slm, tmp_path / "w.gguf", F16, overwrite=True)
    assert rep["parity"]["argmax_agreement"] >= 0.99, rep["parity"]
    assert rep["parity"]["max_abs_logit_diff"] < 0.1, rep["parity"]


def test_file_llamacpp_refuses_is_an_error_and_nothing_is_left(tmp_path, monkeypatch):
    import dataclasses
    from slmkit.export import gguf_file
    slm = _width_pruned("qwen2", tmp_path)
    # the qwen2 architecture without the fallback: llama.cpp's qwen2 wants n_head * head_dim
    # == hidden size and refuses the file
    monkeypatch.setitem(gguf_file.GGUF_ARCHS, "qwen2", dataclasses.replace(
        gguf_file.GGUF_ARCHS["qwen2"], fewer_heads_as=None))
    with pytest.raises(SlmError, match="llama.cpp cannot load the exported GGUF"):
        run_export(slm, tmp_path / "bad.gguf", ExportConfig(type="f16", parity_tokens=0))
    assert not [p for p in tmp_path.iterdir() if "bad" in p.name]

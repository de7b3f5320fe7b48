"""Pruning invariants on tiny models: exact sparsity, N:M groups, OBS maths, structure."""
import pytest
import torch
from pydantic import ValidationError
from transformers import AutoModelForCausalLM

import slmkit
from slmkit.compress.prune import PruneConfig, prune_model, run_prune
from slmkit.compress.prune import depth, width
from slmkit.compress.prune.calib import calib_blocks
from slmkit.compress.prune.mask import row_mask
from slmkit.compress.prune.sparsegpt import sparsify
from slmkit.errors import SlmError
from slmkit.models.arch import decoder_layers, linear_layers
from slmkit.models.io import count_params
from slmkit.models.tiny import tiny_slm

UNSTRUCTURED = ("magnitude", "wanda", "sparsegpt")


@pytest.fixture(scope="module")
def calib():
    return calib_blocks("python-docs", tiny_slm("llama").tokenizer, 64, 8)


def _logits(model, ids):
    with torch.no_grad():
        return model(ids, use_cache=False).logits


def _linears(model):
    return [m for layer in decoder_layers(model) for m in linear_layers(layer).values()]


@pytest.mark.parametrize("method", UNSTRUCTURED)
@pytest.mark.parametrize("sparsity", [0.5, 0.3])
def test_exact_sparsity(method, sparsity, calib):
    """Magnitude/Wanda: every row loses round(s * in) weights; SparseGPT (threshold per
    block, as in the paper): every layer loses round(s * numel)."""
    model = tiny_slm("llama").model
    prune_model(model, calib, PruneConfig(method=method, sparsity=sparsity))
    for m in _linears(model):
        if method == "sparsegpt":
            assert int((m.weight == 0).sum()) == round(sparsity * m.weight.numel()), m
        else:
            zeros = (m.weight == 0).sum(1)
            assert torch.all(zeros == round(sparsity * m.in_features)), (method, m)


@pytest.mark.parametrize("method", UNSTRUCTURED)
@pytest.mark.parametrize("family", ["llama", "phi3"])
def test_nm_pattern_in_every_group(method, family, calib):
    model = tiny_slm(family).model
    prune_model(model, calib, PruneConfig(method=method, pattern="2:4"))
    for m in _linears(model):
        groups = (m.weight != 0).reshape(m.out_features, -1, 4).sum(-1)
        assert torch.all(groups == 2), (method, family)


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_sequential_prunes_each_group_from_inputs_through_the_pruned_ones(method, calib):
    from slmkit.compress.prune.calib import capture_inputs
    from slmkit.compress.prune.layerwise import input_groups
    ref = tiny_slm("llama").model
    inputs = capture_inputs(ref, calib, 8)
    groups = input_groups(decoder_layers(ref)[0], inputs, inputs.kwargs[0])
    assert groups == [["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
                      ["self_attn.o_proj"], ["mlp.gate_proj", "mlp.up_proj"], ["mlp.down_proj"]]
    plain, seq = tiny_slm("llama").model, tiny_slm("llama").model
    prune_model(plain, calib, PruneConfig(method=method, sparsity=0.5))
    prune_model(seq, calib, PruneConfig(method=method, sparsity=0.5, sequential=True))
    first_a, first_b = decoder_layers(plain)[0], decoder_layers(seq)[0]
    for name, m in linear_layers(first_a).items():
        same = torch.equal(m.weight, linear_layers(first_b)[name].weight)
        # the first group sees the same inputs either way; the later ones do not
        assert same == (name in groups[0]), name
    for m in _linears(seq):
        assert int((m.weight == 0).sum()) == m.weight.numel() // 2


@pytest.mark.parametrize("method", UNSTRUCTURED)
def test_tiny_sparsity_leaves_logits_unchanged(method, calib):
    slm = tiny_slm("llama")
    before = _logits(slm.model, calib[:2])
    prune_model(slm.model, calib, PruneConfig(method=method, sparsity=1e-5))
    assert torch.equal(_logits(slm.model, calib[:2]), before)


def test_sparsegpt_identity_hessian_is_magnitude():
    torch.manual_seed(0)
    w = torch.randn(8, 16)
    out = sparsify(w, torch.eye(16), sparsity=0.5, blocksize=16)
    mask = w.abs() <= w.abs().flatten().kthvalue(64).values        # the 64 smallest |w|
    assert torch.equal(out == 0, mask)
    assert torch.equal(out[~mask], w[~mask])                         # no update without correlation
    nm = sparsify(w, torch.eye(16), pattern=(2, 4), blocksize=8)
    ref = w.abs().reshape(8, 4, 4).topk(2, dim=-1).indices
    kept = torch.zeros(8, 4, 4, dtype=torch.bool).scatter_(2, ref, True).reshape(8, 16)
    assert torch.equal(nm != 0, kept)


@pytest.mark.parametrize("seed", [0, 1])
def test_layer_error_ordering(seed):
    """On inputs with outlier channels: ||X(W - W')|| is SparseGPT < Wanda << magnitude."""
    torch.manual_seed(seed)
    w = torch.randn(32, 128)
    scale = torch.ones(128)
    scale[torch.randperm(128)[:6]] = 20.0                            # outlier features
    x = (torch.randn(1024, 128) + 0.5 * torch.randn(1024, 1)) * scale
    err = lambda v: float((x @ (w - v).T).pow(2).mean())
    magnitude = w * ~row_mask(w.abs(), 0.5)
    wanda = w * ~row_mask(w.abs() * x.pow(2).sum(0).sqrt(), 0.5)
    sgpt = sparsify(w, 2 * x.T @ x / len(x), sparsity=0.5)
    assert int((sgpt == 0).sum()) == w.numel() // 2
    assert err(sgpt) < err(wanda) < err(magnitude) / 5


def test_depth_equals_original_with_layers_skipped(calib):
    slm = tiny_slm("llama", num_hidden_layers=4)
    per_layer = count_params(decoder_layers(slm.model)[0])
    pruned, info = depth.prune(slm.model, calib, count_params(slm.model) - per_layer)
    removed = info["removed_layers"]
    assert len(removed) == 1 and len(decoder_layers(pruned)) == 3
    assert pruned.config.num_hidden_layers == 3
    layers = decoder_layers(slm.model)
    hooks = [layers[i].register_forward_hook(
        lambda _m, args, kwargs, out: args[0] if args else kwargs["hidden_states"],
        with_kwargs=True) for i in removed]
    expected = _logits(slm.model, calib[:2])
    for h in hooks:
        h.remove()
    torch.testing.assert_close(_logits(pruned, calib[:2]), expected, rtol=0, atol=1e-5)
    bi = info["block_influence"]
    assert bi[removed[0]] == min(bi)


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma3_text", "phi3", "stablelm"])
def test_width_equals_masked_original_and_reloads(family, calib, tmp_path):
    slm = tiny_slm(family)
    model = slm.model
    target = int(0.7 * count_params(model))
    pruned, info = width.prune(model, calib, target)
    assert count_params(pruned) <= target
    assert pruned.config.intermediate_size == info["intermediate_size"][1] < 128
    if family != "stablelm":
        assert info["heads"][1] < info["heads"][0]
    x = calib[:2]
    out = _logits(pruned, x)
    slmkit.save(slmkit.SLM(pruned, slm.tokenizer, "t"), tmp_path / "w", dtype=torch.float32)
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "w").eval()
    torch.testing.assert_close(_logits(again, x), out, rtol=0, atol=0)


def test_width_rounds_mlp_width_to_gguf_blocks():
    """Down-projection rows must split into llama.cpp's quantization blocks."""
    assert width.align_width(1000) == 992 and width.align_width(1000) % 32 == 0
    assert width.align_width(5000) == 4864 and width.align_width(5000) % 256 == 0
    assert width.align_width(2047) == 2016
    assert width.align_width(60) == 56 and width.align_width(9) == 9


def test_width_slices_exactly_what_it_ranks(calib):
    """Pruned logits == original logits with the dropped heads and channels zeroed."""
    slm = tiny_slm("llama")
    model = slm.model
    hs, cs = width.importance(model, calib)
    pruned = width.slice_model(model, hs, cs, heads=2, inter=96)
    hooks = []
    for i, layer in enumerate(decoder_layers(model)):
        head_keep = width._keep_heads(hs[i], width.shape_of(model), 2)[0]
        head_mask = torch.zeros(4, dtype=torch.bool)
        head_mask[head_keep] = True
        chan_mask = torch.zeros(128, dtype=torch.bool)
        chan_mask[cs[i].topk(96).indices] = True
        hooks.append(layer.self_attn.o_proj.register_forward_pre_hook(
            lambda _m, a, hm=head_mask: (a[0] * hm.repeat_interleave(16),)))
        hooks.append(layer.mlp.down_proj.register_forward_pre_hook(
            lambda _m, a, cm=chan_mask: (a[0] * cm,)))
    expected = _logits(model, calib[:2])
    for h in hooks:
        h.remove()
    torch.testing.assert_close(_logits(pruned, calib[:2]), expected, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("kwargs", [
    dict(method="wanda", sparsity=1.5), dict(method="wanda", sparsity=0),
    dict(method="sparsegpt"), dict(method="wanda", pattern="4:2"),
    dict(method="wanda", sparsity=0.3, pattern="2:4"), dict(method="depth"),
    dict(method="depth", target=0.5, sparsity=0.5), dict(method="magnitude", target=0.5),
    dict(method="width", target=1.0), dict(method="width", target=2.0),
    dict(method="width", target="2.0"), dict(method="depth", target=float("nan")),
    dict(method="wanda", sparsity=0.5, nsamplez=3),
])
def test_bad_config_names_field(kwargs):
    with pytest.raises(ValidationError):
        PruneConfig(**kwargs)


@pytest.mark.parametrize("cfg, needle", [
    (dict(method="wanda", pattern="2:5"), "does not divide"),
    (dict(method="depth", target="5B"), "not smaller than the model"),
    (dict(method="width", target=2), "below what width pruning can reach"),
    (dict(method="depth", target=0.05), "leaves no decoder layer"),
    (dict(method="wanda", sparsity=0.5, calib="SHORT"), "fewer than one block"),
])
def test_bad_input_errors_and_writes_nothing(cfg, needle, tmp_path, tmp_path_factory):
    if cfg.get("calib") == "SHORT":
        short = tmp_path_factory.mktemp("data") / "short.txt"
        short.write_text("def f(x):\n    return x\n")
        cfg = {**cfg, "calib": str(short)}
    out = tmp_path / "out"
    with pytest.raises(SlmError, match=needle):
        run_prune(tiny_slm("llama"), out,
                  PruneConfig(**{"nsamples": 4, "seqlen": 64, "eval_tokens": 0, **cfg}))
    assert list(tmp_path.iterdir()) == []


def test_bf16_calibration_close_to_fp32(calib):
    """Autocast calibration keeps the sparsity exact and picks nearly the same weights."""
    masks = []
    for autocast in (False, True):
        model = tiny_slm("llama").model
        prune_model(model, calib, PruneConfig(method="wanda", sparsity=0.5,
                                              calib_autocast=autocast))
        masks.append(torch.cat([(m.weight == 0).flatten() for m in _linears(model)]))
    assert masks[0].sum() == masks[1].sum()
    assert (masks[0] == masks[1]).float().mean() > 0.95


def test_run_prune_report_and_files(tmp_path):
    slm = tiny_slm("llama")
    report = run_prune(slm, tmp_path / "p", PruneConfig(method="sparsegpt", sparsity=0.5,
                                                        nsamples=4, seqlen=64, eval_tokens=512))
    files = {p.name for p in (tmp_path / "p").iterdir()}
    assert {"config.json", "model.safetensors", "report.json", "slmkit.json"} <= files
    assert report["params_before"] == report["params_after"] == count_params(slm.model)
    assert report["sparsity"] == pytest.approx(0.5)
    assert report["sparse_format_bytes"] < report["bytes_after"]
    assert report["ppl_before"] > 1 and report["ppl_after"] > 1
    assert report["calib_tokens"] == 4 * 64
    assert len(report["layer_sparsity"]) == 2
    assert not any(_linear.weight.eq(0).any() for _linear in _linears(slm.model))  # caller's copy
    meta = slmkit.load(tmp_path / "p").meta
    assert meta["history"][-1]["step"] == "prune"


def test_target_fraction_is_of_the_decoder_layers(calib, tmp_path):
    """A big vocabulary does not make a fraction cut the layers deeper than asked."""
    from slmkit.compress.prune.api import decoder_params, target_params
    slm = tiny_slm("llama", vocab_size=4096)           # the embedding outweighs the layers
    model = slm.model
    layers, total = decoder_params(model), count_params(model)
    assert layers < total / 2
    assert target_params(0.6, model) == total - layers + int(0.6 * layers)
    assert target_params("90K", model) == 90_000                     # a count: whole model
    rep = run_prune(slm, tmp_path / "w", PruneConfig(method="width", target=0.6, nsamples=4,
                                                     seqlen=64, eval_tokens=0))
    before, after = rep["decoder_params"]
    assert 0.45 * before < after <= 0.6 * before                     # not far below 60%
    assert rep["params_after"] <= rep["target_params"]

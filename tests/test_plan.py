"""slm plan: memory and speed predictions, and recommendations on fixed probe numbers."""
import json
import shutil

import pytest

from slmkit import plan
from slmkit.errors import SlmError

# The machine of the design notes: 40 GB/s, fp32 170 GFLOP/s, bf16 700.
PROBE = plan.Probe(bandwidth_gbs=40.0, fp32_gflops=170.0, bf16_gflops=700.0,
                   free_bytes=20 * 10**9, total_bytes=24 * 10**9, cores=2)


def top(memory, rate=None, context=2048):
    rows = plan.recommend(plan.parse_size(memory), PROBE, tokens_per_second=rate,
                          context=context)
    return rows


def test_kv_cache_from_config():
    shape = plan.catalog_shape("smollm2-135m")       # 30 layers, 3 KV heads of 64
    assert plan.kv_bytes(shape, 2048) == 2 * 3 * 64 * 2 * 30 * 2048


def test_weight_bytes_per_type():
    shape = plan.catalog_shape("smollm2-135m")
    stored, read = plan.weight_bytes(shape, plan.QUANT_TYPES["f16"])
    assert stored == read == 2 * shape.params               # tied: the head reads the embedding
    q4, _ = plan.weight_bytes(shape, plan.QUANT_TYPES["q4_0"])
    emb = shape.vocab * shape.hidden
    assert q4 == int(((shape.params - emb) * 4.5 + emb * 6.5625) / 8)


def test_moe_reads_only_active_experts():
    shape = plan.catalog_shape("mixtral-8x7b")
    stored, read = plan.weight_bytes(shape, plan.QUANT_TYPES["q8_0"])
    assert read < 0.35 * stored                             # 2 of 8 experts per token


def test_decode_speed_follows_the_kernel_rate_or_the_bandwidth():
    p = plan.predict("smollm2-360m", "q8_0", PROBE)
    more_bw = plan.predict("smollm2-360m", "q8_0",
                           plan.Probe(**{**PROBE.__dict__, "bandwidth_gbs": 80.0}))
    faster = plan.predict("smollm2-360m", "q8_0",
                          plan.Probe(**{**PROBE.__dict__, "fp32_gflops": 340.0}))
    # on the design machine a small model is bound by the matrix-vector kernels
    assert p.bound == "compute" and more_bw.tok_s == p.tok_s and faster.tok_s > 1.5 * p.tok_s
    # with little bandwidth the same model is bound by memory and scales with it
    slow = plan.Probe(**{**PROBE.__dict__, "bandwidth_gbs": 2.0})
    s1 = plan.predict("smollm2-360m", "q8_0", slow)
    s2 = plan.predict("smollm2-360m", "q8_0",
                      plan.Probe(**{**slow.__dict__, "bandwidth_gbs": 4.0}))
    assert s1.bound == "memory" and 1.6 < s2.tok_s / s1.tok_s <= 2.0
    assert plan.predict("smollm2-360m", "q4_0", PROBE).tok_s > p.tok_s


def _tiny_gguf(path, body_type):
    """A one-layer llama GGUF whose seven matrices are stored as ``body_type``."""
    import gguf
    import numpy as np
    w = gguf.GGUFWriter(str(path), "llama")
    for key, value in (("block_count", 1), ("embedding_length", 256), ("context_length", 64),
                       ("feed_forward_length", 512), ("attention.head_count", 4),
                       ("attention.head_count_kv", 4)):
        w.add_uint32(f"llama.{key}", value)
    rng = np.random.default_rng(0)
    w.add_tensor("token_embd.weight", rng.standard_normal((1000, 256)).astype(np.float16))
    for name, shape in (("attn_q", (256, 256)), ("attn_k", (256, 256)), ("attn_v", (256, 256)),
                        ("attn_output", (256, 256)), ("ffn_gate", (512, 256)),
                        ("ffn_up", (512, 256)), ("ffn_down", (256, 512))):
        data = rng.standard_normal(shape).astype(np.float32)
        q = gguf.quants.quantize(data, body_type)
        w.add_tensor(f"blk.0.{name}.weight", q, raw_shape=q.shape, raw_dtype=body_type)
    w.add_tensor("output_norm.weight", np.ones(256, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_gguf_prediction_prices_each_weight_type(tmp_path):
    from gguf import GGMLQuantizationType as T
    q40 = plan.predict_gguf(_tiny_gguf(tmp_path / "a.gguf", T.Q4_0), PROBE)
    q41 = plan.predict_gguf(_tiny_gguf(tmp_path / "b.gguf", T.Q4_1), PROBE)
    body = 4 * 256 * 256 + 3 * 512 * 256
    assert q40["weights"] == {"Q4_0": body, "F16": 1000 * 256}       # tied: the head reads it
    assert q41["weights"] == {"Q4_1": body, "F16": 1000 * 256}
    # same shapes, and the only difference in time is the body's kernel rate
    dt = 1 / q41["tok_s"] - 1 / q40["tok_s"]
    expect = 2 * body / (PROBE.fp32_gflops * 1e9) * (1 / plan.KERNEL_RATE["Q4_1"]
                                                     - 1 / plan.KERNEL_RATE["Q4_0"])
    assert dt == pytest.approx(expect, rel=0.02) and q41["tok_s"] < q40["tok_s"]


def test_small_memory_picks_biggest_model_that_fits():
    rows = top("512M")
    assert (rows[0].model, rows[0].qtype) == ("qwen2.5-0.5b", "q4_k_m")
    assert rows[0].fits and rows[0].total_bytes <= plan.parse_size("512M")
    assert any("<=" in r for r in rows[0].reasons)


def test_large_memory_prefers_precision_of_the_biggest_model():
    rows = top("64G")
    assert (rows[0].model, rows[0].qtype) == ("mixtral-8x7b", "q8_0")


def test_speed_requirement_excludes_slow_models():
    rows = top("64G", rate=10)
    assert rows[0].tok_s >= 10 and rows[0].model != "mixtral-8x7b"
    ok = [r for r in rows if r.fits and r.fast_enough]
    assert all(r.tok_s >= 10 and r.total_bytes <= plan.parse_size("64G") for r in ok)
    # nothing ranked below the top one scores higher while qualifying
    assert all(r.score <= rows[0].score for r in ok)
    slow = next(r for r in rows if r.model == "mixtral-8x7b" and r.qtype == "q4_0")
    assert not slow.fast_enough and "< 10 required" in slow.reasons[1]


def test_long_context_needs_kv_memory():
    short = plan.predict("smollm2-360m", "q4_k_m", PROBE, context=1024)
    long = plan.predict("smollm2-360m", "q4_k_m", PROBE, context=8192)
    assert long.kv_bytes == 8 * short.kv_bytes and long.tok_s < short.tok_s


def test_nothing_fits_tiny_memory():
    assert not any(r.fits for r in top("1M"))


@pytest.mark.parametrize("text,n", [("8G", 8 * 2**30), ("512MB", 512 * 2**20),
                                    ("1.5GiB", int(1.5 * 2**30)), ("2e9", 2 * 10**9)])
def test_parse_size(text, n):
    assert plan.parse_size(text) == n


def test_parse_size_rejects_garbage():
    with pytest.raises(SlmError, match="cannot read memory size"):
        plan.parse_size("lots")


def test_probe_is_cached(tmp_path):
    path = tmp_path / "probe.json"
    path.write_text(json.dumps(PROBE.__dict__))
    assert plan.load_probe(path=path) == PROBE


def test_cli_json_uses_cached_probe(tmp_path, monkeypatch, capsys):
    from slmkit.cli import main
    from slmkit.paths import cache_dir
    real = cache_dir() / "param_counts.json"
    if real.exists():
        shutil.copy(real, tmp_path / "param_counts.json")
    (tmp_path / plan.PROBE_FILE).write_text(json.dumps(PROBE.__dict__))
    monkeypatch.setenv("SLMKIT_CACHE", str(tmp_path))
    try:
        main(["plan", "--memory", "512M", "--json"])
    except SystemExit as exc:                     # typer may exit 0 after the command
        assert exc.code in (0, None)
    out = json.loads(capsys.readouterr().out)
    assert out["probe"]["bandwidth_gbs"] == 40.0
    best = out["recommendations"][0]
    assert (best["model"], best["qtype"]) == ("qwen2.5-0.5b", "q4_k_m")


def test_cli_warns_when_the_probe_ran_on_a_busy_machine(tmp_path, monkeypatch, capsys):
    from slmkit.cli import main
    from slmkit.paths import cache_dir
    real = cache_dir() / "param_counts.json"
    if real.exists():
        shutil.copy(real, tmp_path / "param_counts.json")
    monkeypatch.setenv("SLMKIT_CACHE", str(tmp_path))
    for load, warned in ((0.2, False), (3.5, True)):
        (tmp_path / plan.PROBE_FILE).write_text(json.dumps({**PROBE.__dict__, "load_avg": load}))
        try:
            main(["plan", "--memory", "512M"])
        except SystemExit as exc:
            assert exc.code in (0, None)
        out = " ".join(capsys.readouterr().out.split())
        assert ("machine was busy (load 3.5 on 2 cores)" in out) is warned

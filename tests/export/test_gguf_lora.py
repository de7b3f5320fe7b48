"""LoRA adapters as llama.cpp adapter GGUFs: the base GGUF plus the adapter computes what
the merged model computes, and the adapter changes what the base alone computes."""
import json

import gguf
import pytest
import torch

import slmkit
from slmkit.engines import open_engine
from slmkit.errors import SlmError
from slmkit.export import ExportConfig, run_export
from slmkit.models.tiny import tiny_slm
from slmkit.tune import adapters
from slmkit.tune.finetune import FinetuneConfig, run_finetune

F32 = dict(type="f32", parity_tokens=0)


def _text_data(tmp_path):
    from slmkit.data.corpora import python_docs
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": r["text"]}) + "\n" for r in python_docs()[:40]))
    return path


def _trained_adapter(tmp_path, family):
    """A LoRA trained a few steps without --merge on a tiny model with sharp attention."""
    base_dir = slmkit.save(tiny_slm(family, initializer_range=0.3), tmp_path / "base",
                           dtype=torch.float32)
    cfg = FinetuneConfig(data=str(_text_data(tmp_path)), method="lora", rank=4, alpha=8,
                         lr=2e-2, seq_len=64, batch_size=2, max_tokens=64 * 2 * 12,
                         merge=False, max_val_blocks=2, patience=0)
    run_finetune(str(base_dir), tmp_path / "ft", cfg, progress=False)
    return base_dir, tmp_path / "ft" / "adapter"


@pytest.mark.parametrize("family", ["llama", "gemma3_text"])
def test_adapter_gguf_matches_merged_model(family, tmp_path):
    base_dir, ad = _trained_adapter(tmp_path, family)
    rep = run_export(str(ad), tmp_path / "lora.gguf",
                     ExportConfig(format="gguf-lora", type="f32", parity_tokens=48))
    p = rep["parity"]                       # llama.cpp base + adapter vs PyTorch with it
    assert p["argmax_agreement"] >= 0.99 and p["max_abs_logit_diff"] < 0.05, p
    if family == "llama":              # a few steps move the tiny Llama's argmax; Gemma's less
        assert p["argmax_changed_by_adapter"] > 0, p
    assert rep["lora_layers"] == 2 * 7 and rep["rank"] == 4 and rep["alpha"] == 8.0

    r = gguf.GGUFReader(str(tmp_path / "lora.gguf"))
    assert r.fields["general.type"].contents() == "adapter"
    assert r.fields["adapter.type"].contents() == "lora"
    assert r.fields["adapter.lora.alpha"].contents() == 8.0
    names = {t.name: tuple(int(x) for x in t.shape) for t in r.tensors}
    assert names["blk.0.attn_q.weight.lora_a"] == (64, 4)           # GGUF ne: (in, rank)
    assert names["blk.0.ffn_down.weight.lora_b"][0] == 4            # (rank, out)

    # base GGUF + adapter GGUF against the merged model exported as GGUF
    run_export(str(base_dir), tmp_path / "base.gguf", ExportConfig(**F32))
    merged = slmkit.load(str(ad))
    merged = slmkit.SLM(adapters.merge(merged.model), merged.tokenizer, "merged", {}, None)
    run_export(merged, tmp_path / "merged.gguf", ExportConfig(**F32))
    ids = merged.tokenizer("def walk(tree):\n    for node in tree.children:\n"
                           "        yield from walk(node)\n    return None\n")["input_ids"]
    with_lora = open_engine(str(tmp_path / "base.gguf"), adapter=str(tmp_path / "lora.gguf"),
                            logits_all=True)
    assert with_lora.name == "llama.cpp"
    got = with_lora.logits(ids)
    want = open_engine(str(tmp_path / "merged.gguf"), logits_all=True).logits(ids)
    alone = open_engine(str(tmp_path / "base.gguf"), logits_all=True).logits(ids)
    agree = float((got.argmax(-1) == want.argmax(-1)).float().mean())
    assert agree >= 0.99 and float((got - want).abs().max()) < 0.05
    assert float((alone - want).abs().max()) > 10 * float((got - want).abs().max())


def test_dora_and_plain_models_are_refused(tmp_path):
    slm = tiny_slm("llama")
    model = adapters.setup_model(slm.model, "dora", rank=4)
    adapters.save_adapter(model, tmp_path / "dora", "tiny", adapters.base_fingerprint(model),
                          "dora")
    with pytest.raises(SlmError, match="DoRA"):
        run_export(slmkit.SLM(model, slm.tokenizer, "tiny", {}, None), tmp_path / "d.gguf",
                   ExportConfig(format="gguf-lora", **F32))
    with pytest.raises(SlmError, match="not an adapter"):
        run_export(tiny_slm("llama"), tmp_path / "x.gguf",
                   ExportConfig(format="gguf-lora", **F32))
    assert not list(tmp_path.glob("*.gguf")) and not list(tmp_path.glob(".*"))


def test_cli_refuses_a_quantized_adapter_type_at_once(tmp_path):
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-m", "slmkit", "export", str(tmp_path), "--format",
                        "gguf-lora", "--type", "q4_0", "--out", str(tmp_path / "a.gguf")],
                       capture_output=True, text=True, timeout=300)
    errors = [ln for ln in (r.stdout + r.stderr).splitlines() if ln.startswith("error:")]
    assert r.returncode == 2 and len(errors) == 1, r.stdout + r.stderr
    assert "--type" in errors[0] and "f32 or f16" in errors[0]

"""Loading, saving and the catalog, on tiny models of every family."""
import json

import pytest
import torch

import slmkit
from slmkit.errors import SlmError
from slmkit.models.catalog import CATALOG, param_counts
from slmkit.models.io import META_FILE, count_params
from slmkit.models.tiny import TINY_FAMILIES, tiny_slm

IDS = torch.tensor([[5, 17, 99, 3, 250, 41, 7, 300]])


@pytest.mark.parametrize("family", sorted(TINY_FAMILIES))
def test_save_load_roundtrip_identical_logits(family, tmp_path):
    slm = tiny_slm(family)
    with torch.no_grad():
        before = slm.model(IDS).logits
    out = slmkit.save(slm, tmp_path / family)
    again = slmkit.load(out)
    with torch.no_grad():
        after = again.model(IDS).logits
    assert torch.equal(before, after)
    assert again.model.config.model_type == slm.model.config.model_type
    meta = json.loads((out / META_FILE).read_text())
    assert meta["params"] == count_params(slm.model)
    assert meta["source"] == f"tiny:{family}"


def test_save_records_history_and_refuses_overwrite(tmp_path):
    slm = tiny_slm("llama")
    slmkit.save(slm, tmp_path / "m", step={"step": "prune", "report": {"sparsity": 0.5}})
    with pytest.raises(SlmError, match="already exists"):
        slmkit.save(slm, tmp_path / "m")
    meta = slmkit.load(tmp_path / "m").meta
    assert [h["step"] for h in meta["history"]] == ["prune"]
    assert not list(tmp_path.glob(".m.tmp*"))           # no temp leftovers


def test_catalog_counts_match_built_models():
    # exact counts from the meta device equal a model really built from the same config
    slm = tiny_slm("llama")
    total, active = param_counts("smollm2-135m")
    assert total == 134_515_008 and active == total
    assert count_params(slm.model) < 1e6
    total, active = param_counts("mixtral-8x7b")
    assert 46.5e9 < total < 47e9 and 12.7e9 < active < 13.0e9
    e = CATALOG["llama-3-8b"]
    assert e.weight_bytes("fp16") == 2 * e.params
    assert e.weight_bytes("int4") < e.weight_bytes("int8") < e.weight_bytes("fp16")


def test_required_families_in_catalog():
    names = set(CATALOG)
    for need in ("llama-3-8b", "gemma-2b", "gemma-7b", "gemma3-270m", "phi-3-mini", "mixtral-8x7b",
                 "stablelm-2-1.6b", "falcon-7b", "solar-10.7b", "smollm2-135m", "smollm2-360m",
                 "smollm2-1.7b", "qwen2.5-0.5b", "qwen2.5-1.5b"):
        assert need in names


def test_pickled_weights_refused(tmp_path):
    slm = tiny_slm("llama")
    out = slmkit.save(slm, tmp_path / "m")
    for f in out.glob("*.safetensors"):
        f.unlink()
    (out / "pytorch_model.bin").write_bytes(b"\x80\x04not really")
    with pytest.raises(SlmError, match="pickled"):
        slmkit.load(out)


def test_truncated_safetensors_refused(tmp_path):
    out = slmkit.save(tiny_slm("llama"), tmp_path / "m")
    w = next(out.glob("*.safetensors"))
    w.write_bytes(w.read_bytes()[:-100])
    with pytest.raises(SlmError, match="truncated"):
        slmkit.load(out)


def test_bad_specs(tmp_path):
    with pytest.raises(SlmError, match="not found"):
        slmkit.load(tmp_path / "nope")
    with pytest.raises(SlmError, match="offline"):
        slmkit.load("someorg/not-cached-model")
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"NOPE" + b"\0" * 100)
    with pytest.raises(SlmError, match="not a GGUF"):
        slmkit.load(bad)


@pytest.mark.real
def test_real_smollm2_loads_and_matches_catalog():
    slm = slmkit.load("smollm2-135m")
    assert slm.n_params == CATALOG["smollm2-135m"].params
    assert slm.tokenizer.chat_template

"""An adapter written without --merge is a model: slmkit.load(base, adapter=DIR), or the
adapter folder itself, gives the logits of the merged model."""
import pytest
import torch

import slmkit
from slmkit.engines import open_engine
from slmkit.errors import SlmError
from slmkit.models.tiny import tiny_slm
from slmkit.tune import adapters

X = torch.randint(3, 500, (1, 24), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("ad")
    base = slmkit.save(tiny_slm("llama"), root / "base")
    slm = slmkit.load(base)
    net = adapters.setup_model(slm.model, "lora", rank=4)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for n, p in net.named_parameters():
            if "lora_B" in n:
                p.add_(0.05 * torch.randn(p.shape, generator=g))
    fp = adapters.base_fingerprint(slmkit.load(base).model)
    adapters.save_adapter(net, root / "ft" / "adapter", str(base), fp, "lora")
    with torch.no_grad():
        merged = adapters.merge(net).eval()(X).logits
    return base, root / "ft", merged


def test_load_with_adapter_equals_merged(trained):
    base, ft, merged = trained
    for slm in (slmkit.load(base, adapter=ft / "adapter"), slmkit.load(ft),
                slmkit.load(ft / "adapter")):
        assert slm.meta["adapter"] == str(ft / "adapter")
        with torch.no_grad():
            assert torch.allclose(slm.model(X).logits, merged, atol=1e-4)
    with torch.no_grad():
        plain = slmkit.load(base).model(X).logits
    assert not torch.allclose(plain, merged, atol=1e-3)          # the adapter does something


def test_engine_with_adapter_and_wrong_base(trained, tmp_path):
    base, ft, merged = trained
    eng = open_engine(str(base), adapter=str(ft), device="cpu")
    assert eng.name == "pytorch"
    ids = X[0].tolist()
    assert torch.allclose(eng.logits(ids), merged[0], atol=1e-4)
    other = slmkit.save(tiny_slm("llama", seed=5), tmp_path / "other")
    with pytest.raises(SlmError, match="different base model"):
        slmkit.load(other, adapter=ft)
    with pytest.raises(SlmError, match="llama.cpp applies LoRA adapters as .gguf"):
        open_engine(str(base), "llama.cpp", adapter=str(ft))

"""Several adapters on one base: the request's model field picks one, /v1/models lists
them, and each answers what the engine with that adapter alone generates."""
import concurrent.futures

import pytest
import torch

from slmkit.engines import generate_text, open_engine
from slmkit.errors import SlmError
from slmkit.export import ExportConfig, run_export
from slmkit.models.io import load
from slmkit.models.tiny import tiny_slm
from slmkit.serve import BackgroundServer, ServeConfig
from slmkit.serve.models import parse_adapters
from slmkit.tune import adapters

PROMPT = "The os module provides"


def _adapter(base_dir, out, seed):
    """A LoRA on the base with random B matrices (so it changes the outputs), saved."""
    model = adapters.setup_model(load(base_dir).model, "lora", rank=4, alpha=8)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
    return adapters.save_adapter(model, out, str(base_dir), adapters.base_fingerprint(model),
                                 "lora")


@pytest.fixture(scope="module")
def two_adapters(tiny_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("adapters")
    return {"docs": str(_adapter(tiny_dir, d / "docs", 1)), "sql": str(_adapter(tiny_dir, d / "sql", 2))}


def _serve(model, named, engine):
    cfg = ServeConfig(model=str(model), port=0, engine=engine, ctx=256, max_tokens=64,
                      max_concurrency=2, max_queue=8, adapters=named)
    return BackgroundServer(cfg).start()


def _client(srv):
    from openai import OpenAI
    return OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def _alone(model, adapter):
    eng = open_engine(str(model), adapter=adapter, device="cpu", n_ctx=256)
    return generate_text(eng, PROMPT, max_tokens=16, temperature=0.0)[0]


def _check(srv, base_id, named, want):
    import openai
    client = _client(srv)
    cards = client.models.list().data
    assert [c.id for c in cards] == [base_id, *named]
    assert all(getattr(c, "parent", None) == base_id for c in cards[1:])
    assert client.models.retrieve("sql").id == "sql"

    def ask(model_id):
        r = client.completions.create(model=model_id, prompt=PROMPT, max_tokens=16,
                                      temperature=0)
        return r.choices[0].text

    ids = [base_id, *named] * 2                      # each id twice, all at once
    with concurrent.futures.ThreadPoolExecutor(len(ids)) as pool:
        got = list(pool.map(ask, ids))
    for model_id, text in zip(ids, got):
        assert text == want[model_id], model_id
    assert len(set(want.values())) == 3              # the adapters change the outputs
    with pytest.raises(openai.BadRequestError, match="'docs', 'sql'"):
        ask("nope")


def test_pytorch_server_picks_adapter_by_model(tiny_dir, two_adapters):
    want = {"tiny-llama": _alone(tiny_dir, None),
            **{n: _alone(tiny_dir, d) for n, d in two_adapters.items()}}
    srv = _serve(tiny_dir, two_adapters, "pytorch")
    try:
        _check(srv, "tiny-llama", two_adapters, want)
    finally:
        srv.stop(timeout=10)


def test_llamacpp_server_picks_gguf_lora_by_model(tiny_dir, two_adapters, tmp_path):
    base = tmp_path / "base.gguf"
    run_export(str(tiny_dir), base, ExportConfig(type="f32", parity_tokens=0))
    loras = {}
    for name, d in two_adapters.items():
        loras[name] = str(tmp_path / f"{name}.gguf")
        run_export(d, loras[name], ExportConfig(format="gguf-lora", type="f32", parity_tokens=0))
    want = {"base": _alone(base, None), **{n: _alone(base, p) for n, p in loras.items()}}
    srv = _serve(base, loras, "auto")
    try:
        _check(srv, "base", loras, want)
    finally:
        srv.stop(timeout=10)


def test_adapter_options():
    assert parse_adapters(["runs/ft/adapter"]) == ("runs/ft/adapter", {})
    assert parse_adapters(["a=x/ad", "b=y.gguf"]) == (None, {"a": "x/ad", "b": "y.gguf"})
    with pytest.raises(SlmError, match="twice"):
        parse_adapters(["a=x", "a=y"])
    with pytest.raises(SlmError, match="NAME=DIR"):
        parse_adapters(["x", "b=y"])


def test_cli_refuses_bad_adapter_names(tiny_dir):
    import subprocess
    import sys

    def serve(*args):
        r = subprocess.run([sys.executable, "-m", "slmkit", "serve", str(tiny_dir), *args],
                           capture_output=True, text=True, timeout=300)
        errors = [ln for ln in (r.stdout + r.stderr).splitlines() if ln.startswith("error:")]
        assert r.returncode == 2 and len(errors) == 1, r.stdout + r.stderr
        return errors[0]
    assert "base model's id" in serve("--adapter", "tiny-llama=x")
    assert "no such file" in serve("--adapter", "a=/no/such")
    assert "NAME=DIR" in serve("--adapter", "a=x", "--adapter", "y")

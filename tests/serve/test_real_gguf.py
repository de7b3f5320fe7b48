"""The built-in SmolLM2-135M GGUF on the llama.cpp engine: server text equals `slm generate`."""
import json

import pytest
from typer.testing import CliRunner

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def gguf_server():
    from slmkit.models.io import builtin_gguf
    from slmkit.serve import BackgroundServer, ServeConfig
    path = builtin_gguf("smollm2-135m")
    srv = BackgroundServer(ServeConfig(model=str(path), port=0, max_concurrency=1, ctx=1024,
                                       name="smollm2")).start(timeout=120)
    srv.gguf = path
    yield srv
    srv.stop()


def slm_generate(*args) -> dict:
    from slmkit.cli import _register
    from slmkit.cli.app import app
    _register()
    res = CliRunner().invoke(app, ["generate", *map(str, args), "--json", "--ctx", "1024"])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def test_llamacpp_completion_and_chat_match_generate(gguf_server):
    from openai import OpenAI
    client = OpenAI(base_url=gguf_server.url + "/v1", api_key="unused", max_retries=0)
    prompt = "The three primary colours are"
    ref = slm_generate(gguf_server.gguf, prompt, "--max-tokens", "24", "--temperature", "0.8",
                       "--top-p", "0.9", "--seed", "42")
    assert ref["engine"] == "llama.cpp"
    r = client.completions.create(model="smollm2", prompt=prompt, max_tokens=24,
                                  temperature=0.8, top_p=0.9, seed=42)
    assert r.choices[0].text == ref["text"] and len(ref["text"]) > 10
    assert r.usage.completion_tokens == ref["usage"]["completion_tokens"]

    question = "What is the capital of France?"
    ref = slm_generate(gguf_server.gguf, question, "--chat", "--max-tokens", "30",
                       "--temperature", "0")
    stream = client.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": question}], max_tokens=30,
        temperature=0, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == ref["text"]
    assert len(text) > 10

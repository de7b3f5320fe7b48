"""The official openai client against `slm serve` gets what `slm generate` prints."""
import json

import httpx
import pytest
from typer.testing import CliRunner

from slmkit.cli import _register
from slmkit.cli.app import app

MODEL = "tiny-llama"
PROMPT = "The os module provides"


def slm_generate(model, prompt, *extra) -> dict:
    """Run `slm generate ... --json` in-process and return its JSON."""
    _register()
    res = CliRunner().invoke(app, ["generate", str(model), prompt, "--json", *extra])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


@pytest.mark.parametrize("temperature,seed", [(0.0, None), (0.9, 1234)])
def test_completion_matches_generate(client, tiny_dir, temperature, seed):
    extra = ["--max-tokens", "24", "--temperature", str(temperature), "--top-p", "0.9"]
    ref = slm_generate(tiny_dir, PROMPT, *extra, *(["--seed", str(seed)] if seed else []))
    r = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=24,
                                  temperature=temperature, top_p=0.9, seed=seed)
    assert r.choices[0].text == ref["text"]
    assert len(ref["text"]) > 0
    assert r.usage.prompt_tokens == ref["usage"]["prompt_tokens"]
    assert r.usage.completion_tokens == ref["usage"]["completion_tokens"]
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert r.choices[0].finish_reason == ref["finish_reason"]


def test_chat_matches_generate_chat(client, tiny_dir):
    ref = slm_generate(tiny_dir, "What is a list?", "--chat", "--max-tokens", "20",
                       "--temperature", "0.8", "--seed", "5")
    r = client.chat.completions.create(model=MODEL, max_tokens=20, temperature=0.8, seed=5,
                                       top_p=0.95,
                                       messages=[{"role": "user", "content": "What is a list?"}])
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == ref["text"]
    assert r.usage.prompt_tokens == ref["usage"]["prompt_tokens"]


def test_streaming_equals_whole(client):
    args = dict(model=MODEL, max_tokens=30, temperature=0.7, seed=9)
    whole = client.chat.completions.create(messages=[{"role": "user", "content": "hi"}], **args)
    chunks = list(client.chat.completions.create(
        messages=[{"role": "user", "content": "hi"}], stream=True,
        stream_options={"include_usage": True}, **args))
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) > 3                                    # streamed, not one lump
    assert "".join(pieces) == whole.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == [whole.choices[0].finish_reason]

    text = "".join(c.choices[0].text for c in client.completions.create(
        prompt=PROMPT, stream=True, **args))
    assert text == client.completions.create(prompt=PROMPT, **args).choices[0].text


def test_sse_wire_format(server):
    body = {"model": MODEL, "prompt": PROMPT, "max_tokens": 8, "stream": True, "temperature": 0}
    with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=30) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        raw = r.read().decode()
    events = raw.split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    for ev in events[:-2]:
        assert ev.startswith("data: ")
        obj = json.loads(ev[6:])
        assert obj["object"] == "text_completion" and obj["model"] == MODEL


def test_stop_string(client):
    args = dict(model=MODEL, prompt=PROMPT, max_tokens=40, temperature=0)
    full = client.completions.create(**args).choices[0].text
    stop = full[10:13]
    assert stop and stop in full
    r = client.completions.create(stop=[stop], **args)
    assert r.choices[0].text == full[: full.index(stop)]
    assert r.choices[0].finish_reason == "stop"


def test_models_health_metrics(client, server):
    ids = [m.id for m in client.models.list().data]
    assert ids == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL
    h = httpx.get(server.url + "/health").json()
    assert h["status"] == "ok" and h["model"] == MODEL
    client.completions.create(model=MODEL, prompt="x", max_tokens=5, temperature=0)
    text = httpx.get(server.url + "/metrics").text
    values = _metric_values(text)
    assert values['slm_requests_total{endpoint="/v1/completions",status="200"}'] >= 1
    assert values["slm_completion_tokens_total"] >= 5
    assert values["slm_time_to_first_token_seconds_count"] >= 1
    assert "slm_queue_depth" in values and "slm_request_latency_seconds_bucket" in text


def _metric_values(text: str) -> dict:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out

"""Auth, bind safety, request validation, body limit, and robustness against bad input."""
import httpx
import pytest
from typer.testing import CliRunner

from slmkit.cli import _register
from slmkit.cli.app import app
from slmkit.errors import SlmError
from slmkit.serve import ServeConfig, check_bind, is_loopback

MODEL = "tiny-llama"


def post(server, path, body=None, **kw):
    return httpx.post(server.url + path, json=body, timeout=30, **kw)


def assert_error(r, status, param=None, code=None):
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["message"]
    if param is not None:
        assert err["param"] == param
    if code is not None:
        assert err["code"] == code
    return err


# ------------------------------------------------------------------ auth

def test_missing_and_wrong_key_get_401(keyed_server, api_key):
    body = {"model": MODEL, "prompt": "hi", "max_tokens": 2}
    assert_error(post(keyed_server, "/v1/completions", body), 401, code="invalid_api_key")
    bad = {"Authorization": "Bearer " + api_key[:-1] + "x"}
    assert_error(post(keyed_server, "/v1/completions", body, headers=bad), 401)
    assert_error(post(keyed_server, "/v1/completions", body,
                      headers={"Authorization": api_key}), 401)        # no Bearer scheme
    assert httpx.get(keyed_server.url + "/v1/models").status_code == 401
    assert httpx.get(keyed_server.url + "/metrics").status_code == 401
    ok = post(keyed_server, "/v1/completions", body,
              headers={"Authorization": "Bearer " + api_key})
    assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] >= 1
    assert httpx.get(keyed_server.url + "/health").status_code == 200   # probes need no key
    assert httpx.get(keyed_server.url + "/").status_code == 200         # the page asks for it


def test_openai_client_with_wrong_key(keyed_server, api_key):
    import openai
    bad = openai.OpenAI(base_url=keyed_server.url + "/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    good = openai.OpenAI(base_url=keyed_server.url + "/v1", api_key=api_key, max_retries=0)
    assert good.models.list().data[0].id == MODEL


def test_loopback_is_the_default(monkeypatch):
    monkeypatch.delenv("SLM_API_KEY", raising=False)
    cfg = ServeConfig(model="m")
    assert cfg.host == "127.0.0.1" and cfg.api_key is None
    _register()
    import typer.main
    cmd = typer.main.get_command(app).commands["serve"]
    assert next(p for p in cmd.params if p.name == "host").default == "127.0.0.1"
    for host in ("127.0.0.1", "127.3.2.1", "::1", "localhost"):
        assert is_loopback(host)
        check_bind(host, None)
    for host in ("0.0.0.0", "::", "192.168.1.5", "example.org", ""):
        assert not is_loopback(host)


def test_refuses_public_bind_without_key(monkeypatch, tiny_dir):
    monkeypatch.delenv("SLM_API_KEY", raising=False)
    with pytest.raises(SlmError, match="without an API key"):
        check_bind("0.0.0.0", None)
    check_bind("0.0.0.0", "k")                                   # with a key it may
    _register()
    res = CliRunner().invoke(app, ["serve", str(tiny_dir), "--host", "0.0.0.0", "--port", "0"])
    assert isinstance(res.exception, SlmError) and "without an API key" in str(res.exception)
    monkeypatch.setenv("SLM_API_KEY", "from-env")
    assert ServeConfig(model="m").api_key == "from-env"         # the env var counts as a key


# ------------------------------------------------------------------ validation

@pytest.mark.parametrize("patch,param,code", [
    ({"model": "gpt-4"}, "model", "model_not_found"),
    ({"temperature": "hot"}, "temperature", "invalid_type"),
    ({"temperature": 3.0}, "temperature", None),
    ({"max_tokens": "10"}, "max_tokens", "invalid_type"),
    ({"max_tokens": 0}, "max_tokens", None),
    ({"max_tokens": 401}, "max_tokens", "max_tokens_exceeded"),
    ({"n": 2}, "n", None),
    ({"stream": "yes"}, "stream", "invalid_type"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop", None),
    ({"seed": -1}, "seed", None),
    ({"prompt": 42}, "prompt", None),
    ({"prompt": ["a", "b"]}, "prompt", None),
    ({"prompt": [1, 2, 10 ** 9]}, "prompt", None),
    ({"prompt": "word " * 600}, "prompt", "context_length_exceeded"),
    ({"prompt": "word " * 100, "max_tokens": 400}, "max_tokens", "context_length_exceeded"),
    ({"logprobs": 3}, "logprobs", None),
    ({"surprise": 1}, "surprise", None),
])
def test_completion_validation_400(server, patch, param, code):
    body = {"model": MODEL, "prompt": "hello", "max_tokens": 4, **patch}
    assert_error(post(server, "/v1/completions", body), 400, param, code)


@pytest.mark.parametrize("patch,param", [
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages.0.role"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages.0.content"),
    ({"messages": "hello"}, "messages"),
    ({"max_completion_tokens": 10 ** 6}, "max_tokens"),
])
def test_chat_validation_400(server, patch, param):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], **patch}
    assert_error(post(server, "/v1/chat/completions", body), 400, param)


def test_malformed_bodies_do_not_crash(server):
    url = server.url + "/v1/completions"
    deep = b"[" * 30_000 + b"]" * 30_000                # nested past Python's recursion limit
    for raw in (b"{not json", b"[1, 2]", b"\xff\xfe", b"", b"null", b'"str"', deep):
        assert_error(httpx.post(url, content=raw, timeout=30), 400)
    big = {"model": MODEL, "prompt": "x" * (70 * 1024)}
    assert_error(post(server, "/v1/completions", big), 413)
    def chunks():                                  # no Content-Length: counted as it arrives
        for _ in range(80):
            yield b"x" * 1024
    assert_error(httpx.post(url, content=chunks(), timeout=30), 413)
    assert_error(httpx.get(server.url + "/v1/nowhere"), 404)
    assert_error(httpx.get(server.url + "/v1/models/other"), 404, code="model_not_found")
    ok = post(server, "/v1/completions", {"model": MODEL, "prompt": "still up", "max_tokens": 3})
    assert ok.status_code == 200                   # and the process is still serving


def test_token_id_prompt(server):
    r = post(server, "/v1/completions", {"model": MODEL, "prompt": [5, 6, 7], "max_tokens": 3,
                                         "temperature": 0})
    assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] == 3


def test_chat_page_is_self_contained(server):
    r = httpx.get(server.url + "/")
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    assert "default-src 'none'" in r.headers["content-security-policy"]
    html = r.text
    assert 'id="temperature"' in html and 'id="clear"' in html
    for external in ("http://", "https://", "//cdn", "src=\""):
        assert external not in html

"""The server under abuse, on 127.0.0.1 with a tiny model: bursts, hang-ups, clients that
never read, oversized and non-UTF-8 bodies, prompts past the context, shutdown with
requests in flight. Never a 5xx for the client's doing, and /health answers throughout."""
import asyncio
import json
import logging
import socket
import time

import httpx
import pytest

from slmkit.serve import BackgroundServer, ServeConfig

KEY = "robustness-key-0123456789"


@pytest.fixture
def make_server(tiny_dir):
    servers = []

    def make(**kw):
        kw.setdefault("max_concurrency", 1)
        kw.setdefault("max_queue", 1)
        cfg = ServeConfig(model=str(tiny_dir), port=0, engine="pytorch", ctx=512,
                          max_tokens=480, max_body_bytes=64 * 1024, **kw)
        servers.append(BackgroundServer(cfg).start())
        return servers[-1]
    yield make
    for srv in servers:
        srv.stop(timeout=10)


def completion(n: int, stream: bool = True, prompt: str = "def f(x):") -> dict:
    return {"model": "tiny", "prompt": prompt, "max_tokens": n, "temperature": 0,
            "stream": stream}


def wait_idle(srv, seconds: float = 10) -> dict:
    deadline = time.monotonic() + seconds
    while True:
        h = httpx.get(srv.url + "/health", timeout=5).json()
        if (h["active"] == 0 and h["queued"] == 0) or time.monotonic() > deadline:
            return h
        time.sleep(0.05)


def test_burst_over_the_queue_gets_429_with_retry_after(make_server):
    srv = make_server()

    async def burst():
        async with httpx.AsyncClient(timeout=120) as client:
            return await asyncio.gather(*[
                client.post(srv.url + "/v1/completions", json=completion(40, stream=False))
                for _ in range(8)])

    replies = asyncio.run(burst())
    codes = [r.status_code for r in replies]
    assert set(codes) <= {200, 429} and codes.count(429) >= 5, codes   # 1 running + 1 queued
    for r in replies:
        if r.status_code == 429:
            assert int(r.headers["Retry-After"]) >= 1
            assert r.json()["error"]["type"] == "rate_limit_error"
    assert wait_idle(srv)["active"] == 0


def test_disconnect_mid_stream_frees_the_slot(make_server):
    srv = make_server(max_queue=0)
    with httpx.Client(timeout=60) as c:
        with c.stream("POST", srv.url + "/v1/completions", json=completion(480)) as r:
            assert r.status_code == 200
            assert next(r.iter_lines()).startswith("data: ")          # generating
    assert wait_idle(srv, 5)["active"] == 0                           # hung up: slot freed
    r = httpx.post(srv.url + "/v1/completions", json=completion(4, stream=False), timeout=60)
    assert r.status_code == 200


def test_a_client_that_never_reads_holds_one_slot_only(make_server):
    srv = make_server(max_concurrency=2, max_queue=0)
    host, port = srv.url.removeprefix("http://").split(":")
    body = json.dumps(completion(480)).encode()
    sock = socket.create_connection((host, int(port)))
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                 b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    try:                                                      # ... and never reads a byte
        t0 = time.monotonic()
        health = httpx.get(srv.url + "/health", timeout=10)
        assert health.status_code == 200 and time.monotonic() - t0 < 5
        r = httpx.post(srv.url + "/v1/completions", json=completion(8, stream=False),
                       timeout=60)
        assert r.status_code == 200                          # the other slot serves others
    finally:
        sock.close()
    assert wait_idle(srv)["active"] == 0


def test_health_answers_during_load(make_server):
    srv = make_server(max_concurrency=1, max_queue=2)

    async def load_and_probe():
        async with httpx.AsyncClient(timeout=120) as client:
            work = [asyncio.create_task(client.post(srv.url + "/v1/completions",
                                                    json=completion(120, stream=False)))
                    for _ in range(3)]
            await asyncio.sleep(0.2)
            probes = []
            for _ in range(5):
                t0 = time.monotonic()
                h = await client.get(srv.url + "/health")
                probes.append((h.status_code, h.json(), time.monotonic() - t0))
                await asyncio.sleep(0.05)
            return probes, [r.status_code for r in await asyncio.gather(*work)]

    probes, codes = asyncio.run(load_and_probe())
    assert codes == [200, 200, 200]
    assert all(code == 200 for code, _, _ in probes)
    assert any(body["active"] == 1 for _, body, _ in probes), probes
    assert max(dt for _, _, dt in probes) < 5


def test_bodies_over_the_cap_and_not_utf8(make_server):
    srv = make_server()
    url = srv.url + "/v1/completions"
    big = {"model": "tiny", "prompt": "x" * (70 * 1024), "max_tokens": 1}
    assert httpx.post(url, json=big).status_code == 413

    def chunks():                                   # no Content-Length: counted as it comes
        for _ in range(80):
            yield b"x" * 1024
    assert httpx.post(url, content=chunks(), headers={"Content-Type": "application/json"}
                      ).status_code == 413
    for raw in (b"\xff\xfe\x00{", '{"model": "tiny", "prompt": "caf\xe9"}'.encode("latin-1"),
                b'{"model": "tiny", "prompt": "\xed\xa0\x80"}',
                b'{"model": "tiny", "prompt": "\\ud800"}'):
        r = httpx.post(url, content=raw, headers={"Content-Type": "application/json"})
        assert r.status_code == 400, (raw, r.text)
        assert r.json()["error"]["type"] == "invalid_request_error"
    assert httpx.get(srv.url + "/health").status_code == 200


def test_chat_prompt_longer_than_the_context_is_400(make_server):
    srv = make_server()
    r = httpx.post(srv.url + "/v1/chat/completions", timeout=60, json={
        "model": "tiny", "messages": [{"role": "user", "content": "word " * 2000}]})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["code"] == "context_length_exceeded" and err["param"] == "messages"


def test_shutdown_timeout_cancels_what_is_still_running(make_server):
    srv = make_server(shutdown_timeout_s=0.3)
    got, t_stop = [], [None]
    with httpx.Client(timeout=60) as c:
        with c.stream("POST", srv.url + "/v1/completions", json=completion(480)) as r:
            try:
                for line in r.iter_lines():
                    if line.startswith("data: {"):
                        got.append(json.loads(line[6:]))
                    if len(got) == 2 and t_stop[0] is None:
                        t_stop[0] = time.monotonic()
                        srv.server.begin_shutdown()        # as Ctrl-C / SIGTERM does
            except httpx.RemoteProtocolError:              # cut off when the timeout is up
                pass
    srv.thread.join(10)
    assert not srv.thread.is_alive()
    assert len(got) < 480                                   # cut off, not run to the end
    assert time.monotonic() - t_stop[0] < 10


def test_access_log_line_per_request_without_prompt_text(make_server, caplog):
    srv = make_server()
    secret = "SECRET-PROMPT-TEXT-4711"
    with caplog.at_level(logging.INFO, logger="slmkit.access"):
        r = httpx.post(srv.url + "/v1/completions", timeout=60,
                       json=completion(6, stream=False, prompt=secret))
        assert r.status_code == 200
        httpx.get(srv.url + "/health")
        httpx.post(srv.url + "/v1/completions", content=b"\xff")
        deadline = time.monotonic() + 5
        while len(caplog.records) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
    lines = [rec.getMessage() for rec in caplog.records if rec.name == "slmkit.access"]
    assert len(lines) == 3, lines
    usage = r.json()["usage"]
    assert (f'"POST /v1/completions" 200 prompt={usage["prompt_tokens"]} '
            f'completion={usage["completion_tokens"]}') in lines[0]
    assert '"GET /health" 200' in lines[1] and '"POST /v1/completions" 400' in lines[2]
    assert all(secret not in line for line in lines)


def test_key_field_on_the_chat_page_only_when_a_key_is_required(make_server):
    open_srv, keyed = make_server(), make_server(api_key=KEY)
    assert '<label id="key-label" hidden>' in httpx.get(open_srv.url + "/").text
    page = httpx.get(keyed.url + "/").text
    assert '<label id="key-label">' in page and '<label id="key-label" hidden>' not in page
    assert httpx.get(keyed.url + "/v1/models").status_code == 401

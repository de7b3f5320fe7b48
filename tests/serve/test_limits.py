"""Bounded queue (429), a disconnect frees its slot, graceful shutdown (503 for new requests)."""
import asyncio
import json
import threading
import time

import httpx

MODEL = "tiny-llama"


def body(max_tokens, stream=True):
    return {"model": MODEL, "prompt": "The os module provides", "max_tokens": max_tokens,
            "temperature": 0, "stream": stream}


def metric(srv, name) -> float:
    for line in httpx.get(srv.url + "/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise KeyError(name)


def test_burst_beyond_queue_gets_429(make_server):
    srv = make_server(max_concurrency=1, max_queue=2)

    async def one(client):
        r = await client.post(srv.url + "/v1/completions", json=body(30))
        return r.status_code, r.text

    async def burst():
        async with httpx.AsyncClient(timeout=120) as client:
            return await asyncio.gather(*[one(client) for _ in range(7)])

    results = asyncio.run(burst())
    codes = sorted(code for code, _ in results)
    assert codes == [200] * 3 + [429] * 4          # 1 generating + 2 queued; the rest refused
    for code, text in results:
        if code == 200:
            assert text.endswith("data: [DONE]\n\n")
        else:
            err = json.loads(text)["error"]
            assert err["type"] == "rate_limit_error" and err["code"] == "rate_limit_exceeded"
    assert metric(srv, 'slm_requests_total{endpoint="/v1/completions",status="429"}') == 4
    assert metric(srv, "slm_queue_depth") == 0


def test_disconnect_frees_slot_at_once(make_server):
    srv = make_server(max_concurrency=1, max_queue=0)
    with httpx.Client(timeout=60) as c:
        with c.stream("POST", srv.url + "/v1/completions", json=body(400)) as r:
            assert r.status_code == 200
            lines = r.iter_lines()                     # keep it: dropping it hangs up
            assert next(lines).startswith("data: ")    # generation has started
            busy = httpx.post(srv.url + "/v1/completions", json=body(5, stream=False))
            assert busy.status_code == 429                 # the one slot is taken
        t0 = time.monotonic()                          # leaving the block closes the connection
    while httpx.get(srv.url + "/health").json()["active"] and time.monotonic() - t0 < 5:
        time.sleep(0.05)
    assert httpx.get(srv.url + "/health").json()["active"] == 0
    r = httpx.post(srv.url + "/v1/completions", json=body(5, stream=False), timeout=60)
    assert r.status_code == 200                        # the freed slot serves the next client
    assert metric(srv, "slm_cancelled_requests_total") == 1
    # tokens actually generated: the 5 just now plus what ran before the hang-up, far below 400
    assert 5 < metric(srv, "slm_completion_tokens_total") < 5 + 200


def test_graceful_shutdown_finishes_in_flight(make_server):
    srv = make_server(max_concurrency=1, max_queue=2)
    lines, started = [], threading.Event()

    def stream():
        with httpx.stream("POST", srv.url + "/v1/completions", json=body(25), timeout=60) as r:
            for line in r.iter_lines():
                lines.append(line)
                started.set()

    t = threading.Thread(target=stream)
    t.start()
    assert started.wait(30)
    srv.server.begin_shutdown()                        # what SIGTERM / Ctrl-C does
    try:
        refused = httpx.post(srv.url + "/v1/completions", json=body(5, stream=False), timeout=10)
        assert refused.status_code == 503               # a request that still got through
    except httpx.TransportError:
        pass                                            # or the socket is already closed
    t.join(60)
    srv.thread.join(30)
    assert not srv.thread.is_alive()                   # the server stopped...
    events = [ln for ln in lines if ln]
    assert events[-1] == "data: [DONE]"                # ...after the stream ran to its end
    last = json.loads(events[-2][6:])
    assert last["choices"][0]["finish_reason"] == "length"


def test_draining_answers_503(make_server):
    srv = make_server()
    srv.state.draining = True
    r = httpx.post(srv.url + "/v1/completions", json=body(5, stream=False))
    assert r.status_code == 503 and r.json()["error"]["type"] == "server_error"
    health = httpx.get(srv.url + "/health")
    assert health.status_code == 503 and health.json()["status"] == "draining"

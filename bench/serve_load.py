"""Load test: `slm serve` against llama-cpp-python's server and llama.cpp's `llama-server`.

N concurrent streaming clients send completion requests in a loop for a
fixed time against each server in turn: `slm serve` once per --slots value
(its --max-concurrency: the sequences decoded together in one batch),
`python -m llama_cpp.server` (one sequence at a time) and, given its path,
llama.cpp's own C++ `llama-server --parallel N` (continuous batching); the
order rotates between rounds and client counts. Measured per run: time to
first token (p50/p99; a request still waiting for its first token when time
is up counts with its wait so far, which can only flatter the slower server),
tokens received per second in total (text received inside the window,
re-tokenized with the model's own tokenizer, so every server is counted the
same way), requests finished, 429s, errors (anything else that is not a clean
stream), and the server's resident memory (VmHWM, its peak RSS).

Every server gets the same file, threads and context per sequence (--ctx;
llama-server's -c is the total of its --parallel slots), and the same
llama.cpp load setting: where slmkit turns weight repacking off (CPUs with
AMX, see ``slmkit.engines.llama_lib``) both peers get it off too. llama-cpp-python's
server runs with --interrupt_requests False so that every stream it starts
runs to the end, as ours do.

Usage:
    python bench/serve_load.py [--clients 16 64] [--duration 30] [--rounds 1] [--slots 1 8]
        [--llama-server PATH --parallel 4] [--round-offset 0]
Loopback only; at most max(clients) connections, each request capped at
--max-tokens; every server process is stopped at the end.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from slmkit.engines.llama_lib import repack_enabled

PROMPTS = ["The os module in Python provides functions for",      # open-ended, so that
           "A Python dictionary is a data structure that",         # most requests run to
           "Three tips for writing clear code are",                # max_tokens
           "The water cycle begins when"]


@dataclass
class Result:
    ttft: list[float] = field(default_factory=list)      # seconds, one per request started
    texts: list[str] = field(default_factory=list)       # text received inside the window
    finished: int = 0
    rejected: int = 0                                    # HTTP 429
    errors: list[str] = field(default_factory=list)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(kind: str, gguf: Path, clients: int, args) -> tuple[subprocess.Popen, str, str]:
    """Launch one server (``slmkit:SLOTS`` or ``llama_cpp.server``) on a free loopback port.

    Returns (process, base URL, model id).
    """
    port = free_port()
    py = sys.executable
    if kind.startswith("llama-server"):
        parallel = int(kind.split(":")[1])
        cmd = [str(args.llama_server), "-m", str(gguf), "--host", "127.0.0.1",
               "--port", str(port), "-c", str(args.ctx * parallel), "--parallel", str(parallel),
               "-t", str(args.threads), "-tb", str(args.threads), "--alias", "bench",
               "--no-webui"] + ([] if repack_enabled() else ["--no-repack"])
    elif kind.startswith("slmkit"):
        slots = int(kind.split(":")[1])
        cmd = [str(Path(py).parent / "slm"), "serve", str(gguf), "--port", str(port),
               "--ctx", str(args.ctx), "--threads", str(args.threads), "--name", "bench",
               "--max-concurrency", str(slots),
               "--max-queue", str(clients), "--max-tokens", str(args.max_tokens)]
    else:
        # with slmkit's llama.cpp load settings for this machine (see engines.llama_lib)
        cmd = [py, "-c", "import runpy, sys; from slmkit.engines.llama_lib import llama_cpp; "
               "llama_cpp(); sys.argv[0] = 'llama_cpp.server'; "
               "runpy.run_module('llama_cpp.server', run_name='__main__')", "--model", str(gguf), "--host", "127.0.0.1",
               "--port", str(port), "--n_ctx", str(args.ctx), "--n_threads", str(args.threads),
               "--n_threads_batch", str(args.threads), "--model_alias", "bench",
               "--interrupt_requests", "False"]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{kind} server exited: {' '.join(cmd)}")
        try:
            if httpx.get(url + "/v1/models", timeout=2).status_code == 200:
                return proc, url, "bench"
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"{kind} server did not start")


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


async def one_request(client, url, model, prompt, seed, args, res: Result, end: float):
    """One streaming completion; records TTFT and text received before ``end``."""
    body = {"model": model, "prompt": prompt, "max_tokens": args.max_tokens, "stream": True,
            "temperature": 0.7, "top_p": 0.95, "seed": seed}
    t0 = time.perf_counter()
    first, parts = None, []
    try:
        async with client.stream("POST", url + "/v1/completions", json=body) as r:
            if r.status_code == 429:
                res.rejected += 1
                await asyncio.sleep(0.2)
                return
            if r.status_code != 200:
                res.errors.append(f"HTTP {r.status_code}")
                return
            async for line in r.aiter_lines():
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    res.finished += 1
                    break
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    res.errors.append(str(chunk["error"])[:120])
                    break
                text = chunk["choices"][0].get("text") or ""
                if text:
                    if first is None:
                        first = time.perf_counter() - t0
                    parts.append(text)
    except asyncio.CancelledError:              # the window closed mid-request
        pass
    except (httpx.HTTPError, ValueError, KeyError) as exc:
        res.errors.append(f"{type(exc).__name__}: {exc}"[:120])
    finally:
        res.ttft.append(first if first is not None else time.perf_counter() - t0)
        res.texts.append("".join(parts))


async def client_loop(i, url, model, args, res: Result, end: float):
    limits = httpx.Limits(max_connections=1)
    async with httpx.AsyncClient(timeout=httpx.Timeout(None), limits=limits) as client:
        n = 0
        while time.perf_counter() < end:
            await one_request(client, url, model, PROMPTS[(i + n) % len(PROMPTS)],
                              i * 1000 + n, args, res, end)
            n += 1


async def run_load(url, model, clients, args) -> tuple[Result, float]:
    res = Result()
    t0 = time.perf_counter()
    end = t0 + args.duration
    tasks = [asyncio.create_task(client_loop(i, url, model, args, res, end))
             for i in range(clients)]
    await asyncio.sleep(args.duration)
    for t in tasks:                              # close the window: hang up on the rest
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return res, time.perf_counter() - t0


def count_tokens(texts, gguf: Path) -> int:
    from llama_cpp import Llama
    vocab = Llama(model_path=str(gguf), vocab_only=True, verbose=False)
    return sum(len(vocab.tokenize(t.encode(), add_bos=False, special=False)) for t in texts if t)


def pct(xs, q) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))] if xs else float("nan")


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident memory (VmHWM) in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure(kind, gguf, clients, args) -> dict:
    proc, url, model = start_server(kind, gguf, clients, args)
    try:
        asyncio.run(run_load(url, model, 2, argparse.Namespace(**{**vars(args), "duration": 3})))
        res, wall = asyncio.run(run_load(url, model, clients, args))
        rss = peak_rss_mb(proc.pid)
    finally:
        stop_server(proc)
    tokens = count_tokens(res.texts, gguf)
    return {"server": kind, "clients": clients, "requests": len(res.ttft),
            "finished": res.finished, "rejected_429": res.rejected, "errors": len(res.errors),
            "error_samples": res.errors[:3], "ttft_p50_s": pct(res.ttft, 0.5),
            "ttft_p99_s": pct(res.ttft, 0.99), "tokens": tokens, "tok_s": tokens / wall,
            "peak_rss_mb": rss}


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "n/a"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, nargs="+", default=[16, 64])
    ap.add_argument("--duration", type=float, default=30.0, help="seconds of load per run")
    ap.add_argument("--rounds", type=int, default=1, help="A/B repetitions (order alternates)")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--slots", type=int, nargs="+", default=[1, 8],
                    help="slmkit --max-concurrency settings to run (each capped at the clients)")
    ap.add_argument("--llama-server", type=Path,
                    help="llama.cpp's llama-server binary, built from the sources llama-cpp-python "
                         "vendors; adds it as a peer")
    ap.add_argument("--parallel", type=int, default=4, help="llama-server --parallel")
    ap.add_argument("--peer", choices=["on", "off"], default="on",
                    help="run llama-cpp-python's server too")
    ap.add_argument("--round-offset", type=int, default=0,
                    help="number of the first round (rotates the order; to split rounds "
                         "over several invocations)")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from slmkit.models.io import builtin_gguf
    gguf = builtin_gguf("smollm2-135m")
    rows = []
    peers = (["llama_cpp.server"] if args.peer == "on" else []) + (
        [f"llama-server:{args.parallel}"] if args.llama_server else [])
    kinds = [f"slmkit:{n}" for n in args.slots] + peers
    for r in range(args.round_offset, args.round_offset + args.rounds):
        for ci, clients in enumerate(args.clients):
            shift = (r + ci) % len(kinds)                 # rotate who goes first
            order = kinds[shift:] + kinds[:shift]
            runs = {k: measure(k, gguf, clients, args) for k in order}
            rows += [{**row, "round": r} for row in runs.values()]
            for k in kinds:
                row = runs[k]
                print(f"round {r} clients {clients:3d} {k:17s} "
                      f"tok/s {row['tok_s']:7.1f}  TTFT p50 {row['ttft_p50_s']:6.2f}s "
                      f"p99 {row['ttft_p99_s']:6.2f}s  requests {row['requests']:4d} "
                      f"finished {row['finished']:4d}  429 {row['rejected_429']}  "
                      f"errors {row['errors']} {row['error_samples'] or ''}  "
                      f"peak RSS {row['peak_rss_mb']:.0f} MiB", flush=True)
                for p in peers:
                    if k.startswith("slmkit"):
                        print(f"  {k} / {p}: tok/s {_ratio(row['tok_s'], runs[p]['tok_s'])}, "
                              f"p50 TTFT {_ratio(row['ttft_p50_s'], runs[p]['ttft_p50_s'])}, "
                              f"p99 TTFT {_ratio(row['ttft_p99_s'], runs[p]['ttft_p99_s'])}",
                              flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()

"""`slm serve` as a process: prints its URL, serves, and stops gracefully on SIGTERM."""
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx


def test_sigterm_lets_the_stream_finish(tiny_dir):
    slm = str(Path(sys.executable).parent / "slm")
    env = dict(os.environ, HF_HUB_OFFLINE="1", COLUMNS="200")
    env.pop("SLM_API_KEY", None)
    proc = subprocess.Popen([slm, "serve", str(tiny_dir), "--engine", "pytorch", "--port", "0",
                             "--ctx", "512", "--max-concurrency", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        out, url = "", None
        deadline = time.monotonic() + 90
        while url is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line, out                           # the process ended early
            out += line
            m = re.search(r"serving tiny-llama at (http://127\.0\.0\.1:\d+)", out)
            url = m and m.group(1)
        assert url, out
        body = {"model": "tiny-llama", "prompt": "The os module", "max_tokens": 60,
                "temperature": 0, "stream": True}
        lines, started = [], threading.Event()

        def stream():
            with httpx.stream("POST", url + "/v1/completions", json=body, timeout=60) as r:
                for ln in r.iter_lines():
                    if ln:
                        lines.append(ln)
                        started.set()
        t = threading.Thread(target=stream)
        t.start()
        assert started.wait(30)
        proc.send_signal(signal.SIGTERM)
        t.join(60)
        rest, _ = proc.communicate(timeout=60)
        # uvicorn re-raises the signal once it has shut down, so the exit is "killed by SIGTERM"
        assert proc.returncode in (0, -signal.SIGTERM), rest
        assert "Traceback" not in rest
        assert lines[-1] == "data: [DONE]"
        assert json.loads(lines[-2][6:])["choices"][0]["finish_reason"] == "length"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

"""Running the app: in the foreground (``serve``) or in a thread (``BackgroundServer``).

Shutdown is graceful: on SIGINT/SIGTERM (or ``stop()``) the app starts
answering 503 to new requests, uvicorn stops accepting connections, and
requests already in flight run to completion for up to
``cfg.shutdown_timeout_s`` seconds before being cancelled.
"""
from __future__ import annotations

import logging
import socket
import sys
import threading
import time

import uvicorn

from ..errors import SlmError
from .app import create_app
from .config import ServeConfig, check_bind


class DrainingServer(uvicorn.Server):
    """A uvicorn server that marks the app draining as soon as it is asked to stop."""

    def __init__(self, config: uvicorn.Config, state):
        super().__init__(config)
        self.slm_state = state

    def handle_exit(self, sig, frame) -> None:
        self.slm_state.draining = True
        super().handle_exit(sig, frame)

    def begin_shutdown(self) -> None:
        """What a stop signal does, callable from any thread."""
        self.slm_state.draining = True
        self.should_exit = True


def bind(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` (port 0: a free one), or SlmError."""
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
    except OSError as exc:
        raise SlmError(f"cannot listen on {host}:{port} ({exc.strerror or exc})",
                       "pick another --port or --host") from None
    return sock


def _server(cfg: ServeConfig, slots=None) -> DrainingServer:
    app = create_app(cfg, slots)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on",
                            ws="none", timeout_graceful_shutdown=cfg.shutdown_timeout_s,
                            timeout_keep_alive=5, h11_max_incomplete_event_size=64 * 1024)
    return DrainingServer(config, app.state.slm)


def serve(cfg: ServeConfig, on_ready=None) -> None:
    """Serve ``cfg.model`` until interrupted.

    Args:
        cfg: server settings; a non-loopback host needs ``cfg.api_key``.
        on_ready: called with the base URL, the slot count and the context per slot once
            the socket is bound and the model loaded.
    """
    check_bind(cfg.host, cfg.api_key)
    log_access_to_stderr()
    server = _server(cfg)
    sock = bind(cfg.host, cfg.port)
    if on_ready:
        st = server.slm_state
        on_ready(_url(cfg.host, sock.getsockname()[1]), st.scheduler.n_slots, st.ctx)
    server.run(sockets=[sock])


def log_access_to_stderr() -> None:
    """One line per request on stderr (see ``guard``): no prompt text, ever."""
    log = logging.getLogger("slmkit.access")
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%dT%H:%M:%S"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


class BackgroundServer:
    """``serve`` in a daemon thread, for tests and benchmarks; a context manager.

    Args:
        cfg: server settings (``port=0`` picks a free port).
        slots: engines to use instead of opening ``cfg.model``.
    """

    def __init__(self, cfg: ServeConfig, slots=None):
        check_bind(cfg.host, cfg.api_key)
        self.server = _server(cfg, slots)
        self.state = self.server.slm_state
        self.sock = bind(cfg.host, cfg.port)
        self.url = _url(cfg.host, self.sock.getsockname()[1])
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       name="slm-serve", daemon=True)

    def start(self, timeout: float = 30.0) -> "BackgroundServer":
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Graceful stop: refuse new requests, let running ones finish, join the thread."""
        self.server.begin_shutdown()
        self.thread.join(timeout)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

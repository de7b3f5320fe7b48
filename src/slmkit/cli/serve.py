"""slm serve: an OpenAI-compatible server with a chat page."""
from __future__ import annotations

import signal
from typing import Optional

import typer

from ..models.preflight import check_model
from .app import DeviceOpt, app, console
from .validate import config_from_options


@app.command("serve")
def serve_cmd(
    model: str = typer.Argument(..., help="Built-in name, HF model directory or .gguf file."),
    host: str = typer.Option("127.0.0.1", help="Address to bind; other than loopback needs --api-key."),
    port: int = typer.Option(8000, help="TCP port (0: any free port)."),
    api_key: Optional[str] = typer.Option(None, envvar="SLM_API_KEY", show_envvar=True,
                                          help="Key clients must send as 'Authorization: Bearer KEY'."),
    engine: str = typer.Option("auto", help="auto (llama.cpp for .gguf, else pytorch), pytorch, llama.cpp."),
    max_concurrency: Optional[int] = typer.Option(
        None, help="Slots: requests decoded together in one batch. Default: as many as fit a "
                   "quarter of the available memory at --ctx tokens each, at most 16."),
    max_queue: int = typer.Option(16, help="Requests that may wait for a slot; more get HTTP 429."),
    ctx: Optional[int] = typer.Option(
        None, help="Context per slot in tokens (prompt + completion). Default: 2048 (capped at "
                   "the model's training context), halved until one slot's KV cache fits a "
                   "quarter of the available memory."),
    step_tokens: int = typer.Option(256, help="Most tokens one decode step reads; long prompts "
                                              "are read in chunks so they never stall the others."),
    max_tokens: int = typer.Option(1024, help="Most tokens one request may ask for."),
    name: Optional[str] = typer.Option(None, help="Model id clients use (default: from MODEL)."),
    threads: Optional[int] = typer.Option(None, help="CPU threads for llama.cpp (default: all cores)."),
    adapter: Optional[str] = typer.Option(None, "--adapter", help="Adapter directory (`slm finetune` without --merge) applied to MODEL unmerged (PyTorch), or a LoRA .gguf on a .gguf MODEL."),
    device: str = DeviceOpt,
    shutdown_timeout: float = typer.Option(30.0, help="Seconds in-flight requests may finish after Ctrl-C."),
):
    """Serve a model with an OpenAI-compatible API, streaming, auth and a chat page at /.

    Endpoints: /v1/models, /v1/completions, /v1/chat/completions (stream: true for
    server-sent events), /health, /metrics (Prometheus). Binds to 127.0.0.1 unless told
    otherwise, and then only with an API key.

    Example: slm serve runs/mine/05-export/model.gguf --port 8000
    """
    from ..serve import ServeConfig, check_bind, serve
    cfg = config_from_options(ServeConfig, flags={"shutdown_timeout_s": "--shutdown-timeout",
                                                  "n_threads": "--threads"},
                              model=model, host=host, port=port, api_key=api_key, engine=engine,
                              max_concurrency=max_concurrency, max_queue=max_queue, ctx=ctx,
                              step_tokens=step_tokens, max_tokens=max_tokens, name=name,
                              n_threads=threads, shutdown_timeout_s=shutdown_timeout,
                              device=device, adapter=adapter)
    check_bind(cfg.host, cfg.api_key)          # before the slow model load
    check_model(model, engine=None if engine == "auto" else engine)
    console.print(f"loading [bold]{model}[/]...")

    def ready(url: str, slots: int, ctx: int) -> None:
        console.print(f"serving [bold]{cfg.model_id()}[/] at {url}  ({slots} slot(s) of {ctx} "
                      f"tokens; chat page: {url}/, "
                      f"API: {url}/v1{', key required' if cfg.api_key else ''}); Ctrl-C stops")

    signal.signal(signal.SIGTERM, signal.SIG_DFL)     # the server drains on SIGTERM itself
    serve(cfg, on_ready=ready)
    console.print("stopped")

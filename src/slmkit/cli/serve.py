"""slm serve: an OpenAI-compatible server with a chat page."""
from __future__ import annotations

from typing import Optional

import typer

from .app import DeviceOpt, app, console


@app.command("serve")
def serve_cmd(
    model: str = typer.Argument(..., help="Built-in name, HF model directory or .gguf file."),
    host: str = typer.Option("127.0.0.1", help="Address to bind; other than loopback needs --api-key."),
    port: int = typer.Option(8000, help="TCP port (0: any free port)."),
    api_key: Optional[str] = typer.Option(None, envvar="SLM_API_KEY", show_envvar=True,
                                          help="Key clients must send as 'Authorization: Bearer KEY'."),
    engine: str = typer.Option("auto", help="auto (llama.cpp for .gguf, else pytorch), pytorch, llama.cpp."),
    max_concurrency: int = typer.Option(4, help="Sequences generated at once (one llama.cpp instance each)."),
    max_queue: int = typer.Option(16, help="Requests that may wait for a slot; more get HTTP 429."),
    ctx: int = typer.Option(2048, help="Context length in tokens (prompt + completion)."),
    max_tokens: int = typer.Option(1024, help="Most tokens one request may ask for."),
    name: Optional[str] = typer.Option(None, help="Model id clients use (default: from MODEL)."),
    threads: Optional[int] = typer.Option(None, help="CPU threads per llama.cpp instance."),
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
    from pydantic import ValidationError

    from ..errors import SlmError
    from ..serve import ServeConfig, check_bind, serve
    try:
        cfg = ServeConfig(model=model, host=host, port=port, api_key=api_key, engine=engine,
                          max_concurrency=max_concurrency, max_queue=max_queue, ctx=ctx,
                          max_tokens=max_tokens, name=name, n_threads=threads,
                          shutdown_timeout_s=shutdown_timeout, device=device,
                          adapter=adapter)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        raise SlmError(f"--{field.replace('_', '-')}: {err['msg']}", "see `slm serve --help`") from None
    check_bind(cfg.host, cfg.api_key)          # before the slow model load
    console.print(f"loading [bold]{model}[/] ({cfg.max_concurrency} slot(s), context {cfg.ctx})...")

    def ready(url: str) -> None:
        console.print(f"serving [bold]{cfg.model_id()}[/] at {url}  (chat page: {url}/, "
                      f"API: {url}/v1{', key required' if cfg.api_key else ''}); Ctrl-C stops")

    serve(cfg, on_ready=ready)
    console.print("stopped")

"""slm chat: talk to a model in the terminal."""
from __future__ import annotations

import sys

import typer

from ..models.preflight import check_model
from .app import DeviceOpt, app, console
from .sampling import Ctx, EngineOpt, MaxTokens, Optional, Seed, Temperature, TopP

HELP = "/reset clears the conversation, /exit (or Ctrl-D) leaves."


@app.command("chat")
def chat_cmd(
    model: str = typer.Argument(..., help="Built-in name, HF directory or .gguf file."),
    system: Optional[str] = typer.Option(None, "--system", "-s", help="System message."),
    max_tokens: int = MaxTokens, temperature: float = Temperature, top_p: float = TopP,
    seed: Optional[int] = Seed, engine: str = EngineOpt, ctx: int = Ctx,
    device: str = DeviceOpt,
):
    """Chat with a model; replies stream as they are generated (uses the chat template).

    Example: slm chat smollm2-135m --temperature 0.3
    """
    from ..engines import open_engine, stream_text
    check_model(model, engine=None if engine == "auto" else engine)
    eng = open_engine(model, engine, n_ctx=ctx, device=device)
    interactive = sys.stdin.isatty()
    if interactive:
        console.print(f"[dim]{model} on {eng.name}. {HELP}[/]")
    history = [{"role": "system", "content": system}] if system else []
    base = len(history)
    while True:
        try:
            line = input("you> " if interactive else "")
        except EOFError:
            break
        if not line.strip():
            continue
        if line.strip() in ("/exit", "/quit"):
            break
        if line.strip() == "/reset":
            del history[base:]
            console.print("[dim](conversation cleared)[/]")
            continue
        history.append({"role": "user", "content": line})
        prompt = eng.chat_prompt(history)
        if len(eng.tokenize(prompt)) + max_tokens > eng.context_length:
            del history[base:-1]                     # keep the newest message only
            prompt = eng.chat_prompt(history)
            console.print("[dim](older turns dropped to fit the context)[/]")
        sys.stdout.write("model> " if interactive else "")
        reply = []
        for piece in stream_text(eng, prompt, max_tokens=max_tokens, temperature=temperature,
                                 top_p=top_p, seed=seed):
            reply.append(piece)
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        history.append({"role": "assistant", "content": "".join(reply).strip()})

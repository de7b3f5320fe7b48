"""slm generate: complete a prompt, streaming tokens."""
from __future__ import annotations

import sys

import typer

from ..engines import GenStats, open_engine, stream_text
from ..errors import SlmError
from ..models.preflight import check_model
from .app import DeviceOpt, app, err_console, print_json
from .sampling import (AdapterOpt, Ctx, EngineOpt, List, MaxTokens, Optional, Seed, Stop,
                       Temperature, TopP, cut_note)


@app.command("generate")
def generate_cmd(
    model: str = typer.Argument(..., help="Built-in name, HF directory or .gguf file."),
    prompt: str = typer.Argument(..., help="The text to continue ('-' reads standard input)."),
    chat: bool = typer.Option(False, "--chat", help="Wrap the prompt in the model's chat template as a user message."),
    max_tokens: int = MaxTokens, temperature: float = Temperature, top_p: float = TopP,
    seed: Optional[int] = Seed, stop: Optional[List[str]] = Stop, engine: str = EngineOpt,
    ctx: int = Ctx,
    adapter: Optional[str] = AdapterOpt,
    device: str = DeviceOpt,
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object (text, usage, timings) at the end."),
):
    """Continue a prompt and stream the tokens as they are generated.

    Built-in names and .gguf files run on llama.cpp unless --engine pytorch (or
    --adapter) says otherwise. A prompt that fills --ctx is refused; a completion
    that ends on --max-tokens or the context says so on standard error.

    Example: slm generate smollm2-135m "def fibonacci(n):" --temperature 0 --max-tokens 64
    """
    text = sys.stdin.read() if prompt == "-" else prompt
    if not text.strip():
        raise SlmError("PROMPT is empty" + (" (nothing on standard input)" if prompt == "-"
                                            else ""), "give some text to continue")
    check_model(model, engine=None if engine == "auto" else engine)
    eng = open_engine(model, engine, n_ctx=ctx, device=device, adapter=adapter,
                      builtin_engine="llama.cpp")
    if chat:
        text = eng.chat_prompt([{"role": "user", "content": text}])
    stats = GenStats()
    pieces = []
    for piece in stream_text(eng, text, max_tokens=max_tokens, temperature=temperature,
                             top_p=top_p, seed=seed, stop=stop or (), stats=stats):
        pieces.append(piece)
        if not json_out:
            sys.stdout.write(piece)
            sys.stdout.flush()
    if json_out:
        decode = (stats.completion_tokens - 1) / stats.decode_s if stats.decode_s else None
        print_json({"model": model, "engine": eng.name, "text": "".join(pieces),
                    "finish_reason": stats.finish_reason,
                    "usage": {"prompt_tokens": stats.prompt_tokens,
                              "completion_tokens": stats.completion_tokens},
                    "ttft_s": stats.ttft_s, "decode_tok_s": decode})
        return
    sys.stdout.write("\n")
    note = cut_note(stats, max_tokens, stats.prompt_tokens, eng.context_length)
    if note:
        err_console.print(f"[dim]{note}[/]", highlight=False)

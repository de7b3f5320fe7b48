"""slm chat: talk to a model in the terminal."""
from __future__ import annotations

import sys

import typer

from ..engines import GenStats, open_engine, stream_text
from ..engines.conversation import Conversation
from ..errors import SlmError
from ..models.preflight import check_model
from .app import DeviceOpt, app, console
from .sampling import (AdapterOpt, Ctx, EngineOpt, MaxTokens, Optional, Seed, Temperature,
                       TopP, cut_note)

HELP = """commands:
  /help          this list
  /reset         forget the conversation (the system prompt stays)
  /system TEXT   set the system prompt; /system alone removes it
  /save FILE     append the conversation to FILE as one JSONL record {"messages": [...]}
  /exit          leave (Ctrl-D too); Ctrl-C stops a reply and keeps the conversation"""
COMMANDS = ("/help", "/reset", "/system", "/save", "/exit", "/quit")


@app.command("chat")
def chat_cmd(
    model: str = typer.Argument(..., help="Built-in name, HF directory or .gguf file."),
    system: Optional[str] = typer.Option(None, "--system", "-s", help="System message."),
    max_tokens: int = MaxTokens, temperature: float = Temperature, top_p: float = TopP,
    seed: Optional[int] = Seed, engine: str = EngineOpt, ctx: int = Ctx,
    adapter: Optional[str] = AdapterOpt,
    device: str = DeviceOpt,
):
    """Chat with a model; replies stream as they are generated (uses the chat template).

    When the conversation outgrows the context, the oldest turns are dropped (never
    the system prompt). Type /help for the commands. Built-in names and .gguf files
    run on llama.cpp unless --engine pytorch (or --adapter) says otherwise.

    Example: slm chat smollm2-135m --temperature 0.3
    """
    check_model(model, engine=None if engine == "auto" else engine)
    eng = open_engine(model, engine, n_ctx=ctx, device=device, adapter=adapter,
                      builtin_engine="llama.cpp")
    interactive = sys.stdin.isatty()
    if interactive:
        console.print(f"[dim]{model} on {eng.name}, context {eng.context_length} tokens. "
                      "/help lists the commands, /exit (or Ctrl-D) leaves.[/]")
    conv = Conversation(eng, system=system, max_tokens=max_tokens)
    sampling = dict(temperature=temperature, top_p=top_p, seed=seed)
    while True:
        try:
            line = input("you> " if interactive else "")
        except EOFError:
            break
        except KeyboardInterrupt:                      # at the prompt: say how to leave
            console.print("\n[dim](/exit or Ctrl-D leaves)[/]")
            continue
        text = line.strip()
        if not text:
            continue
        if text.split()[0] in COMMANDS:
            if not _command(conv, text):
                break
            continue
        _turn(eng, conv, line, interactive, sampling)


def _command(conv, text: str) -> bool:
    """Run a /command; False means leave."""
    word, _, arg = text.partition(" ")
    arg = arg.strip()
    if word in ("/exit", "/quit"):
        return False
    if word == "/help":
        console.print(HELP, highlight=False, markup=False)
    elif word == "/reset":
        conv.reset()
        console.print("[dim](conversation cleared)[/]")
    elif word == "/system":
        conv.system = arg or None
        console.print(f"[dim](system prompt {'set' if arg else 'removed'})[/]")
    elif word == "/save":
        if not arg:
            console.print("[red]/save needs a file name[/], e.g. /save chat.jsonl")
        else:
            path = conv.save(arg)
            console.print(f"[dim](saved {len(conv.history())} messages to {path})[/]",
                          highlight=False)
    return True


def _turn(eng, conv, line: str, interactive: bool, sampling: dict) -> None:
    """One question and its streamed reply; Ctrl-C stops the reply, not the chat."""
    try:
        ids, dropped = conv.ask(line)
    except SlmError as exc:
        console.print(f"[bold red]error:[/] {exc.one_line()}", highlight=False)
        return
    if dropped and conv.dropped == dropped:          # the first time only
        console.print(f"[dim](older turns dropped to fit the {eng.context_length}-token "
                      "context; the system prompt stays. Raise --ctx to keep more.)[/]",
                      highlight=False)
    sys.stdout.write("model> " if interactive else "")
    stats, pieces = GenStats(), []
    gen = stream_text(eng, ids, max_tokens=conv.max_tokens, stats=stats, **sampling)
    try:
        for piece in gen:
            pieces.append(piece)
            sys.stdout.write(piece)
            sys.stdout.flush()
    except KeyboardInterrupt:
        gen.close()
        stats.finish_reason = "interrupted"
    conv.answer("".join(pieces).strip())
    sys.stdout.write("\n")
    sys.stdout.flush()
    note = ("(stopped)" if stats.finish_reason == "interrupted"
            else cut_note(stats, conv.max_tokens, len(ids), eng.context_length))
    if note:
        console.print(f"[dim]{note}[/]", highlight=False)
